"""What defines a store's maps, and what a store records about how they were made.

``defining_params``: a method's resolved parameters plus the identity of the network weights,
known before any loading. A partial or complete store made with other parameters or weights is
then "other parameters", never silently resumed or skipped. ``store_attrs``: the attributes
``attg-maps generate`` writes into each store (docs/store-format.md).
"""

from __future__ import annotations

import functools
from pathlib import Path

from attgmae.core.constants import IMAGENET_MEAN, IMAGENET_STD, MAP_INPUT_SIZE
from attgmae.core.errors import InputError
from attgmae.core.files import file_sha256
from attgmae.core.provenance import software_versions
from attgmae.data.device_decode import PREPROCESSING_GPU, PREPROCESSING_RESIZE_GPU
from attgmae.data.map_inputs import PREPROCESSING
from attgmae.maps.registry import BACKBONES, METHODS, resolve
from attgmae.models.backbones import RANDOM_SEED

GENERATE_PACKAGES = ("attgmae", "torch", "timm", "grad-cam")
# what the device does of the pixels (map_inputs.ON_DEVICE) -> the stores' preprocessing
PREPROCESSINGS = {
    "": PREPROCESSING,
    "resize": PREPROCESSING_RESIZE_GPU,
    "decode": PREPROCESSING_GPU,
}


@functools.lru_cache(maxsize=8)
def _cached_sha256(path: str, size: int, mtime_ns: int) -> str:
    return file_sha256(path)  # once per file version, however often the params are asked for


def weights_identity(backbone: str, weights, random_weights: bool) -> str:
    """'random(seed=0)', 'timm:<pretrained tag>' or 'sha256:<hex>' of the given file."""
    if random_weights:
        return f"random(seed={RANDOM_SEED})"
    if weights is None:
        return f"timm:{resolve(BACKBONES[backbone].tag)}"
    try:
        stat = Path(weights).stat()
        digest = _cached_sha256(str(Path(weights).resolve()), stat.st_size, stat.st_mtime_ns)
    except OSError as err:
        raise InputError(f"{weights}: cannot read the weights file ({err.strerror})") from None
    return f"sha256:{digest}"


def defining_params(method: str, params: dict, weights: dict, random_weights: bool,
                    precision: str, on_device: str = "") -> dict:  # fmt: skip
    """Resolved ``params`` of ``method``, plus for a method with a network whether its weights
    are random, their identity, the forward's resolved precision ('bf16' or 'fp32': bf16
    maps differ from fp32 ones, so a run never mixes them in one store) and where the pixels
    were made when not by the loader workers (``on_device``, ``map_inputs.ON_DEVICE``):
    ``"resize": "gpu"`` (PIL's pixels exactly, the workers' within 1 grey level), with
    ``"decode": "gpu"`` too for nvjpeg (its pixels are not libjpeg-turbo's); stores made before
    either existed keep their parameters. ``weights`` {backbone: file path or None}."""
    backbone = METHODS[method].backbone
    if backbone is None:
        return dict(params)
    defining = {
        **params,
        "random_weights": bool(random_weights),
        "weights": weights_identity(backbone, weights.get(backbone), random_weights),
        "precision": precision,
    }
    if on_device == "decode":
        defining["decode"] = "gpu"
    if on_device:
        defining["resize"] = "gpu"
    return defining


def store_attrs(method: str, params: dict, identity, class_names, device_type: str, amp: bool,
                random_weights: bool, on_device: str = "") -> dict:  # fmt: skip
    """The attributes of one generated store (besides those the writer adds)."""
    return {
        "params": params,
        "model": identity,
        "random_weights": bool(random_weights and METHODS[method].backbone is not None),
        "preprocessing": PREPROCESSINGS[on_device],
        "input_size": [MAP_INPUT_SIZE, MAP_INPUT_SIZE],
        "mean": list(IMAGENET_MEAN),
        "std": list(IMAGENET_STD),
        "compute": {"device_type": device_type, "bf16_autocast": amp},
        "software": software_versions(GENERATE_PACKAGES),
        "class_names": list(class_names),
        "generated_by": "attg-maps generate",
    }
