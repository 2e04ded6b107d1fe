"""A ViT encoder with a dense head: patch-token maps of chosen blocks in, per-pixel outputs out.

The encoder is a timm ``VisionTransformer`` as ``attgmae.models.encoder.load_vit`` builds it
(``load_vit(ckpt, img_size=512, drop_path_rate=0.1)`` for ADE20k: the position embedding is
resampled to the input size there, once). As MultiMAE's fine-tuning model (``MultiViT``, which
has no final norm), the heads read the blocks' raw outputs, without the final LayerNorm; the
CLS token takes part in attention but not in the maps.
"""

from __future__ import annotations

import re

import torch
from torch import nn


def check_input_size(encoder: nn.Module, images: torch.Tensor) -> None:
    """ValueError unless ``images`` [B, 3, H, W] fit the encoder's input size (a ViT built
    for one size, as ``load_vit(img_size=...)`` builds it)."""
    expected = tuple(encoder.patch_embed.img_size)
    got = tuple(images.shape[-2:])
    if getattr(encoder.patch_embed, "strict_img_size", True) and got != expected:
        raise ValueError(
            f"images are {got[0]}x{got[1]} but the encoder was built for "
            f"{expected[0]}x{expected[1]}: load it with load_vit(..., img_size={got[0]})"
        )


def vit_feature_maps(
    encoder: nn.Module, images: torch.Tensor, block_indices, norm: bool = False
) -> list[torch.Tensor]:
    """Patch tokens after each block of ``block_indices`` (0-based, negative from the end), as
    maps: images [B, 3, H, W] -> list of [B, D, H/p, W/p], in the order asked.

    ``norm``: pass each through the final LayerNorm first (MultiMAE does not). Runs timm's
    ``forward_intermediates``, stopping after the deepest block asked for.
    """
    check_input_size(encoder, images)
    depth = len(encoder.blocks)
    if any(not -depth <= i < depth for i in block_indices):
        raise ValueError(f"block_indices {list(block_indices)} outside an encoder of {depth}")
    wanted = [i % depth for i in block_indices]  # non-negative
    taken = sorted(set(wanted))  # timm returns the blocks in encoder order
    maps = encoder.forward_intermediates(
        images, indices=taken, norm=norm, stop_early=True, intermediates_only=True
    )
    by_block = dict(zip(taken, maps))
    return [by_block[i] for i in wanted]


class DenseModel(nn.Module):
    """``encoder`` (timm ViT) + ``head`` (``ConvNeXtHead`` / ``DPTHead`` or any module with
    ``block_indices`` and ``forward(feature_maps, out_size)``): images [B, 3, H, W] ->
    per-pixel outputs [B, C, H, W].

    Parts of the encoder that the head never reads are removed (blocks after the deepest one
    read, the final norm unless ``norm_features``, the classifier), so every parameter gets a
    gradient and DDP needs no ``find_unused_parameters``. The position embedding is frozen, as
    MultiMAE fine-tunes (its ``learnable_pos_emb`` is off in every dense config). This changes
    ``encoder`` in place.
    """

    def __init__(self, encoder: nn.Module, head: nn.Module, norm_features: bool = False):
        super().__init__()
        depth = len(encoder.blocks)
        self.block_indices = tuple(i % depth for i in head.block_indices)
        encoder.prune_intermediate_layers(
            list(self.block_indices), prune_norm=not norm_features, prune_head=True
        )
        if getattr(encoder, "pos_embed", None) is not None:
            encoder.pos_embed.requires_grad_(False)
        self.encoder = encoder
        self.head = head
        self.norm_features = norm_features
        self.depth = depth

    @property
    def num_layers(self) -> int:
        """Blocks of the pretrained encoder, pruned ones included: layer-wise lr decay counts
        them all, as MultiMAE (which keeps every block) does."""
        return self.depth

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        maps = vit_feature_maps(self.encoder, images, self.block_indices, self.norm_features)
        return self.head(maps, images.shape[-2:])

    def layer_id(self, param_name: str) -> int:
        """Layer of a parameter for layer-wise lr decay, as MultiMAE (after BEiT) numbers them:
        0 for the patch embedding, position embedding and CLS token; i + 1 for encoder block i;
        ``num_layers + 1`` for the rest (head, final norm). A group's lr scale is then
        ``layer_decay ** (num_layers + 1 - layer_id)``."""
        name = param_name.removeprefix("module.")
        if name.startswith(("encoder.cls_token", "encoder.pos_embed", "encoder.patch_embed")):
            return 0
        match = re.match(r"encoder\.blocks\.(\d+)\.", name)
        if match:
            return int(match.group(1)) + 1
        return self.num_layers + 1
