"""``attg-eval finetune``'s configuration: every flag as a field with official MAE's default
(``main_finetune.py``), the presets of published recipes as data, the checks, and the batch
arithmetic (accumulation, the lr it implies)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from attgmae.core.constants import PRECISIONS
from attgmae.core.errors import InputError
from attgmae.core.run_flags import RunFlags

# Published recipes: field -> value, applied before the explicit flags (which win). A value
# BY_MODEL is taken from the pretrained encoder's depth (``by_model``).
BY_MODEL = None
_MAE_FULL = dict(batch_size=32, eff_batch_size=1024, weight_decay=0.05, reprob=0.25, mixup=0.8,
                 cutmix=1.0, warmup_epochs=5)  # fmt: skip
# The paper's Sec. A.6 (low-shot fine-tuning on ImageNet 1% / 10%): 50 epochs, peak lr 1e-3,
# 5 warmup epochs, weight decay 0.05, layer decay 0.75 for ViT-L and 0.65 for ViT-B.
_LOWSHOT = dict(batch_size=32, eff_batch_size=1024, epochs=50, warmup_epochs=5, lr=1e-3,
                weight_decay=0.05, layer_decay=BY_MODEL)  # fmt: skip
_CROP_FLIP = dict(aa="none", reprob=0.0, mixup=0.0, cutmix=0.0)  # A.6's 1% augmentations
_MAE_AUGMENTATIONS = dict(aa="rand-m9-mstd0.5-inc1", reprob=0.25, mixup=0.8, cutmix=1.0)
PRESETS: dict[str, dict] = {
    # MAE, FINETUNE.md "Fine-tuning", ViT-Base: 4 nodes x 8 GPUs x batch 32 = 1024, 100 epochs,
    # --blr 5e-4 --layer_decay 0.65 --weight_decay 0.05 --drop_path 0.1 --reprob 0.25
    # --mixup 0.8 --cutmix 1.0 (the other flags at main_finetune.py's defaults).
    "in1k-vit-b": dict(_MAE_FULL, epochs=100, blr=5e-4, layer_decay=0.65, drop_path=0.1),
    # MAE, FINETUNE.md, ViT-Large: 4 x 8 x 32 = 1024, 50 epochs, --blr 1e-3 --layer_decay 0.75
    # --weight_decay 0.05 --drop_path 0.2 --reprob 0.25 --mixup 0.8 --cutmix 1.0 (MAE: 85.9).
    # The paper's Table 5 ("training settings follow He et al.").
    "in1k-vit-l": dict(_MAE_FULL, epochs=50, blr=1e-3, layer_decay=0.75, drop_path=0.2),
    # MAE, FINETUNE.md, ViT-Huge: 8 nodes x 8 GPUs x batch 16 = 1024, 50 epochs, --blr 1e-3
    # --layer_decay 0.75 --weight_decay 0.05 --drop_path 0.3 --reprob 0.25 --mixup 0.8 --cutmix 1.0.
    "in1k-vit-h": dict(
        _MAE_FULL, batch_size=16, epochs=50, blr=1e-3, layer_decay=0.75, drop_path=0.3
    ),  # fmt: skip
    # Sec. A.6, 1%: crop and flip only (no RandAugment, random erasing, mixup or cutmix).
    "lowshot-1pct": dict(_LOWSHOT, percent=1.0, **_CROP_FLIP),
    # Sec. A.6, 10%: MAE's augmentations (RandAugment, random erasing, mixup, cutmix).
    "lowshot-10pct": dict(_LOWSHOT, percent=10.0, **_MAE_AUGMENTATIONS),
}
# Sec. A.6's other models, each at 1% (crop and flip) and 10% (MAE's augmentations), weight
# decay 0.05, layer decay 0.75 for a ViT-L and 0.65 for a ViT-B: "For the SemMAE ViT-B ... reduce
# the learning rate to 5e-4, increase the epochs to 90"; "For the BEiT ViT-L, we finetune for 50
# epochs with a learning rate of 5e-3"; "For the SimMIM ViT-B, we also use a learning rate of
# 5e-3 and increase the warmup epochs to 20 instead of 5 ... We finetune for 100 epochs".
_A6_MODELS = {
    "semmae": dict(lr=5e-4, epochs=90, layer_decay=0.65),  # SemMAE ViT-B
    "beit": dict(lr=5e-3, epochs=50, layer_decay=0.75),  # BEiT ViT-L
    "simmim": dict(lr=5e-3, epochs=100, warmup_epochs=20, layer_decay=0.65),  # SimMIM ViT-B
}
for _name, _recipe in _A6_MODELS.items():
    PRESETS[f"lowshot-1pct-{_name}"] = dict(PRESETS["lowshot-1pct"], **_recipe)
    PRESETS[f"lowshot-10pct-{_name}"] = dict(PRESETS["lowshot-10pct"], **_recipe)
# A preset's own subset gives way to one named on the command line.
SUBSET_FIELDS = ("subset_file", "percent", "shots")


def by_model(value: float | None, depth: int) -> float:
    """A preset's layer decay for an encoder of ``depth`` blocks when it says BY_MODEL: 0.75 for
    ViT-L and deeper (24+ blocks), 0.65 for ViT-B and smaller (Sec. A.6; MAE's recipes)."""
    if value is not None:
        return value
    return 0.75 if depth >= 24 else 0.65


@dataclass
class FinetuneConfig(RunFlags):
    """Every ``attg-eval finetune`` flag, one to one; defaults are main_finetune.py's."""

    checkpoint: str  # the pretrained weights (MAE's --finetune)
    data_path: str
    output_dir: str = "output_finetune"
    preset: str | None = None  # the recipe applied (recorded; see PRESETS)
    # model (and RunFlags: the checkpoint's architecture flags, the run)
    timm_model: str | None = None  # any timm architecture by name (weights from checkpoint)
    nb_classes: int | None = None  # MAE's; checked against the class folders of train/
    input_size: int = 224
    drop_path: float = 0.1
    global_pool: str = "avg"  # avg (MAE's --global_pool) | token (MAE's --cls_token)
    # optimization
    epochs: int = 50
    warmup_epochs: int = 5
    batch_size: int = 64  # per process
    accum_iter: int | None = None  # None: 1, or what eff_batch_size needs
    eff_batch_size: int | None = None  # batch_size x accum_iter x processes, when given
    blr: float = 1e-3  # lr = blr * effective batch / 256
    lr: float | None = None  # absolute; overrides blr
    min_lr: float = 1e-6
    layer_decay: float | None = 0.75  # None: by the encoder's depth (by_model)
    weight_decay: float = 0.05
    # augmentation
    aa: str | None = "rand-m9-mstd0.5-inc1"  # RandAugment policy; None / "none": off
    color_jitter: float | None = None  # only without RandAugment
    smoothing: float = 0.1
    reprob: float = 0.25
    remode: str = "pixel"
    recount: int = 1
    mixup: float = 0.0
    cutmix: float = 0.0
    cutmix_minmax: list[float] | None = None
    mixup_prob: float = 1.0
    mixup_switch_prob: float = 0.5
    mixup_mode: str = "batch"
    # which training images (default: all)
    subset_file: str | None = None  # ImageNet 1% / 10% list (one file name per line)
    percent: float | None = None  # seeded per-class sampling (attgmae.eval.fewshot)
    shots: int | None = None
    # the run (and RunFlags)
    num_workers: int = field(default=10, kw_only=True)  # MAE's main_finetune.py default
    eval_only: bool = False  # evaluate the checkpoint as it is (MAE's --eval)

    # What defines a fine-tuning run besides the engine's schedule (epochs, lr, batch) and the
    # digests of the pretrained weights and the subset (attgmae.engine.resume).
    DEFINES_RUN: ClassVar[tuple[str, ...]] = RunFlags.DEFINES_RUN + (
        "preset", "timm_model", "input_size", "drop_path", "global_pool", "blr", "layer_decay",
        "weight_decay", "aa", "color_jitter", "smoothing", "reprob", "remode", "recount", "mixup",
        "cutmix", "cutmix_minmax", "mixup_prob", "mixup_switch_prob", "mixup_mode",
    )  # fmt: skip (the subset: its digest, however it was chosen)


def preset_values(preset: str | None, given=()) -> dict:
    """The field values of ``preset`` ({} for None); explicit flags (``given``: their names) go
    over them, a subset named on the command line replaces the preset's, and so does a
    ``--blr`` the preset's absolute ``lr`` (which would otherwise win over it)."""
    if preset is not None and preset not in PRESETS:
        raise InputError(f"--preset {preset!r}: choose one of {', '.join(PRESETS)}")
    values = dict(PRESETS.get(preset, {}))
    if any(name in given for name in SUBSET_FIELDS):
        for name in SUBSET_FIELDS:
            values.pop(name, None)
    if "blr" in given:
        values.pop("lr", None)
    return values


def validate(cfg: FinetuneConfig) -> None:
    """Every inconsistent flag at once, as one InputError (exit code 2)."""
    from attgmae.eval.finetune import MIXUP_MODES  # torch and timm: once a run starts

    problems = []
    if sum(x is not None for x in (cfg.subset_file, cfg.percent, cfg.shots)) > 1:
        problems.append("give at most one of --subset_file, --percent and --shots")
    if cfg.global_pool not in ("avg", "token"):
        problems.append(f"--global_pool must be avg or token, got {cfg.global_pool!r}")
    if cfg.layer_decay is not None and not 0 < cfg.layer_decay <= 1:
        problems.append(f"--layer_decay must be in (0, 1], got {cfg.layer_decay}")
    if cfg.amp not in PRECISIONS:
        problems.append(f"--amp must be one of {', '.join(PRECISIONS)}")
    if cfg.mixup_mode not in MIXUP_MODES:
        problems.append(f"--mixup_mode must be one of {', '.join(MIXUP_MODES)}")
    mixing = cfg.mixup > 0 or cfg.cutmix > 0 or cfg.cutmix_minmax is not None
    if mixing and cfg.batch_size % 2:
        problems.append(f"mixup/cutmix need an even --batch_size, got {cfg.batch_size}")
    if cfg.input_size < 16 or cfg.batch_size < 1 or (cfg.accum_iter or 1) < 1:
        problems.append("--input_size must be >= 16, --batch_size and --accum_iter >= 1")
    if not 0 <= cfg.warmup_epochs <= cfg.epochs or cfg.epochs < 1:
        problems.append(
            f"need 0 <= --warmup_epochs ({cfg.warmup_epochs}) <= --epochs ({cfg.epochs})"
        )
    if problems:
        raise InputError("; ".join(problems))


def batch_arithmetic(cfg: FinetuneConfig, world_size: int) -> tuple[int, int, float]:
    """(accum_iter, effective batch, absolute lr) for ``world_size`` processes: ``--accum_iter``,
    else what ``--eff_batch_size`` needs (it must divide evenly), else 1; the lr is ``--lr``,
    else blr * effective batch / 256 (MAE's linear scaling rule)."""
    per_step = cfg.batch_size * world_size
    accum = cfg.accum_iter
    if cfg.eff_batch_size is not None:
        if cfg.eff_batch_size % per_step or (accum and accum * per_step != cfg.eff_batch_size):
            raise InputError(
                f"--eff_batch_size {cfg.eff_batch_size} is not --batch_size {cfg.batch_size} x "
                f"{world_size} process(es) x a whole --accum_iter"
                + (f" ({accum} given)" if accum else "")
            )
        accum = cfg.eff_batch_size // per_step
    accum = accum or 1
    eff_batch = per_step * accum
    lr = cfg.lr if cfg.lr is not None else cfg.blr * eff_batch / 256
    return accum, eff_batch, lr
