"""The frozen ViT encoder that evaluation runs, built from any of the accepted checkpoints.

Accepted files (the format is recognised from the keys, not the file name):
- ours (``attg-train``'s ``checkpoint-*.pth``): ``{"model": full MAE state dict with decoder_*,
  "args": Namespace or dict with .model}``; official MAE full checkpoints look the same;
- official MAE pretraining checkpoints (``mae_pretrain_vit_large.pth``):
  ``{"model": encoder only}``;
- timm ViT weights: a bare state dict in ``.pth`` / ``.bin`` / ``.safetensors``
  (``head.*`` dropped).
The MAE encoder and timm's VisionTransformer share key names, so every format loads into a timm
``VisionTransformer(num_classes=0)``. Its architecture is read off the state dict (width, depth,
patch size, image size, MLP ratio, qkv bias); the number of heads, which a state dict does not
show, comes from ``--model``, the checkpoint's ``args.model``, or the standard ViT table.
"""

from __future__ import annotations

import argparse
import math
import re
from dataclasses import asdict, dataclass
from functools import partial

import torch
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from attgmae.core.files import file_sha256
from attgmae.core.torchfile import CheckpointError, load_torch_file, strip_prefixes, tensors_only

# Heads of the standard ViT sizes (64-d heads, but ViT-H/g: 16 heads).
HEADS_BY_SIZE = {"tiny": 3, "small": 6, "base": 12, "large": 16, "huge": 16, "giant": 16}
HEADS_BY_WIDTH = {192: 3, 384: 6, 768: 12, 1024: 16, 1280: 16, 1408: 16}
POOLS = ("cls", "avg")
# Keys of MAE parts that the frozen encoder does not use.
_DROPPED_PREFIXES = ("decoder_", "mask_token", "head.", "fc_norm.")


@dataclass(frozen=True)
class EncoderSpec:
    """What is needed to build the ViT encoder."""

    img_size: int
    patch_size: int
    embed_dim: int
    depth: int
    num_heads: int
    mlp_ratio: float
    qkv_bias: bool


@dataclass
class EncoderInfo:
    """Where an encoder came from: recorded in every result."""

    checkpoint: str
    sha256: str
    source_format: str  # "attgmae-mae" (full MAE) | "mae-pretrain" (encoder only) | "timm"
    model_name: str | None
    spec: EncoderSpec

    def to_dict(self) -> dict:
        out = asdict(self)
        out["spec"] = asdict(self.spec)
        return out


def read_checkpoint(path, trusted: bool = False) -> tuple[dict, str, str | None]:
    """Read ``path`` -> (state dict with the encoder's keys, source format, model name or None)."""
    obj = load_torch_file(path, trusted=trusted)
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a dict of weights, found {type(obj).__name__}")

    model_name = None
    args = obj.get("args")
    if isinstance(args, argparse.Namespace):
        model_name = getattr(args, "model", None)
    elif isinstance(args, dict):
        model_name = args.get("model")

    for wrapper in ("model", "state_dict", "teacher"):
        if isinstance(obj.get(wrapper), dict):
            state, wrapped = obj[wrapper], True
            break
    else:
        state, wrapped = obj, False
    state = strip_prefixes(tensors_only(state))
    if "cls_token" not in state or "patch_embed.proj.weight" not in state:
        raise CheckpointError(
            f"{path}: no ViT encoder weights found (need cls_token, patch_embed.proj.weight, "
            f"blocks.*; found keys like {sorted(state)[:5]})"
        )
    if any(k.startswith("decoder_") for k in state):
        source = "attgmae-mae"
    elif wrapped:
        source = "mae-pretrain"
    else:
        source = "timm"
    return state, source, model_name


def heads_for(model_name: str | None, embed_dim: int) -> int:
    """Number of attention heads: from the model name's size word, else the width table."""
    if model_name:
        match = re.search(r"vit_(tiny|small|base|large|huge|giant)", model_name)
        if match:
            return HEADS_BY_SIZE[match.group(1)]
    if embed_dim in HEADS_BY_WIDTH:
        return HEADS_BY_WIDTH[embed_dim]
    if embed_dim % 64:
        raise CheckpointError(f"cannot infer heads for width {embed_dim}; pass --num_heads")
    return embed_dim // 64


def infer_spec(
    state: dict, model_name: str | None = None, num_heads: int | None = None
) -> EncoderSpec:
    """Architecture of the encoder whose weights are ``state``."""
    proj = state["patch_embed.proj.weight"]  # [D, 3, p, p]
    embed_dim, patch = int(proj.shape[0]), int(proj.shape[-1])
    depth = 1 + max(
        (int(m.group(1)) for k in state if (m := re.match(r"blocks\.(\d+)\.", k))), default=-1
    )
    if depth == 0:
        raise CheckpointError("no blocks.N.* keys: not a ViT encoder")
    num_tokens = int(state["pos_embed"].shape[1]) - 1  # minus the CLS position
    grid = math.isqrt(num_tokens)
    if grid * grid != num_tokens:
        raise CheckpointError(f"pos_embed has {num_tokens} patch positions, not a square grid")
    mlp_hidden = int(state["blocks.0.mlp.fc1.weight"].shape[0])
    return EncoderSpec(
        img_size=grid * patch,
        patch_size=patch,
        embed_dim=embed_dim,
        depth=depth,
        num_heads=int(num_heads) if num_heads else heads_for(model_name, embed_dim),
        mlp_ratio=mlp_hidden / embed_dim,
        qkv_bias="blocks.0.attn.qkv.bias" in state,
    )


def build_encoder(spec: EncoderSpec, img_size: int | None = None, **timm_kwargs) -> nn.Module:
    """A timm VisionTransformer of ``spec``; by default without head (CLS pooling, final norm
    kept). ``timm_kwargs`` (num_classes, global_pool, drop_path_rate, ...) go to timm."""
    kwargs = {"num_classes": 0, "global_pool": "token", **timm_kwargs}
    return VisionTransformer(
        img_size=img_size or spec.img_size,
        patch_size=spec.patch_size,
        embed_dim=spec.embed_dim,
        depth=spec.depth,
        num_heads=spec.num_heads,
        mlp_ratio=spec.mlp_ratio,
        qkv_bias=spec.qkv_bias,
        norm_layer=partial(nn.LayerNorm, eps=1e-6),
        **kwargs,
    )


def resize_pos_embed(pos_embed: torch.Tensor, grid: int) -> torch.Tensor:
    """[1, 1 + g*g, D] -> [1, 1 + grid*grid, D], bicubic on the patch positions (as MAE)."""
    old = math.isqrt(pos_embed.shape[1] - 1)
    if old == grid:
        return pos_embed
    cls_pos, patch_pos = pos_embed[:, :1], pos_embed[:, 1:]
    dim = pos_embed.shape[-1]
    patch_pos = patch_pos.reshape(1, old, old, dim).permute(0, 3, 1, 2).float()
    patch_pos = F.interpolate(patch_pos, size=(grid, grid), mode="bicubic", align_corners=False)
    patch_pos = patch_pos.permute(0, 2, 3, 1).reshape(1, grid * grid, dim)
    return torch.cat([cls_pos, patch_pos.to(pos_embed.dtype)], dim=1)


def load_vit(
    path,
    model_name: str | None = None,
    num_heads: int | None = None,
    img_size: int = 224,
    sha256: str | None = None,
    trusted: bool = False,
    **timm_kwargs,
):
    """A timm VisionTransformer shaped after the encoder in ``path``, its weights loaded
    -> (model, EncoderInfo); trainable, in train mode.

    ``model_name`` (``--model``) overrides the checkpoint's ``args.model``; it may be an MAE
    factory name (``mae_vit_large_patch16``) or a timm/ViT one (``vit_large_patch16``).
    ``trusted``: the file may be unpickled in full (--trust_checkpoint). ``timm_kwargs`` shape
    what is new: ``num_classes`` > 0 adds a head (trunc-normal std 2e-5, as MAE's fine-tuning);
    ``global_pool="avg"`` averages the patch tokens under a new ``fc_norm`` (MAE's --global_pool;
    timm then has no final norm, so the pretrained one is not used); ``drop_path_rate``.
    """
    state, source, ckpt_model = read_checkpoint(path, trusted)
    name = model_name or ckpt_model
    spec = infer_spec(state, name, num_heads)
    model = build_encoder(spec, img_size, **timm_kwargs)
    encoder_state = {k: v for k, v in state.items() if not k.startswith(_DROPPED_PREFIXES)}
    encoder_state["pos_embed"] = resize_pos_embed(
        encoder_state["pos_embed"], img_size // spec.patch_size
    )
    if isinstance(model.norm, nn.Identity):  # avg pooling: fc_norm replaces the final norm
        encoder_state = {k: v for k, v in encoder_state.items() if not k.startswith("norm.")}
    missing, unexpected = model.load_state_dict(encoder_state, strict=False)
    new = [k for k in missing if k.startswith(("head.", "fc_norm."))]  # what timm_kwargs added
    missing = [k for k in missing if k not in new]
    if missing or unexpected:
        raise CheckpointError(
            f"{path}: weights do not fit a ViT encoder {asdict(spec)}: missing {missing[:6]}, "
            f"unexpected {unexpected[:6]}"
        )
    if isinstance(model.head, nn.Linear):
        nn.init.trunc_normal_(model.head.weight, std=2e-5)
        nn.init.zeros_(model.head.bias)
    info = EncoderInfo(str(path), sha256 or file_sha256(path), source, name, spec)
    return model.train(), info


def load_encoder(
    path,
    model_name: str | None = None,
    num_heads: int | None = None,
    img_size: int = 224,
    sha256: str | None = None,
    trusted: bool = False,
):
    """Frozen encoder (eval mode, no grad, no head, CLS pooling after the final norm) from
    ``path`` -> (model, EncoderInfo); see ``load_vit``."""
    model, info = load_vit(path, model_name, num_heads, img_size, sha256, trusted)
    model.eval().requires_grad_(False)
    return model, info


def encode_tokens(model: nn.Module, imgs: torch.Tensor) -> torch.Tensor:
    """All tokens after the final norm, with no masking: imgs [B, 3, H, W] -> [B, 1 + L, D].

    Uses only the attributes that timm's VisionTransformer and our MaskedAutoencoderViT share
    (patch_embed, cls_token, pos_embed, blocks, norm), so it runs the encoder of either.
    """
    x = model.patch_embed(imgs)  # [B, L, D]
    x = x + model.pos_embed[:, 1:, :]
    cls = (model.cls_token + model.pos_embed[:, :1, :]).expand(x.shape[0], -1, -1)
    x = torch.cat([cls, x], dim=1)  # [B, 1 + L, D]
    norm_pre = getattr(model, "norm_pre", None)
    if norm_pre is not None:
        x = norm_pre(x)
    for block in model.blocks:
        x = block(x)
    return model.norm(x)


def features(model: nn.Module, imgs: torch.Tensor, pool: str = "cls") -> torch.Tensor:
    """Image features [B, D]: ``cls`` = CLS token after the final norm (the MAE linear-probe
    feature); ``avg`` = mean of the patch tokens after the same final norm.

    MAE's ``global_pool`` instead averages the patch tokens *before* the norm and applies an
    ``fc_norm`` trained during fine-tuning; a frozen pretrained encoder has no such layer, so
    ``avg`` reuses the pretrained final norm on every token before averaging.
    """
    tokens = encode_tokens(model, imgs)
    if pool == "cls":
        return tokens[:, 0]
    if pool == "avg":
        return tokens[:, 1:].mean(dim=1)
    raise ValueError(f"pool must be one of {POOLS}, got {pool!r}")
