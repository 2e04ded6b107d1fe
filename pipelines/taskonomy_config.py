"""``attg-eval taskonomy``'s configuration: every flag as a field, and its checks.

A field left at None takes the Taskonomy recipe (``attgmae.data.dense_recipes``: the paper's
Table 7 for epochs, batch, lr and warmup; MultiMAE's configs for the rest); a flag given
overrides its field.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from attgmae.core.errors import InputError
from attgmae.core.run_flags import RunFlags
from attgmae.data.dense_recipes import flag_problems

# Table 3's tasks, in its order (the words --tasks takes; see dense_taskonomy.TASK_ALIASES).
PAPER_TASKS = ("depth", "edges", "keypoints2d", "keypoints3d", "occlusion")


@dataclass
class TaskonomyConfig(RunFlags):
    """Every ``attg-eval taskonomy`` flag, one to one (``checkpoint``: the one this run uses;
    several are run one after the other by ``run_taskonomy_compare``)."""

    checkpoint: str
    data_path: str
    tasks: list[str] = field(default_factory=lambda: list(PAPER_TASKS))
    output_dir: str = "output_taskonomy"
    # model (and RunFlags: the checkpoint's architecture flags, the run)
    input_size: int | None = None  # recipe: 384
    drop_path: float | None = None  # recipe: 0.1
    dpt_feature_dim: int = 256  # MultiMAE DPTOutputAdapter feature_dim
    dpt_layer_dims: list[int] = field(default_factory=lambda: [96, 192, 384, 768])
    block_indices: list[int] | None = None  # default: the ends of each quarter (2 5 8 11 ViT-B)
    # optimization (None: the recipe's)
    epochs: int | None = None
    warmup_epochs: int | None = None
    batch_size: int | None = None  # per process; default: the effective batch / processes
    accum_iter: int | None = None
    eff_batch_size: int | None = None  # recipe: 8 (Table 7)
    lr: float | None = None  # recipe: 3e-4
    warmup_lr: float | None = None  # recipe: 1e-6
    min_lr: float | None = None
    weight_decay: float | None = None
    layer_decay: float | None = None
    # data and evaluation
    max_train_images: int | None = None  # recipe: 800
    max_val_images: int | None = None  # recipe: 200
    max_test_images: int | None = None  # None: every test image (MultiMAE: all 54,514)
    eval_every: int | None = None  # recipe: 5
    num_vis: int = 4  # test images in each task's <task>_samples.png

    # What defines a task's run besides the engine's schedule, the resolved recipe
    # (``dense_setup.recipe_settings``), the task and the pretrained weights.
    DEFINES_RUN: ClassVar[tuple[str, ...]] = RunFlags.DEFINES_RUN + (
        "dpt_feature_dim", "dpt_layer_dims", "block_indices",
    )  # fmt: skip


def validate(cfg: TaskonomyConfig) -> None:
    """Every inconsistent flag at once, as one InputError (exit code 2)."""
    from attgmae.data.dense_taskonomy import resolve_tasks  # torch: once a run starts

    problems = flag_problems(cfg)
    try:
        folders = resolve_tasks(cfg.tasks)
        if len(set(folders)) != len(folders):
            problems.append(f"--tasks names a task twice: {' '.join(cfg.tasks)}")
    except InputError as err:
        problems.append(str(err))
    for name in ("max_train_images", "max_val_images", "max_test_images"):
        value = getattr(cfg, name)
        if value is not None and value < 1:
            problems.append(f"--{name} must be >= 1 (leave it out for every image)")
    if len(cfg.dpt_layer_dims) != 4 or (cfg.block_indices and len(cfg.block_indices) != 4):
        problems.append("--dpt_layer_dims and --block_indices take four numbers each")
    if problems:
        raise InputError("; ".join(problems))
