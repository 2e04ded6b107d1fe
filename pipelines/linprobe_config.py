"""``attg-eval linprobe``'s configuration: every flag as a field with its default (MAE's
``main_linprobe.py``, the paper's Table 2). Light: the parser reads it without importing torch."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar


@dataclass
class LinprobeConfig:
    checkpoint: str
    data_path: str
    output_dir: str = "output_linprobe"
    model: str | None = None
    num_heads: int | None = None
    force_model: bool = False  # take the heads from --model even if it contradicts
    checkpoint_key: str | None = None  # the entry of a training checkpoint; None: the teacher...
    nb_classes: int | None = None  # MAE's; checked against the class folders of train/
    pool: str = "cls"
    epochs: int = 90
    warmup_epochs: int = 10
    batch_size: int = 512  # micro-batch per step
    eff_batch_size: int = 4096  # gradient accumulated up to this many samples per update
    accum_iter: int | None = None  # default: eff_batch_size / batch_size
    blr: float = 0.1
    lr: float | None = None  # absolute lr; default blr * effective batch / 256
    min_lr: float = 0.0
    weight_decay: float = 0.0
    momentum: float = 0.9
    subset_file: str | None = None  # ImageNet 1% / 10% list: one image name (or key) a line
    shots: int | None = None
    percent: float | None = None
    small_subset: str = "cycle"  # a subset < eff_batch_size: "cycle" (A.8) or "partial"
    seed: int = 0
    cached_features: bool = False
    features_dir: str | None = None  # default: <output_dir>/features
    device: str = "auto"
    precision: str = "auto"
    num_workers: int = 8
    input_size: int = 224
    log_dir: str | None = None  # TensorBoard; None: output_dir/tensorboard (MAE's --log_dir)
    resume: str | None = None
    auto_resume: bool = True
    overwrite: bool = False  # with auto_resume off: delete output_dir's previous checkpoints
    accept_changed: tuple[str, ...] = ()  # settings a resume may change (recorded)
    log_every: int = 50
    trust_checkpoint: bool = False  # the checkpoint may be unpickled in full

    # What defines a probe (attgmae.engine.resume), with what run_linprobe resolves: epochs
    # (which may change), accumulation, lr, precision, the encoder's and subset's digests.
    DEFINES_RUN: ClassVar[tuple[str, ...]] = (
        "model", "num_heads", "force_model", "checkpoint_key", "pool", "warmup_epochs",
        "batch_size", "blr", "min_lr", "weight_decay", "momentum", "small_subset", "seed",
        "cached_features", "input_size",
    )  # fmt: skip (the subset: its digest, however it was chosen)
