"""The stage-1 backbones and the one place that resolves their weights.

* DINO ViT-B/16: timm ``vit_base_patch16_224`` with ``num_classes=0`` (DINO's parameter names
  are timm's for this model, minus the head).
* ResNet-50: torchvision layout with the ImageNet-1k head (timm's ``resnet50`` uses the same
  parameter names, so timm files load too).

Weights come from a file (every format listed in ``WEIGHT_FORMATS``), from timm's pretrained tag
through timm's own Hugging Face download and cache, or are random (seeded, so every process and
rerun builds the same network). Each loader returns ``(model, identity)`` where ``identity`` is
``{architecture, weights_file, sha256, source}`` for the map store attributes.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import timm
import torch
import torchvision
from timm.models._hub import download_from_hf

from attgmae.core.files import file_sha256
from attgmae.core.torchfile import CheckpointError, load_torch_file, strip_prefixes, tensors_only

DINO_ARCH = "vit_base_patch16_224"
DINO_TAG = "vit_base_patch16_224.dino"
DINO_FILE_HINT = (
    "dino_vitbase16_pretrain.pth (https://dl.fbaipublicfiles.com/dino/"
    "dino_vitbase16_pretrain/dino_vitbase16_pretrain.pth)"
)
RESNET_ARCH = "resnet50"
RESNET_TAG = "resnet50.tv_in1k"
RESNET_FILE_HINT = (
    "resnet50-0676ba61.pth (https://download.pytorch.org/models/"
    "resnet50-0676ba61.pth) or resnet50-11ad3fa6.pth"
)
RANDOM_SEED = 0

# identity["source"] is "file:<one of these>", "timm:<pretrained tag>" or "random(seed=0)".
WEIGHT_FORMATS = {
    "dino-checkpoint": "full DINO training checkpoint (its 'teacher', minus module./backbone.)",
    "state-dict": "a plain state dict: official DINO dino_vitbase16_pretrain.pth, timm or "
    "torchvision .pth (also wrapped in 'state_dict' / 'model')",
    "safetensors": "timm .safetensors",
}


# A weights file that cannot be used (or weights that cannot be fetched): the one checkpoint
# error type, under the name this module's callers know.
WeightsError = CheckpointError


class RandomWeightsWarning(UserWarning):
    """Maps from random weights are for tests and demos only."""


def read_weights_file(path, trusted: bool = False) -> dict:
    """Load a .safetensors or torch weights file (tensors only unless ``trusted``)."""
    return load_torch_file(path, trusted=trusted, what="weights")


def extract_state_dict(loaded, path) -> tuple[dict, str]:
    """Any supported container -> (flat parameter dict, format name from WEIGHT_FORMATS)."""
    if not isinstance(loaded, dict):
        raise WeightsError(f"{path}: expected a dict of tensors, found {type(loaded).__name__}")
    fmt = "safetensors" if str(path).endswith(".safetensors") else "state-dict"
    if "teacher" in loaded and isinstance(loaded["teacher"], dict):
        # DINO checkpoint: the teacher is the network DINO evaluates and releases.
        teacher = loaded["teacher"]
        if not any(key.removeprefix("module.").startswith("backbone.") for key in teacher):
            raise WeightsError(f"{path}: DINO checkpoint 'teacher' has no 'backbone.' weights")
        return strip_prefixes(tensors_only(teacher)), "dino-checkpoint"
    for wrapper in ("state_dict", "model", "module"):
        if wrapper in loaded and isinstance(loaded[wrapper], dict):
            loaded = loaded[wrapper]
            break
    state = tensors_only(loaded)
    if not state:
        raise WeightsError(f"{path}: no tensors found")
    return strip_prefixes(state), fmt


def _load_into(model, state: dict, path, what: str, ignore_prefixes=()) -> None:
    """Strict load with a readable error: the file, what is missing, what is extra."""
    state = {k: v for k, v in state.items() if not k.startswith(tuple(ignore_prefixes))}
    expected = model.state_dict()
    # Old torchvision files predate BatchNorm's num_batches_tracked; it is not a weight.
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    wrong_shape = [
        f"{k} {tuple(state[k].shape)} != {tuple(expected[k].shape)}"
        for k in expected
        if k in state and state[k].shape != expected[k].shape
    ]
    if missing or unexpected or wrong_shape:
        details = []
        for label, names in (
            ("missing", missing),
            ("unexpected", unexpected),
            ("wrong shape", wrong_shape),
        ):
            if names:
                details.append(f"{len(names)} {label} (e.g. {', '.join(names[:3])})")
        raise WeightsError(f"{path}: does not hold {what} weights: {'; '.join(details)}")
    model.load_state_dict(state, strict=False)


def _download_pretrained(tag: str) -> Path:
    """timm's own Hugging Face download + cache of a pretrained tag -> local file path."""
    cfg = timm.models.get_pretrained_cfg(tag)
    return Path(download_from_hf(cfg.hf_hub_id, "model.safetensors"))


def _resolve(
    build,
    weights,
    random_weights: bool,
    tag: str,
    arch: str,
    hint: str,
    flag: str,
    what: str,
    ignore_prefixes=(),
    trusted: bool = False,
):
    if random_weights:
        if weights is not None:
            raise WeightsError(
                f"{weights}: --random_weights and a weights file both given; pick one"
            )
        warnings.warn(
            f"{arch}: RANDOM weights (tests/demo only; the maps mean nothing)",
            RandomWeightsWarning,
            stacklevel=3,
        )
        # Seeded so every rank and every resumed run builds the identical network.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(RANDOM_SEED)
            model = build()
        identity = {
            "architecture": arch,
            "weights_file": None,
            "sha256": None,
            "source": f"random(seed={RANDOM_SEED})",
        }
        return model.eval(), identity
    if weights is None:
        try:
            path = _download_pretrained(tag)
        except Exception as err:  # noqa: BLE001 (any failure: network, hub, cache)
            raise WeightsError(
                f"could not get the pretrained weights {tag} through timm ({type(err).__name__}; "
                f"no network?). Download {hint} and pass it with {flag} PATH"
            ) from None
        source = f"timm:{tag}"
    else:
        path, source = Path(weights), None
    state, fmt = extract_state_dict(read_weights_file(path, trusted), path)
    model = build()
    _load_into(model, state, path, what, ignore_prefixes)
    identity = {
        "architecture": arch,
        "weights_file": str(Path(path).resolve()),
        "sha256": file_sha256(path),
        "source": source or f"file:{fmt}",
    }
    return model.eval(), identity


def build_dino_vit():
    return timm.create_model(DINO_ARCH, pretrained=False, num_classes=0)


def build_resnet50():
    return torchvision.models.resnet50(weights=None)


def load_dino_vit(weights=None, random_weights: bool = False, trusted: bool = False):
    """-> (timm ViT-B/16 in eval mode, identity dict). ``weights``: a file path or None (timm's
    ``vit_base_patch16_224.dino``). A classifier head in the file ('head.*') is ignored."""
    return _resolve(
        build_dino_vit,
        weights,
        random_weights,
        DINO_TAG,
        DINO_ARCH,
        DINO_FILE_HINT,
        "--dino_weights",
        "a DINO ViT-B/16 (timm vit_base_patch16_224)",
        ignore_prefixes=("head.", "fc_norm."),
        trusted=trusted,
    )


def load_resnet50(weights=None, random_weights: bool = False, trusted: bool = False):
    """-> (torchvision ResNet-50 in eval mode, identity dict). ``weights``: a torchvision or
    timm file, or None (timm's ``resnet50.tv_in1k``)."""
    return _resolve(
        build_resnet50,
        weights,
        random_weights,
        RESNET_TAG,
        RESNET_ARCH,
        RESNET_FILE_HINT,
        "--resnet_weights",
        "a ResNet-50 (torchvision layout, 1000-class head)",
        trusted=trusted,
    )
