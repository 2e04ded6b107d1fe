"""``attg-eval segment``'s configuration: every flag as a field, and its checks.

A field left at None takes the dataset's recipe (``attgmae.data.dense_recipes``: the paper's
Table 6 for epochs, batch, lr and warmup; MultiMAE's configs for the rest), so the defaults of a
``--dataset ade20k`` run are the paper's protocol; a flag given overrides its field.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import ClassVar

from attgmae.core.errors import InputError
from attgmae.core.run_flags import RunFlags
from attgmae.data.dense_recipes import DenseRecipe, flag_problems

INFERENCE_MODES = ("whole", "slide")
# Config fields whose None means "the recipe's value" (segment and taskonomy alike).
RECIPE_FIELDS = frozenset({f.name for f in fields(DenseRecipe)} | {"eff_batch_size"})


@dataclass
class SegmentConfig(RunFlags):
    """Every ``attg-eval segment`` flag, one to one."""

    checkpoint: str  # the pretrained encoder (any format attgmae.models.encoder reads)
    data_path: str
    dataset: str = "ade20k"  # ade20k | nyuv2 | folder
    output_dir: str = "output_segment"
    num_classes: int | None = None  # folder: when the root has no classes.txt
    reduce_zero_label: bool = False  # folder: label 0 ignored, 1..C -> 0..C-1
    # model (and RunFlags: the checkpoint's architecture flags, the run)
    input_size: int | None = None  # recipe: 512 ADE20k / folder, 640 NYUv2
    drop_path: float | None = None  # recipe: 0.1
    head_dim: int = 6144  # ConvNeXt head: linear width per token (MultiMAE decoder_dim)
    head_preds_per_patch: int = 16  # MultiMAE decoder_preds_per_patch (a 4 x 4 patch a token)
    head_depth: int = 4  # ConvNeXt blocks (MultiMAE decoder_depth)
    # optimization (None: the recipe's)
    epochs: int | None = None
    warmup_epochs: int | None = None
    batch_size: int | None = None  # per process; default: the effective batch / processes
    accum_iter: int | None = None
    eff_batch_size: int | None = None  # recipe: 16 (Table 6)
    lr: float | None = None  # absolute peak lr; recipe: 3e-4
    warmup_lr: float | None = None  # lr at the start of the warmup; recipe: 1e-6
    min_lr: float | None = None
    weight_decay: float | None = None
    layer_decay: float | None = None
    # evaluation
    inference: str | None = None  # whole (recipe) | slide
    slide_stride: int | None = None  # slide: window step (default 2/3 of input_size)
    eval_every: int | None = None  # recipe: 1 ADE20k / folder, 20 NYUv2
    num_vis: int = 4  # validation images in segment_samples.png

    # What defines a segmentation run besides the engine's schedule, the resolved recipe
    # (``dense_setup.recipe_settings``) and the pretrained weights (attgmae.engine.resume).
    DEFINES_RUN: ClassVar[tuple[str, ...]] = RunFlags.DEFINES_RUN + (
        "dataset", "reduce_zero_label", "head_dim", "head_preds_per_patch", "head_depth",
    )  # fmt: skip


def validate(cfg: SegmentConfig) -> None:
    """Every inconsistent flag at once, as one InputError (exit code 2)."""
    from attgmae.data.dense_datasets import SEGMENTATION_DATASETS  # torch: once a run starts

    problems = flag_problems(cfg)
    if cfg.dataset not in SEGMENTATION_DATASETS:
        problems.append(f"--dataset must be one of {', '.join(SEGMENTATION_DATASETS)}")
    if cfg.inference is not None and cfg.inference not in INFERENCE_MODES:
        problems.append(f"--inference must be whole or slide, got {cfg.inference!r}")
    if cfg.slide_stride is not None and cfg.slide_stride < 1:
        problems.append(f"--slide_stride must be >= 1, got {cfg.slide_stride}")
    if cfg.num_classes is not None and not 1 <= cfg.num_classes < 255:
        problems.append(f"--num_classes must be in 1..254, got {cfg.num_classes}")
    if problems:
        raise InputError("; ".join(problems))
