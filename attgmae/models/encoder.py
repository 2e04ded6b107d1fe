"""The ViT encoder that evaluation runs and fine-tuning trains, built from any accepted checkpoint.

Accepted files, recognised from the keys (``source_format``): ``attgmae-mae`` (ours and official
MAE full checkpoints, ``{"model": MAE with decoder_*, "args"}``); ``mae-pretrain`` (``{"model":
encoder}``); ``mae-finetuned`` (``{"model": encoder + fc_norm/head}``: MAE's fine-tuned models,
``attg-eval finetune``'s); ``training-teacher`` / ``-student`` (DINO and iBOT training
checkpoints, the teacher unless ``checkpoint_key`` says); ``state-dict`` (``{"state_dict": ..}``,
iBOT's released backbones); ``beit`` (BEiT and SimMIM: layer scale, q/v biases, relative position
bias shared or per block, built as timm's ``Beit``); ``timm`` (a bare state dict in .pth / .bin /
.safetensors: timm ViTs, DINO's backbone files). ``module.``, ``backbone.`` and ``encoder.``
prefixes are stripped; other methods' heads, decoders and mask tokens dropped. MAE, DINO, iBOT
and timm ViTs share key names: they load into a timm ``VisionTransformer``.

The architecture is read off the state dict (width, depth, patch size, image size, MLP ratio,
qkv bias, BEiT's parts); the number of heads, which a plain ViT's weights do not show, comes
from ``num_heads``, the size word of ``model_name`` or of the checkpoint's recorded model
(``args.model``, or DINO's ``args.arch``), else the standard ViT table. A ``model_name`` that
contradicts the checkpoint (its recorded model, or the width, depth or patch size of its
weights) is an ``ArchitectureError`` unless ``force_model``; so are heads that do not divide
the width.
"""

from __future__ import annotations

import argparse
import math
import re
from dataclasses import asdict, dataclass
from functools import partial

from timm.layers import resample_abs_pos_embed
from timm.models.beit import Beit
from timm.models.beit import checkpoint_filter_fn as beit_filter
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from attgmae.core.errors import InputError
from attgmae.core.files import file_sha256
from attgmae.core.torchfile import CheckpointError, load_torch_file, strip_prefixes, tensors_only
from attgmae.models.rel_pos import resize_rel_pos_table

# Heads of the standard ViT sizes (64-d heads, but ViT-H/g: 16 heads).
HEADS_BY_SIZE = {"tiny": 3, "small": 6, "base": 12, "large": 16, "huge": 16, "giant": 16}
HEADS_BY_WIDTH = {192: 3, 384: 6, 768: 12, 1024: 16, 1280: 16, 1408: 16}
# Width and depth of the standard sizes (tiny's depth varies: timm 12, our mae_vit_tiny 4).
WIDTH_BY_SIZE = {"tiny": 192, "small": 384, "base": 768, "large": 1024, "huge": 1280, "giant": 1408}
DEPTH_BY_SIZE = {"small": 12, "base": 12, "large": 24, "huge": 32, "giant": 40}
_SIZE_WORD = re.compile(r"(?:^|_)(tiny|small|base|large|huge|giant)(?=_|$)")
# Checkpoint entries holding the weights, tried in this order (DINO/iBOT: the teacher first,
# as their evaluations use it).
WRAPPERS = ("model", "state_dict", "teacher", "student", "module")  # module: DeepSpeed (BEiT)
# Keys of parts the encoder does not use: MAE's and SimMIM's decoders, mask tokens, other
# methods' heads (a head or fc_norm that fits the new model is put back by encoder_weights).
_OTHER_PARTS = ("decoder_", "decoder.", "mask_token", "masked_embed", "lm_head.")
_DROPPED_PREFIXES = (*_OTHER_PARTS, "head.", "fc_norm.")
_REUSABLE_NEW_PARTS = ("head.weight", "head.bias", "fc_norm.weight", "fc_norm.bias")
_SHARED_REL_POS = "rel_pos_bias.relative_position_bias_table"


class ArchitectureError(InputError):
    """An architecture that contradicts the checkpoint, or whose numbers cannot work."""


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
    family: str = "vit"  # "vit" (timm VisionTransformer) | "beit" (timm Beit)
    layer_scale: bool = False  # beit: per-block gamma_1 / gamma_2
    abs_pos_embed: bool = True  # beit checkpoints may have none
    rel_pos_bias: bool = False  # beit: relative position bias (built per block)


@dataclass
class EncoderInfo:
    """Where an encoder came from: recorded in every result."""

    checkpoint: str
    sha256: str
    source_format: str  # see the module docstring
    model_name: str | None
    spec: EncoderSpec | None  # None for a timm model built by name
    new_parts: tuple[str, ...] = ()  # parameters not in the checkpoint: freshly initialized

    def to_dict(self) -> dict:
        out = asdict(self)
        out["spec"] = asdict(self.spec) if self.spec is not None else None
        return out


def _recorded_model(args) -> str | None:
    """The model name a checkpoint's ``args`` records: ``model`` (MAE, ours), else DINO/iBOT's
    ``arch`` with its ``patch_size`` (``vit_base`` + 16 -> ``vit_base_patch16``)."""
    get = args.get if isinstance(args, dict) else partial(getattr, args)
    if not isinstance(args, (dict, argparse.Namespace)):
        return None
    name, arch = get("model", None), get("arch", None)
    if isinstance(name, str):
        return name
    if isinstance(arch, str):
        patch = get("patch_size", None)
        return f"{arch}_patch{patch}" if patch and "patch" not in arch else arch
    return None


def _is_beit(state: dict) -> bool:
    """BEiT's layout (SimMIM's too): separate q / v biases or relative position tables. Layer
    scale alone is not BEiT's: DINO's and iBOT's ViTs have it with ``init_values``."""
    return any(k.endswith(("attn.q_bias", "relative_position_bias_table")) for k in state)


def read_checkpoint(
    path, trusted: bool = False, checkpoint_key: str | None = None
) -> tuple[dict, str, str | None]:
    """Read ``path`` -> (state dict with the encoder's keys, source format, model name or None).

    ``checkpoint_key``: the entry holding the weights (``teacher``, ``student``, ``model``);
    by default the first of ``WRAPPERS`` present, else the whole file. A file without any entry
    of weights (released weights, a plain state dict) is read whole also when a key is given,
    as DINO's ``load_pretrained_weights`` reads it (its ``--checkpoint_key teacher`` default
    meets released backbones); a key the file lacks while it has other entries is an error.
    """
    obj = load_torch_file(path, trusted=trusted)
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a dict of weights, found {type(obj).__name__}")
    model_name = _recorded_model(obj.get("args"))
    entries = [w for w in WRAPPERS if isinstance(obj.get(w), dict)]
    if checkpoint_key is not None and not isinstance(obj.get(checkpoint_key), dict):
        if entries:
            raise CheckpointError(
                f"{path}: no {checkpoint_key!r} entry of weights (it holds {sorted(obj)[:8]}): "
                f"use --checkpoint_key {entries[0]}, or leave it out"
            )
        checkpoint_key = None  # plain weights: the whole file, as DINO
    wrapper = checkpoint_key or (entries[0] if entries else None)
    state = strip_prefixes(tensors_only(obj[wrapper] if wrapper else obj))
    if "cls_token" not in state or "patch_embed.proj.weight" not in state:
        raise CheckpointError(
            f"{path}: no ViT encoder weights found (need cls_token, patch_embed.proj.weight, "
            f"blocks.*; found keys like {sorted(state)[:5]})"
        )
    if any(k.startswith("decoder_") for k in state):
        source = "attgmae-mae"
    elif _is_beit(state):
        source = "beit"
    elif wrapper in ("teacher", "student"):
        source = f"training-{wrapper}"
    elif wrapper == "state_dict":
        source = "state-dict"
    elif wrapper:
        source = "mae-finetuned" if "head.weight" in state else "mae-pretrain"
    else:
        source = "timm"
    return state, source, model_name


def size_word(model_name: str | None) -> str | None:
    """``tiny`` ... ``giant`` in a model name (``mae_vit_large_patch16`` -> ``large``)."""
    match = _SIZE_WORD.search(model_name or "")
    return match.group(1) if match else None


def _name_patch(model_name: str | None) -> int | None:
    match = re.search(r"patch(\d+)", model_name or "")
    return int(match.group(1)) if match else None


def heads_for(model_name: str | None, embed_dim: int) -> int:
    """Number of attention heads: from the model name's size word, else the width table."""
    size = size_word(model_name)
    if size:
        return HEADS_BY_SIZE[size]
    if embed_dim in HEADS_BY_WIDTH:
        return HEADS_BY_WIDTH[embed_dim]
    if embed_dim % 64:
        raise CheckpointError(f"cannot infer heads for width {embed_dim}; pass --num_heads")
    return embed_dim // 64


def _width_depth_patch(state: dict) -> tuple[int, int, int]:
    proj = state["patch_embed.proj.weight"]  # [D, 3, p, p]
    depth = 1 + max(
        (int(m.group(1)) for k in state if (m := re.match(r"blocks\.(\d+)\.", k))), default=-1
    )
    if depth == 0:
        raise CheckpointError("no blocks.N.* keys: not a ViT encoder")
    return int(proj.shape[0]), depth, int(proj.shape[-1])


def check_model_name(state: dict, path, model_name: str | None, recorded: str | None) -> None:
    """ArchitectureError when ``model_name`` (``--model``) contradicts the checkpoint: the model
    it records, or its weights' width, depth or patch size against the name's standard size."""
    if not model_name:
        return
    width, depth, patch = _width_depth_patch(state)
    problems = []
    size, name_patch = size_word(model_name), _name_patch(model_name)
    if recorded and recorded != model_name:
        other_size, other_patch = size_word(recorded), _name_patch(recorded)
        if (size and other_size and size != other_size) or (
            name_patch and other_patch and name_patch != other_patch
        ):
            problems.append(f"it records the model {recorded}")
    if size and width != WIDTH_BY_SIZE[size]:
        problems.append(f"its weights are {width} wide (a {size} ViT: {WIDTH_BY_SIZE[size]})")
    if size in DEPTH_BY_SIZE and depth != DEPTH_BY_SIZE[size]:
        problems.append(f"it has {depth} blocks (a {size} ViT: {DEPTH_BY_SIZE[size]})")
    if name_patch and name_patch != patch:
        problems.append(f"its patches are {patch} px")
    if problems:
        raise ArchitectureError(
            f"--model {model_name} contradicts {path}: {'; '.join(problems)}. Drop --model to "
            f"use the checkpoint's own architecture, or pass --force_model to take the head "
            f"count from {model_name} anyway"
        )


def infer_spec(
    state: dict, model_name: str | None = None, num_heads: int | None = None
) -> EncoderSpec:
    """Architecture of the encoder whose weights are ``state``; ArchitectureError when the heads
    (``num_heads``, else from the name or width) do not divide the width."""
    embed_dim, depth, patch = _width_depth_patch(state)
    beit = _is_beit(state)
    table = state.get("blocks.0.attn.relative_position_bias_table", state.get(_SHARED_REL_POS))
    if "pos_embed" in state:
        num_tokens = int(state["pos_embed"].shape[1]) - 1  # minus the CLS position
        grid = math.isqrt(num_tokens)
        if grid * grid != num_tokens:
            raise CheckpointError(f"pos_embed has {num_tokens} patch positions, not a square grid")
    elif beit and table is not None:  # a g x g grid has (2g - 1)^2 + 3 relative positions
        grid = (math.isqrt(int(table.shape[0]) - 3) + 1) // 2
    else:
        raise CheckpointError("no pos_embed and no relative position table: image size unknown")
    if num_heads is not None:
        heads, told = int(num_heads), f"--num_heads {num_heads}"
    elif table is not None:  # BEiT's tables have one column per head
        heads, told = int(table.shape[1]), "the relative position table"
    else:
        heads = heads_for(model_name, embed_dim)
        told = f"--model {model_name}" if size_word(model_name) else "the width"
    if heads < 1 or embed_dim % heads:
        raise ArchitectureError(
            f"{heads} attention heads (from {told}) do not divide the width {embed_dim}: pass "
            f"--num_heads with a divisor of {embed_dim}, e.g. {HEADS_BY_WIDTH.get(embed_dim, 1)}"
        )
    mlp_hidden = int(state["blocks.0.mlp.fc1.weight"].shape[0])
    return EncoderSpec(
        img_size=grid * patch,
        patch_size=patch,
        embed_dim=embed_dim,
        depth=depth,
        num_heads=heads,
        mlp_ratio=mlp_hidden / embed_dim,
        qkv_bias=("blocks.0.attn.q_bias" if beit else "blocks.0.attn.qkv.bias") in state,
        family="beit" if beit else "vit",
        layer_scale="blocks.0.gamma_1" in state,
        abs_pos_embed="pos_embed" in state,
        rel_pos_bias=table is not None,
    )


def build_encoder(spec: EncoderSpec, img_size: int | None = None, **timm_kwargs) -> nn.Module:
    """A timm VisionTransformer (or Beit) of ``spec``; by default without head (CLS pooling,
    final norm kept). ``timm_kwargs`` (num_classes, global_pool, drop_path_rate, ...) go to
    timm."""
    img_size = img_size or spec.img_size
    if img_size % spec.patch_size:
        raise ArchitectureError(
            f"input size {img_size} is not a multiple of the patch size {spec.patch_size}"
        )
    kwargs = {"num_classes": 0, "global_pool": "token", **timm_kwargs}
    shape = dict(
        img_size=img_size,
        patch_size=spec.patch_size,
        embed_dim=spec.embed_dim,
        depth=spec.depth,
        num_heads=spec.num_heads,
        mlp_ratio=spec.mlp_ratio,
        qkv_bias=spec.qkv_bias,
    )
    if spec.family == "beit":  # a shared position bias is copied into every block, as BEiT's
        return Beit(  # fine-tuning does; layer-scale values come from the checkpoint
            **shape,
            use_abs_pos_emb=spec.abs_pos_embed,
            use_rel_pos_bias=spec.rel_pos_bias,
            init_values=0.1 if spec.layer_scale else None,
            **kwargs,
        )
    return VisionTransformer(
        **shape,
        norm_layer=partial(nn.LayerNorm, eps=1e-6),
        init_values=0.1 if spec.layer_scale else None,  # the values come from the checkpoint
        **kwargs,
    )


def encoder_weights(state: dict, spec: EncoderSpec, model: nn.Module) -> dict:
    """The checkpoint's weights as ``model`` (built from ``spec``, maybe at another input size)
    names and shapes them: unused parts dropped, a fine-tuned checkpoint's head and fc_norm kept
    when they fit (as MAE's fine-tuning), BEiT's shared table copied per block, positions
    resampled to the model's grid."""
    target = model.state_dict()
    weights = {
        k: v
        for k, v in state.items()
        if not k.startswith(_DROPPED_PREFIXES) and "relative_position_index" not in k
    }
    for key in _REUSABLE_NEW_PARTS:
        if key in state and key in target and state[key].shape == target[key].shape:
            weights[key] = state[key]
    if isinstance(model.norm, nn.Identity):  # avg pooling: fc_norm replaces the final norm
        weights = {k: v for k, v in weights.items() if not k.startswith("norm.")}
    if spec.family == "beit":
        shared = weights.pop(_SHARED_REL_POS, None)
        if shared is not None:
            for i in range(spec.depth):
                weights.setdefault(f"blocks.{i}.attn.relative_position_bias_table", shared)
        grid = model.patch_embed.grid_size[0]
        for key in [k for k in weights if k.endswith("relative_position_bias_table")]:
            weights[key] = resize_rel_pos_table(weights[key], grid)  # BEiT's bicubic spline
        # timm's filter: the absolute positions (bicubic, no antialiasing, as BEiT's code)
        return beit_filter(weights, model, antialias=False)
    # DINO's / iBOT's layer scale (gamma_1, gamma_2) is timm's ls1.gamma, ls2.gamma
    weights = {re.sub(r"\.gamma_([12])$", r".ls\1.gamma", k): v for k, v in weights.items()}
    # Bicubic on the patch positions, no antialiasing: MAE's interpolate_pos_embed.
    grid = model.patch_embed.grid_size
    weights["pos_embed"] = resample_abs_pos_embed(weights["pos_embed"], grid, antialias=False)
    return weights


def load_vit(
    path,
    model_name: str | None = None,
    num_heads: int | None = None,
    img_size: int = 224,
    sha256: str | None = None,
    trusted: bool = False,
    checkpoint_key: str | None = None,
    force_model: bool = False,
    **timm_kwargs,
):
    """A timm VisionTransformer (or Beit) shaped after the encoder in ``path``, its weights
    loaded -> (model, EncoderInfo); trainable, in train mode.

    ``model_name`` (``--model``) overrides the checkpoint's recorded model for the head count;
    it may be an MAE factory name (``mae_vit_large_patch16``), a timm/ViT one
    (``vit_large_patch16``) or DINO's (``vit_base``). One that contradicts the checkpoint is an
    ArchitectureError unless ``force_model``. ``trusted``: the file may be unpickled in full
    (--trust_checkpoint). ``checkpoint_key``: see ``read_checkpoint``. ``timm_kwargs`` shape
    what is new: ``num_classes`` > 0 adds a head (trunc-normal std 2e-5, as MAE's fine-tuning,
    unless the checkpoint's head fits); ``global_pool="avg"`` averages the patch tokens under
    ``fc_norm`` (MAE's --global_pool; timm then has no final norm, so the pretrained one is not
    used); ``drop_path_rate``.
    """
    state, source, recorded = read_checkpoint(path, trusted, checkpoint_key)
    if not force_model:
        check_model_name(state, path, model_name, recorded)
    name = model_name or recorded
    spec = infer_spec(state, name, num_heads)
    model = build_encoder(spec, img_size, **timm_kwargs)
    missing, unexpected = model.load_state_dict(encoder_weights(state, spec, model), strict=False)
    new = [k for k in missing if k.startswith(("head.", "fc_norm."))]  # what timm_kwargs added
    missing = [k for k in missing if k not in new]
    if missing or unexpected:
        hint = ""
        if source == "mae-finetuned" and any(k.startswith("norm.") for k in missing):
            hint = " (a classifier fine-tuned with global pooling has fc_norm, no final norm)"
        raise CheckpointError(
            f"{path}: weights do not fit a ViT encoder {asdict(spec)}: missing {missing[:6]}, "
            f"unexpected {unexpected[:6]}{hint}"
        )
    if isinstance(model.head, nn.Linear) and "head.weight" in new:
        nn.init.trunc_normal_(model.head.weight, std=2e-5)
        nn.init.zeros_(model.head.bias)
    info = EncoderInfo(str(path), sha256 or file_sha256(path), source, name, spec, tuple(new))
    return model.train(), info


def load_encoder(
    path,
    model_name: str | None = None,
    num_heads: int | None = None,
    img_size: int = 224,
    sha256: str | None = None,
    trusted: bool = False,
    checkpoint_key: str | None = None,
    force_model: bool = False,
):
    """Frozen encoder (eval mode, no grad, no head, CLS pooling after the final norm) from
    ``path`` -> (model, EncoderInfo); see ``load_vit``."""
    model, info = load_vit(
        path, model_name, num_heads, img_size, sha256, trusted, checkpoint_key, force_model
    )
    model.eval().requires_grad_(False)
    return model, info


def load_encoder_as_configured(cfg, sha256: str | None = None):
    """``load_encoder`` with the fields of an evaluation config (``checkpoint``, ``model``,
    ``num_heads``, ``input_size``, ``trust_checkpoint``, ``checkpoint_key``, ``force_model``)."""
    return load_encoder(
        cfg.checkpoint,
        cfg.model,
        cfg.num_heads,
        cfg.input_size,
        sha256,
        cfg.trust_checkpoint,
        checkpoint_key=cfg.checkpoint_key,
        force_model=cfg.force_model,
    )
