"""The classifier to fine-tune: pretrained weights from any accepted checkpoint, a new head.

Two ways in:
- a ViT checkpoint of any format ``attgmae.models.encoder`` reads (ours, MAE, DINO, iBOT, BEiT,
  SimMIM, timm ViTs): its architecture is read off the weights (``load_vit``);
- ``timm_model``: any timm architecture by name, its weights from a local file (timm's own
  key conversion, ``checkpoint_filter_fn`` of the model's module, applied when it has one).
Either way a head of ``num_classes`` outputs is added (trunc-normal std 2e-5, bias 0, as MAE's
fine-tuning) unless the checkpoint's own head fits.
"""

from __future__ import annotations

import sys

import timm
from torch import nn

from attgmae.core.errors import InputError
from attgmae.core.files import file_sha256
from attgmae.core.torchfile import CheckpointError, load_torch_file, strip_prefixes, tensors_only
from attgmae.models.encoder import WRAPPERS, EncoderInfo, load_vit


def _classifier_prefixes(model: nn.Module) -> tuple[str, ...]:
    names = model.pretrained_cfg.get("classifier", "head")
    names = (names,) if isinstance(names, str) else tuple(names)
    return tuple(f"{name}." for name in names) + ("fc_norm.",)


def _init_head(head: nn.Module) -> None:
    nn.init.trunc_normal_(head.weight, std=2e-5)
    nn.init.zeros_(head.bias)


def _create_timm(name: str, num_classes: int, img_size: int | None, **timm_kwargs) -> nn.Module:
    """``timm.create_model`` with a new head; ``img_size`` for the models that take one
    (transformers), left out for the others (convnets run at any input size)."""
    sized = {"img_size": img_size} if img_size else {}
    for kwargs in (sized, {}) if sized else ({},):
        try:
            return timm.create_model(
                name, pretrained=False, num_classes=num_classes, **kwargs, **timm_kwargs
            )
        except TypeError as err:
            if "img_size" in str(err) and kwargs:
                continue
            raise InputError(f"--timm_model {name}: {err}") from None
    raise AssertionError("unreachable")


def load_timm_classifier(
    name: str,
    path,
    num_classes: int,
    trusted: bool = False,
    checkpoint_key: str | None = None,
    sha256: str | None = None,
    img_size: int | None = None,
    **timm_kwargs,
) -> tuple[nn.Module, EncoderInfo]:
    """timm's ``name`` with ``num_classes`` outputs and the weights in ``path`` -> (model in
    train mode, EncoderInfo); ``img_size`` and ``timm_kwargs`` (drop_path_rate, ...) go to
    ``timm.create_model``. CheckpointError when the weights do not fit."""
    if not timm.is_model(name):
        raise InputError(f"--timm_model {name}: not a timm model name (timm.list_models())")
    model = _create_timm(name, num_classes, img_size, **timm_kwargs)
    obj = load_torch_file(path, trusted=trusted, what="weights")
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a dict of weights, found {type(obj).__name__}")
    key = checkpoint_key or next((w for w in WRAPPERS if isinstance(obj.get(w), dict)), None)
    state = strip_prefixes(tensors_only(obj[key] if key else obj))
    filter_fn = getattr(sys.modules[type(model).__module__], "checkpoint_filter_fn", None)
    if filter_fn is not None:  # timm's conversions of original key names, position resizing
        state = filter_fn(state, model)
    new_parts, target = _classifier_prefixes(model), model.state_dict()
    state = {  # the checkpoint's classifier only where it fits the new one
        k: v
        for k, v in state.items()
        if not k.startswith(new_parts) or (k in target and target[k].shape == v.shape)
    }
    missing, unexpected = model.load_state_dict(state, strict=False)
    new = [k for k in missing if k.startswith(new_parts)]
    missing = [k for k in missing if k not in new]
    if missing or unexpected:
        raise CheckpointError(
            f"{path}: weights do not fit timm's {name}: missing {missing[:6]}, "
            f"unexpected {unexpected[:6]}"
        )
    head = model.get_classifier()
    if isinstance(head, nn.Linear) and any(k.endswith("weight") for k in new):
        _init_head(head)
    source = f"timm:{name}"
    info = EncoderInfo(str(path), sha256 or file_sha256(path), source, name, None, tuple(new))
    return model.train(), info


def finetune_model(
    path,
    num_classes: int,
    *,
    model_name: str | None = None,
    timm_model: str | None = None,
    num_heads: int | None = None,
    img_size: int = 224,
    global_pool: str = "avg",
    drop_path_rate: float = 0.0,
    trusted: bool = False,
    checkpoint_key: str | None = None,
    force_model: bool = False,
    sha256: str | None = None,
) -> tuple[nn.Module, EncoderInfo]:
    """The model to fine-tune -> (model in train mode, EncoderInfo); see the module docstring.
    ``global_pool`` (``avg``: MAE's default, ``token``: MAE's ``--cls_token``) and ``num_heads``
    shape the ViT path; a timm model by name keeps its own pooling."""
    if timm_model:
        return load_timm_classifier(
            timm_model,
            path,
            num_classes,
            trusted,
            checkpoint_key,
            sha256,
            img_size=img_size,
            drop_path_rate=drop_path_rate,
        )
    return load_vit(
        path,
        model_name,
        num_heads,
        img_size,
        sha256,
        trusted,
        checkpoint_key,
        force_model,
        num_classes=num_classes,
        global_pool=global_pool,
        drop_path_rate=drop_path_rate,
    )
