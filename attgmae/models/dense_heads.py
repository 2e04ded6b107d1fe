"""Dense-prediction heads on ViT patch-token maps, as MultiMAE's output adapters define them.

Both take a list of feature maps ``[B, D, h, w]`` (h = H / patch, w = W / patch; from
``dense_model.vit_feature_maps``, one per index of ``head.block_indices``) and the output size
(H, W), and return per-pixel outputs ``[B, C, H, W]``.

- ``ConvNeXtHead`` (MultiMAE ``ConvNeXtAdapter``, its semantic-segmentation head): the last
  block's tokens, each projected by a linear layer to ``hidden_dim`` (6144) and unfolded into a
  4 x 4 patch of ``hidden_dim / 16`` (384) channels, so the map is at 1/4 resolution; ``depth``
  (4) ConvNeXt blocks; a 1x1 conv to the classes; bilinear upsampling to (H, W).
- ``DPTHead`` (MultiMAE ``DPTOutputAdapter``, regression head, after DPT): tokens of four
  blocks (``[2, 5, 8, 11]`` on ViT-B) reassembled at 1/4, 1/8, 1/16 and 1/32 of the input with
  ``layer_dims`` (96, 192, 384, 768) channels, projected to ``feature_dim`` (256), fused from the
  coarsest up by residual conv units with 2x upsampling each, then conv 3x3 -> upsample to
  (H, W) -> conv 3x3 to 32 -> ReLU -> conv 1x1 to the output channels.

One deliberate difference: MultiMAE's coarsest fusion block also builds a residual unit for a
skip input it never receives (1.18 M parameters that get no gradient); ``DPTHead`` leaves it
out, so DDP needs no ``find_unused_parameters``. Everything else (layers, sizes, initialization)
is MultiMAE's; the parameter counts are derived in tests/test_dense_heads.py.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from timm.models.convnext import ConvNeXtBlock
from torch import nn


def _multimae_init(module: nn.Module) -> None:
    """The init a MultiMAE fine-tuning run starts its adapter from: the whole model's
    ``_init_weights`` runs after the adapters are built (and the checkpoint's adapters are
    dropped), so linear layers get xavier-uniform weights with zero bias and layer norms weight 1
    bias 0; convolutions keep PyTorch's default."""
    if isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


class ConvNeXtHead(nn.Module):
    """Per-pixel logits from the last block's tokens (MultiMAE's ConvNeXt adapter).

    ``embed_dim``: encoder width D; ``num_classes``: output channels; ``hidden_dim`` (6144),
    ``preds_per_patch`` (16, a square) and ``depth`` (4) as MultiMAE's semseg configs.
    """

    def __init__(
        self,
        embed_dim: int,
        num_classes: int,
        hidden_dim: int = 6144,
        preds_per_patch: int = 16,
        depth: int = 4,
        interpolate_mode: str = "bilinear",
    ):
        super().__init__()
        side = math.isqrt(preds_per_patch)
        if side * side != preds_per_patch or hidden_dim % preds_per_patch:
            raise ValueError(
                f"preds_per_patch ({preds_per_patch}) must be a square dividing hidden_dim "
                f"({hidden_dim})"
            )
        self.block_indices = (-1,)  # the last block only
        self.side = side  # each token becomes a side x side patch of the map
        self.channels = hidden_dim // preds_per_patch
        self.interpolate_mode = interpolate_mode
        self.proj = nn.Linear(embed_dim, hidden_dim)
        # timm's block with no layer scale is MultiMAE's (dwconv 7x7, LN eps 1e-6, MLP x4, GELU)
        self.blocks = nn.Sequential(
            *[ConvNeXtBlock(self.channels, ls_init_value=None) for _ in range(depth)]
        )
        self.classifier = nn.Conv2d(self.channels, num_classes, kernel_size=1)
        self.apply(_multimae_init)

    def forward(self, feature_maps: list[torch.Tensor], out_size) -> torch.Tensor:
        """feature_maps [one map [B, D, h, w]], out_size (H, W) -> logits [B, C, H, W]."""
        (tokens,) = feature_maps
        batch, _, grid_h, grid_w = tokens.shape
        x = self.proj(tokens.permute(0, 2, 3, 1))  # [B, h, w, side*side*c]
        # MultiMAE's unfolding: the projected vector is (row, column, channel) of the patch.
        x = x.reshape(batch, grid_h, grid_w, self.side, self.side, self.channels)
        x = x.permute(0, 5, 1, 3, 2, 4).reshape(
            batch, self.channels, grid_h * self.side, grid_w * self.side
        )  # [B, c, h*side, w*side]
        x = self.classifier(self.blocks(x))  # [B, C, h*side, w*side]
        return F.interpolate(x, size=tuple(out_size), mode=self.interpolate_mode)


class ResidualConvUnit(nn.Module):
    """x + conv3x3(relu(conv3x3(relu(x)))) (DPT's residual unit, no batch norm)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, kernel_size=3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # not in place: x is also the residual
        return x + self.conv2(F.relu(self.conv1(F.relu(x))))


class FusionBlock(nn.Module):
    """DPT fusion: (x + unit(skip)) -> unit -> bilinear upsampling -> 1x1 conv."""

    def __init__(self, channels: int, has_skip: bool):
        super().__init__()
        self.skip_unit = ResidualConvUnit(channels) if has_skip else None
        self.unit = ResidualConvUnit(channels)
        self.out_conv = nn.Conv2d(channels, channels, kernel_size=1)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None, size) -> torch.Tensor:
        """x [B, F, h, w] (+ skip, same shape) -> [B, F, *size]."""
        if skip is not None:
            x = x + self.skip_unit(skip)
        x = F.interpolate(self.unit(x), size=tuple(size), mode="bilinear", align_corners=True)
        return self.out_conv(x)


def _reassemble(embed_dim: int, channels: int, scale: str) -> nn.Sequential:
    """1x1 projection of the tokens to ``channels``, then to the stage's resolution: x4 / x2 by
    a transposed conv, x1, or /2 by a strided 3x3 conv."""
    layers = [nn.Conv2d(embed_dim, channels, kernel_size=1)]
    if scale == "x4":
        layers.append(nn.ConvTranspose2d(channels, channels, kernel_size=4, stride=4))
    elif scale == "x2":
        layers.append(nn.ConvTranspose2d(channels, channels, kernel_size=2, stride=2))
    elif scale == "/2":
        layers.append(nn.Conv2d(channels, channels, kernel_size=3, stride=2, padding=1))
    return nn.Sequential(*layers)


def dpt_block_indices(depth: int) -> tuple[int, int, int, int]:
    """The four encoder blocks DPT reads: the ends of each quarter of the encoder, (2, 5, 8, 11)
    for 12 blocks (MultiMAE's hooks for ViT-B), (5, 11, 17, 23) for 24 (DPT-Large's)."""
    if depth % 4:
        raise ValueError(f"encoder depth {depth} is not a multiple of 4; give block_indices")
    quarter = depth // 4
    return tuple(quarter * (i + 1) - 1 for i in range(4))


class DPTHead(nn.Module):
    """Dense regression from four encoder depths (MultiMAE's DPT adapter, regression head).

    ``embed_dim``: encoder width D; ``num_channels``: output channels (1 for every Taskonomy
    task used here); ``block_indices``: the four blocks read (MultiMAE: 2, 5, 8, 11 on ViT-B);
    ``layer_dims`` and ``feature_dim`` as MultiMAE's defaults.
    """

    def __init__(
        self,
        embed_dim: int,
        num_channels: int = 1,
        block_indices=(2, 5, 8, 11),
        layer_dims=(96, 192, 384, 768),
        feature_dim: int = 256,
    ):
        super().__init__()
        if len(block_indices) != 4 or len(layer_dims) != 4:
            raise ValueError("DPT reads exactly four blocks, with four layer_dims")
        self.block_indices = tuple(int(i) for i in block_indices)
        scales = ("x4", "x2", "x1", "/2")  # stages at 1/4, 1/8, 1/16, 1/32 of a /16 input
        self.reassemble = nn.ModuleList(
            _reassemble(embed_dim, dim, scale) for dim, scale in zip(layer_dims, scales)
        )
        self.project = nn.ModuleList(
            nn.Conv2d(dim, feature_dim, kernel_size=3, padding=1, bias=False) for dim in layer_dims
        )
        # fusion[3] starts from the coarsest stage and has no skip input
        self.fusion = nn.ModuleList(FusionBlock(feature_dim, has_skip=i < 3) for i in range(4))
        self.conv_in = nn.Conv2d(feature_dim, feature_dim // 2, kernel_size=3, padding=1)
        self.conv_mid = nn.Conv2d(feature_dim // 2, 32, kernel_size=3, padding=1)
        self.conv_out = nn.Conv2d(32, num_channels, kernel_size=1)

    def forward(self, feature_maps: list[torch.Tensor], out_size) -> torch.Tensor:
        """feature_maps: four [B, D, h, w] (of block_indices, in that order), out_size (H, W)
        -> [B, num_channels, H, W]."""
        stages = [
            project(reassemble(tokens))
            for tokens, reassemble, project in zip(feature_maps, self.reassemble, self.project)
        ]  # [B, F, 4h, 4w], [B, F, 2h, 2w], [B, F, h, w], [B, F, h/2, w/2]
        x = self.fusion[3](stages[3], None, stages[2].shape[-2:])
        x = self.fusion[2](x, stages[2], stages[1].shape[-2:])
        x = self.fusion[1](x, stages[1], stages[0].shape[-2:])
        half = (stages[0].shape[-2] * 2, stages[0].shape[-1] * 2)
        x = self.fusion[0](x, stages[0], half)  # [B, F, 8h, 8w]: 1/2 of a /16 input
        x = F.interpolate(
            self.conv_in(x), size=tuple(out_size), mode="bilinear", align_corners=True
        )
        return self.conv_out(F.relu(self.conv_mid(x)))
