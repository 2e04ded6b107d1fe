"""The map methods as data: the one description of each method.

A ``MapMethod`` declares the backbone it needs (or none), its parameters (name, type, choices,
default, help, command-line flag) and the function that computes a batch of its maps from what
the methods share (``attgmae.maps.compute.MapBatch``: the images, their keys and labels, and each
backbone's forward, run once for all methods that need it: one DINO forward serves both ``dino``
and ``tokencut``). ``attg-maps generate`` builds its per-method flags from these entries and
``MapComputer`` dispatches through them, so adding a method is one module plus one entry here
(docs/maps.md, "Adding a method").

Functions are named as ``"module:function"`` strings and imported on first use: every
``attg-maps`` command reads this registry to build its flags, and importing the methods would
pull in torch, timm and pytorch-grad-cam (seconds) even for ``attg-maps verify``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

BACKBONE_DINO = "dino"
BACKBONE_RESNET = "resnet"


def resolve(target):
    """A callable, or a ``"module:function"`` string imported now."""
    if not isinstance(target, str):
        return target
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


@dataclass(frozen=True)
class Param:
    """One parameter of a method: what it is called in the store and on the command line."""

    name: str  # key in the resolved parameters, recorded in the store's ``params``
    default: Any
    flag: str  # ``--<flag>`` on the command line
    help: str
    type: Callable = str  # argparse conversion
    choices: tuple | None = None
    aliases: tuple[str, ...] = ()  # other flag spellings that keep working
    check: Callable | str | None = None  # value -> checked value; ValueError when bad


@dataclass(frozen=True)
class Backbone:
    """A network several methods may share; loaded once per run."""

    name: str
    load: Callable | str  # (weights=path or None, random_weights=bool) -> (model, identity)
    weights_flag: str  # the flag that names its weights file
    tag: str  # the pretrained weights used when no file is given (a timm tag), or a reference
    weights_help: str = ""
    forward: Callable | str | None = None  # (model, images, amp) -> outputs the methods share
    # On CUDA, weights in channels_last: a convolutional network's tensor-core kernels run
    # NHWC natively (the input follows the first convolution; results differ by round-off only)
    channels_last: bool = False


@dataclass(frozen=True)
class MapMethod:
    name: str
    backbone: str | None  # a BACKBONES name, or None (needs no network)
    compute: Callable | str  # (MapBatch, params) -> [B, 14, 14] in [0, 1], or a pending result
    params: tuple[Param, ...] = ()
    summary: str = ""
    # (params, class_names, labels [N]) -> None; ValueError when the image set does not fit
    check_images: Callable | str | None = None
    # (params, workers) -> a pool with submit(...) and close(): CPU work beside the GPU
    pool: Callable | str | None = None
    # (params) -> the same interface doing that work on the batch's device (a GPU) instead
    device_pool: Callable | str | None = None
    # (params, device, batch_size) -> (s per image of the pool's job on one core, s per image
    # on the device or None): measured before a run to split the cores (resources.JobCosts)
    pool_cost: Callable | str | None = None
    param_names: tuple[str, ...] = field(init=False)

    def __post_init__(self):
        object.__setattr__(self, "param_names", tuple(p.name for p in self.params))


BACKBONES: dict[str, Backbone] = {
    BACKBONE_DINO: Backbone(
        BACKBONE_DINO,
        load="attgmae.models.backbones:load_dino_vit",
        weights_flag="dino_weights",
        tag="attgmae.models.backbones:DINO_TAG",
        weights_help="DINO ViT-B/16 weights (.pth official/checkpoint/timm, .safetensors); "
        "default: timm tag vit_base_patch16_224.dino",
        forward="attgmae.maps.dino:dino_outputs",
    ),
    BACKBONE_RESNET: Backbone(
        BACKBONE_RESNET,
        load="attgmae.models.backbones:load_resnet50",
        weights_flag="resnet_weights",
        tag="attgmae.models.backbones:RESNET_TAG",
        weights_help="ResNet-50 weights (torchvision or timm); default: timm tag resnet50.tv_in1k",
        channels_last=True,
    ),
}

METHODS: dict[str, MapMethod] = {}
DEFAULT_METHODS = ("dino", "tokencut", "gradcam", "random")


def register(method: MapMethod) -> MapMethod:
    """Add (or replace) a method; its backbone must be known."""
    if method.backbone is not None and method.backbone not in BACKBONES:
        raise ValueError(f"{method.name}: unknown backbone {method.backbone!r}")
    METHODS[method.name] = method
    return method


register(
    MapMethod(
        name="dino",
        backbone=BACKBONE_DINO,
        compute="attgmae.maps.dino:batch_maps",
        params=(
            Param(
                "heads",
                "mean",
                "dino_heads",
                "mean, max or a head index",
                check="attgmae.maps.dino:check_heads",
            ),
        ),
        summary="DINO ViT-B/16 last-block CLS attention over the patches, mean over heads",
    )
)
register(
    MapMethod(
        name="tokencut",
        backbone=BACKBONE_DINO,
        compute="attgmae.maps.tokencut:batch_maps",
        params=(
            # Recorded as ``tau``, TokenCut's own name (its --tau); on the command line it is the
            # threshold, so that tau means the guidance temperature of stage 2 only.
            Param(
                "tau",
                0.2,
                "tokencut_threshold",
                "an edge joins two patches whose keys' cosine similarity is above this",
                type=float,
                aliases=("tokencut_tau",),
                check="attgmae.maps.tokencut:check_threshold",
            ),
            Param(
                "eps",
                1e-5,
                "tokencut_eps",
                "weight of the non-edges",
                float,
                check="attgmae.maps.tokencut:check_eps",
            ),
            Param(
                "map",
                "fg-eigvec",
                "tokencut_map",
                "fg-eigvec: eigenvector on the foreground; eigvec; mask: seed component",
                choices=("fg-eigvec", "eigvec", "mask"),
            ),
        ),
        summary="TokenCut normalized cut on the last-block patch keys",
        pool="attgmae.maps.tokencut:start_pool",
        device_pool="attgmae.maps.tokencut:start_device_solver",
        pool_cost="attgmae.maps.tokencut:pool_costs",
    )
)
register(
    MapMethod(
        name="gradcam",
        backbone=BACKBONE_RESNET,
        compute="attgmae.maps.gradcam:batch_maps",
        params=(
            Param(
                "layer",
                "layer4",
                "cam_layer",
                "the last bottleneck of this stage",
                choices=("layer3", "layer4"),
            ),
            Param(
                "target",
                "top1",
                "cam_target",
                "top1 prediction, or the folder label (1000 ImageNet wnid folders)",
                choices=("top1", "label"),
            ),
            Param(
                "method",
                "gradcam",
                "cam_method",
                "gradcam (batched, fast) or a pytorch-grad-cam method: gradcam++, xgradcam, "
                "layercam, eigencam, scorecam, ...",
                check="attgmae.maps.gradcam:check_cam_method",
            ),
        ),
        summary="Grad-CAM of a ResNet-50 for its top-1 class (or the folder label)",
        check_images="attgmae.maps.gradcam:check_images",
    )
)
register(
    MapMethod(
        name="random",
        backbone=None,
        compute="attgmae.maps.random_map:batch_maps",
        params=(Param("seed", 0, "seed", "seed of the random maps", int),),
        summary="uniform noise per patch seeded by (seed, key): the ablation map",
    )
)


def parse_methods(spec: str | list[str]) -> list[str]:
    """ "dino,tokencut" or a list -> validated, de-duplicated names in the given order."""
    names = spec.split(",") if isinstance(spec, str) else list(spec)
    names = [name.strip() for name in names if name.strip()]
    unknown = [name for name in names if name not in METHODS]
    if unknown or not names:
        raise ValueError(
            f"unknown map method(s) {unknown or spec!r}; choose from {', '.join(METHODS)}"
        )
    return list(dict.fromkeys(names))


def resolve_params(name: str, overrides: dict | None = None) -> dict:
    """Defaults of ``name`` updated with ``overrides`` (None values ignored), checked."""
    method = METHODS[name]
    params = {p.name: p.default for p in method.params}
    for key, value in (overrides or {}).items():
        if value is None:
            continue
        if key not in params:
            raise ValueError(f"{name} has no parameter {key!r} (has {', '.join(params)})")
        params[key] = value
    for param in method.params:
        if param.choices is not None and params[param.name] not in param.choices:
            raise ValueError(
                f"{name} {param.name} must be one of {param.choices}, got {params[param.name]!r}"
            )
        if param.check is not None:
            params[param.name] = resolve(param.check)(params[param.name])
    return params


def backbones_needed(names: list[str]) -> list[str]:
    """Backbones to load for these methods, each once, in method order."""
    return list(dict.fromkeys(METHODS[n].backbone for n in names if METHODS[n].backbone))
