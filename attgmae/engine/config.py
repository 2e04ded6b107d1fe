"""What a supervised run needs to know, one field per setting, and its checks."""

from __future__ import annotations

from dataclasses import dataclass

from attgmae.core.constants import PRECISIONS
from attgmae.core.errors import InputError
from attgmae.optim import lr_at


@dataclass
class RunConfig:
    """The settings of ``SupervisedRun``; a pipeline fills it from its own config."""

    epochs: int
    lr: float  # peak (absolute) lr, reached after the warmup; groups scale it by ``lr_scale``
    output_dir: str | None = None  # None: no checkpoints, no log.txt (tests, benchmarks)
    warmup_epochs: float = 0.0  # linear warmup from warmup_lr, then half-cycle cosine to min_lr
    min_lr: float = 0.0
    warmup_lr: float = 0.0  # the lr at step 0 of the warmup (MultiMAE's warmup_lr); 0: MAE's
    batch_size: int = 64  # per process and micro-batch
    accum_iter: int = 1  # micro-batches per optimizer step
    betas: tuple[float, float] = (0.9, 0.999)  # AdamW
    amp: str = "auto"  # auto (bf16 autocast on CUDA, fp32 elsewhere) | bf16 | fp32
    clip_grad: float | None = None  # max gradient norm; None: no clipping
    seed: int = 0
    num_workers: int = 8
    pin_mem: bool = True
    compile: bool = False  # torch.compile the model for training
    save_every: int = 20  # also keep checkpoint-N.pth every N epochs (and after the last)
    ckpt_every_steps: int = 0  # also write checkpoint-last.pth every N iterations (mid-epoch)
    print_freq: int = 20  # iterations between progress lines
    eval_every: int = 1  # evaluate after epochs 0, N, 2N, ... and the last (MultiMAE's eval_freq)
    log_dir: str | None = None  # TensorBoard events; None: output_dir/tensorboard
    resume: str | None = None  # a checkpoint to continue from
    auto_resume: bool = True  # continue from output_dir's newest readable checkpoint
    overwrite: bool = False  # a fresh start may delete output_dir's previous checkpoints
    accept_changed: tuple[str, ...] = ()  # settings a resume may change (recorded in history)
    trust_checkpoint: bool = False  # the resumed checkpoint may be unpickled in full
    stop_after_iters: int = 0  # leave (as a killed run would) after N iterations; for tests


# The settings a command's config passes to the run unchanged (same names in both).
PASSED_THROUGH = ("amp", "clip_grad", "seed", "num_workers", "pin_mem", "compile", "save_every",
                  "ckpt_every_steps", "print_freq", "log_dir", "resume", "auto_resume",
                  "overwrite", "accept_changed", "trust_checkpoint",
                  "stop_after_iters")  # fmt: skip


def run_config_from(cfg, **schedule) -> RunConfig:
    """A RunConfig from a command's config (``PASSED_THROUGH`` taken from it) and ``schedule``:
    the fields the command resolves itself (epochs, lr, batch, warmup, ...)."""
    return RunConfig(**{name: getattr(cfg, name) for name in PASSED_THROUGH}, **schedule)


def engine_settings(cfg: RunConfig, world_size: int, amp: str) -> dict:
    """What defines a run among the engine's settings (attgmae.engine.resume): the schedule, the
    batch (per process, accumulated, effective over ``world_size`` processes), the optimizer's
    betas, clipping, the seed and the precision actually used (``amp``)."""
    return {
        "epochs": cfg.epochs,
        "lr": cfg.lr,
        "warmup_epochs": cfg.warmup_epochs,
        "min_lr": cfg.min_lr,
        "warmup_lr": cfg.warmup_lr,
        "batch_size": cfg.batch_size,
        "accum_iter": cfg.accum_iter,
        "eff_batch_size": cfg.batch_size * cfg.accum_iter * world_size,
        "betas": list(cfg.betas),
        "clip_grad": cfg.clip_grad,
        "seed": cfg.seed,
        "amp": amp,
    }


def validate_run(cfg: RunConfig) -> None:
    """Every inconsistent setting at once, as one InputError (exit code 2)."""
    problems = []
    if cfg.epochs < 1:
        problems.append(f"epochs must be >= 1, got {cfg.epochs}")
    if not 0 <= cfg.warmup_epochs <= cfg.epochs:
        problems.append(f"warmup_epochs {cfg.warmup_epochs} must lie in [0, epochs {cfg.epochs}]")
    if cfg.lr <= 0 or cfg.min_lr < 0 or cfg.warmup_lr < 0:
        problems.append(
            f"lr must be > 0, min_lr and warmup_lr >= 0, got {cfg.lr}, {cfg.min_lr} and "
            f"{cfg.warmup_lr}"
        )
    if cfg.batch_size < 1 or cfg.accum_iter < 1:
        problems.append("batch_size and accum_iter must be >= 1")
    if cfg.amp not in PRECISIONS:
        problems.append(f"amp must be one of {', '.join(PRECISIONS)}, got {cfg.amp!r}")
    if cfg.clip_grad is not None and cfg.clip_grad <= 0:
        problems.append(f"clip_grad must be > 0 (or unset), got {cfg.clip_grad}")
    if cfg.save_every < 1 or cfg.print_freq < 1 or cfg.eval_every < 1:
        problems.append("save_every, print_freq and eval_every must be >= 1")
    if cfg.ckpt_every_steps < 0 or cfg.stop_after_iters < 0 or cfg.num_workers < 0:
        problems.append("ckpt_every_steps, stop_after_iters and num_workers must be >= 0")
    if problems:
        raise InputError("; ".join(problems))


def scheduled_lr(cfg: RunConfig, epoch_float: float) -> float:
    """The lr at ``epoch_float`` (epoch + iteration / iterations per epoch): linear from
    ``warmup_lr`` to ``lr`` over ``warmup_epochs``, then half-cycle cosine to ``min_lr``
    (``attgmae.optim.lr_at``, MAE's schedule, which it is exactly when ``warmup_lr`` is 0)."""
    if cfg.warmup_lr and epoch_float < cfg.warmup_epochs:
        return cfg.warmup_lr + (cfg.lr - cfg.warmup_lr) * epoch_float / cfg.warmup_epochs
    return lr_at(epoch_float, cfg.lr, cfg.min_lr, cfg.warmup_epochs, cfg.epochs)


def evaluation_due(cfg: RunConfig, epoch: int) -> bool:
    """Whether ``epoch`` ends with an evaluation: every ``eval_every`` epochs from the first,
    and the last (MultiMAE's ``epoch % eval_freq == 0 or epoch == epochs - 1``)."""
    return epoch % cfg.eval_every == 0 or epoch + 1 == cfg.epochs
