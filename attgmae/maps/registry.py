"""The map methods as data, and the one function that computes a batch of maps.

Each method declares the backbone it needs and its parameters with the issue's defaults; the
CLI flags map one-to-one onto these parameter names (``--tokencut_tau`` -> tokencut ``tau``).
``dino`` and ``tokencut`` share one DINO forward (``dino_outputs``); all methods share one
decoded, resized, normalized batch.
"""

from __future__ import annotations

from dataclasses import dataclass, field

BACKBONE_DINO = "dino_vit"
BACKBONE_RESNET = "resnet50"
DINO_NUM_HEADS = 12  # ViT-B/16's attention heads (the --dino_heads index range)


@dataclass(frozen=True)
class MapMethod:
    name: str
    backbone: str | None  # BACKBONE_DINO, BACKBONE_RESNET, or None (needs no network)
    params: dict = field(default_factory=dict)  # parameter name -> default
    choices: dict = field(default_factory=dict)  # parameter name -> allowed values (if closed)
    summary: str = ""


METHODS: dict[str, MapMethod] = {
    "dino": MapMethod(
        "dino", BACKBONE_DINO, {"heads": "mean"},
        summary="DINO ViT-B/16 last-block CLS attention over the patches, mean over heads"),
    "tokencut": MapMethod(
        "tokencut", BACKBONE_DINO,
        {"tau": 0.2, "eps": 1e-5, "map": "fg-eigvec"},
        {"map": ("fg-eigvec", "eigvec", "mask")},
        summary="TokenCut normalized cut on the last-block patch keys"),
    "gradcam": MapMethod(
        "gradcam", BACKBONE_RESNET,
        {"layer": "layer4", "target": "top1", "method": "gradcam"},
        {"layer": ("layer3", "layer4"), "target": ("top1", "label")},
        summary="Grad-CAM of a ResNet-50 for its top-1 class (or the folder label)"),
    "random": MapMethod(
        "random", None, {"seed": 0},
        summary="uniform noise per patch seeded by (seed, key): the ablation map"),
}


def method_names() -> list[str]:
    return list(METHODS)


def parse_methods(spec: str | list[str]) -> list[str]:
    """"dino,tokencut" or a list -> validated, de-duplicated names in the given order."""
    names = spec.split(",") if isinstance(spec, str) else list(spec)
    names = [name.strip() for name in names if name.strip()]
    unknown = [name for name in names if name not in METHODS]
    if unknown or not names:
        raise ValueError(f"unknown map method(s) {unknown or spec!r}; choose from "
                         f"{', '.join(METHODS)}")
    return list(dict.fromkeys(names))


def resolve_params(name: str, overrides: dict | None = None) -> dict:
    """Defaults of ``name`` updated with ``overrides`` (None values ignored), validated."""
    method = METHODS[name]
    params = dict(method.params)
    for key, value in (overrides or {}).items():
        if value is None:
            continue
        if key not in params:
            raise ValueError(f"{name} has no parameter {key!r} (has {', '.join(params)})")
        params[key] = value
    for key, allowed in method.choices.items():
        if params[key] not in allowed:
            raise ValueError(f"{name} {key} must be one of {allowed}, got {params[key]!r}")
    if name == "dino" and params["heads"] not in ("mean", "max"):
        try:
            params["heads"] = int(params["heads"])
        except (TypeError, ValueError):
            raise ValueError(f"dino heads must be mean, max or a head index, "
                             f"got {params['heads']!r}") from None
        # Checked here, not first in the middle of a run after the model is loaded.
        if not -DINO_NUM_HEADS <= params["heads"] < DINO_NUM_HEADS:
            raise ValueError(f"dino heads index {params['heads']} out of range: ViT-B/16 has "
                             f"{DINO_NUM_HEADS} heads (0..{DINO_NUM_HEADS - 1})")
    if name == "gradcam":
        from attgmae.maps.gradcam import CAM_METHODS

        if params["method"] not in CAM_METHODS:
            raise ValueError(f"gradcam method must be one of {CAM_METHODS}, "
                             f"got {params['method']!r}")
    return params


def backbones_needed(names: list[str]) -> list[str]:
    """Backbones to load for these methods, each once."""
    return list(dict.fromkeys(METHODS[n].backbone for n in names if METHODS[n].backbone))


def load_backbone(backbone: str, weights=None, random_weights: bool = False):
    """BACKBONE_* -> (model, identity) through attgmae.models.backbones."""
    from attgmae.models import backbones

    loader = {BACKBONE_DINO: backbones.load_dino_vit, BACKBONE_RESNET: backbones.load_resnet50}
    return loader[backbone](weights=weights, random_weights=random_weights)
