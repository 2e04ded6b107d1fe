"""What a loaded encoder outputs for the frozen-feature evaluations (k-NN, linear probing):
all its tokens, and the pooled image feature.

Works on timm's VisionTransformer, timm's Beit and our MaskedAutoencoderViT alike (they share
patch_embed, cls_token, pos_embed, blocks and norm; a Beit runs its own ``forward_features``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.models.beit import Beit
from torch import nn

POOLS = ("cls", "avg")


def encode_tokens(model: nn.Module, imgs: torch.Tensor, final_norm: bool = True) -> torch.Tensor:
    """All tokens (after the final norm unless ``final_norm`` is False), with no masking:
    imgs [B, 3, H, W] -> [B, 1 + L, D].

    Uses only the attributes that timm's VisionTransformer and our MaskedAutoencoderViT share
    (patch_embed, cls_token, pos_embed, blocks, norm), so it runs the encoder of either; a Beit
    (relative positions inside its blocks) runs its own ``forward_features``.
    """
    norm = model.norm if final_norm else nn.Identity()
    if isinstance(model, Beit):
        saved, model.norm = model.norm, norm
        try:
            return model.forward_features(imgs)
        finally:
            model.norm = saved
    x = model.patch_embed(imgs)  # [B, L, D]
    x = x + model.pos_embed[:, 1:, :]
    cls = (model.cls_token + model.pos_embed[:, :1, :]).expand(x.shape[0], -1, -1)
    x = torch.cat([cls, x], dim=1)  # [B, 1 + L, D]
    norm_pre = getattr(model, "norm_pre", None)
    if norm_pre is not None:
        x = norm_pre(x)
    for block in model.blocks:
        x = block(x)
    return norm(x)


def features(model: nn.Module, imgs: torch.Tensor, pool: str = "cls") -> torch.Tensor:
    """Image features [B, D]: ``cls`` = CLS token after the final norm (the MAE linear-probe
    feature, DINO's k-NN feature); ``avg`` = MAE's linear probe with ``--global_pool``: the mean
    of the patch tokens before the final norm through a LayerNorm at its initial weights (MAE's
    new ``fc_norm``, frozen with the encoder there: no affine part, eps 1e-6).
    """
    if pool == "cls":
        return encode_tokens(model, imgs)[:, 0]
    if pool == "avg":
        mean = encode_tokens(model, imgs, final_norm=False)[:, 1:].mean(dim=1)
        return F.layer_norm(mean, mean.shape[-1:], eps=1e-6)
    raise ValueError(f"pool must be one of {POOLS}, got {pool!r}")
