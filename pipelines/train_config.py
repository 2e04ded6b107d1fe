"""``attg-train``'s configuration: every flag as a field with the paper's default, its checks,
and the values derived from it (precision, gradient accumulation).

Light on purpose: ``attg-train --help`` builds its parser from ``TrainConfig`` without importing
torch; the checks import the heavy modules they need when a run starts
(tests/test_cli_startup.py holds this).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from attgmae.core.constants import DEFAULT_TIMEOUT_MIN, TAU_CONSTANT, TAU_END, TAU_START
from attgmae.core.errors import InputError

if TYPE_CHECKING:
    import torch

    from attgmae.guidance import TauSchedule

AMP_MODES = ("auto", "bf16", "fp16", "none")
TAU_SCHEDULES = ("cosine", "constant")
PAPER_EFFECTIVE_BATCH = 512  # the paper's (supplementary Table 1)


@dataclass
class TrainConfig:
    """Every ``attg-train`` flag, one to one. Defaults are the paper's recipe."""

    data_path: str
    output_dir: str = "./output_dir"
    log_dir: str | None = None  # TensorBoard; None = output_dir
    model: str = "mae_vit_large_patch16"
    input_size: int = 224
    batch_size: int = 64  # per process
    accum_iter: int | None = None  # None: enough to reach the paper's effective batch of 512
    epochs: int = 800
    warmup_epochs: int = 40
    blr: float = 1.5e-4
    lr: float | None = None  # absolute; None = blr * effective batch / 256
    min_lr: float = 0.0
    weight_decay: float = 0.05
    mask_ratio: float = 0.75
    norm_pix_loss: bool = True
    guidance: str = "store"
    maps: str | None = None
    tau: float | None = None  # the cosine's start (1.0) or the constant (0.75) when None
    tau_end: float | None = TAU_END  # the cosine's end (ignored when constant)
    tau_schedule: str = "cosine"  # "cosine" (the paper's main models) | "constant" (Sec. G)
    gamma: float = 1.0
    missing_maps: str = "error"
    changed_images: str = "error"  # images replaced since their maps: error | uniform | accept
    aug: str = "rrc"
    resume: str = ""
    trust_checkpoint: bool = False  # --resume may be unpickled in full
    auto_resume: bool = True  # continue from output_dir's checkpoints (attgmae.engine.resume)
    overwrite: bool = False  # with auto_resume off: delete output_dir's previous checkpoints
    accept_changed: tuple[str, ...] = ()  # settings a resume may change (recorded in history)
    start_epoch: int = 0
    num_workers: int = 10
    pin_mem: bool = True
    seed: int = 0
    device: str = "auto"  # CUDA when available, as every other command
    amp: str = "auto"
    compile: bool = False
    dist_url: str = "env://"
    dist_timeout_min: float = DEFAULT_TIMEOUT_MIN  # collectives wait this long for rank 0
    world_size: int | None = None  # checked against the launcher's, when given (official flag)
    local_rank: int | None = None  # from torch.distributed.launch's --local_rank, when given
    save_every: int = 20
    keep_checkpoints: int = 0  # keep only the newest N checkpoint-{epoch}.pth (0: all)
    ckpt_every_min: float = 30.0
    ckpt_every_steps: int = 0
    stop_after_iters: int = 0
    print_freq: int = 20
    vis_every: int = 0
    vis_count: int = 4
    knn_every: int = 0
    knn_data: str | None = None
    skip_bad_images: bool = False
    table_dir: str | None = None  # the node's joined table: None = beside the store, else /tmp
    shuffle_buffer: int = 1000  # tar shards: samples in each loader worker's shuffle buffer

    # The flags that define a run (everything that changes its result): a resume with other
    # values is refused (attgmae.engine.resume). ``run_settings`` adds what is resolved from
    # them and the inputs (epochs, which may change, accumulation, lr, tau, precision, the
    # images and the maps); output paths, workers, logging, device and checkpoint cadence
    # are not among them.
    DEFINES_RUN: ClassVar[tuple[str, ...]] = (
        "model", "input_size", "batch_size", "warmup_epochs", "blr", "min_lr", "weight_decay",
        "mask_ratio", "norm_pix_loss", "guidance", "tau_schedule", "gamma", "missing_maps",
        "changed_images", "aug", "seed",
    )  # fmt: skip


def validate(cfg: TrainConfig) -> None:
    """Reject inconsistent flags before any work (exit code 2)."""
    from attgmae.data.pretrain_dataset import CHANGED_POLICIES, GUIDANCE_MODES, MISSING_POLICIES
    from attgmae.data.transforms import AUGMENTATIONS
    from attgmae.models import MODEL_FACTORIES

    problems = []
    if cfg.model not in MODEL_FACTORIES:
        problems.append(f"--model {cfg.model!r} is not one of {', '.join(MODEL_FACTORIES)}")
    if cfg.guidance not in GUIDANCE_MODES:
        problems.append(f"--guidance must be one of {GUIDANCE_MODES}")
    if cfg.guidance == "store" and not cfg.maps:
        problems.append("--guidance store needs --maps STORE (or --guidance none for vanilla MAE)")
    if cfg.missing_maps not in MISSING_POLICIES:
        problems.append(f"--missing_maps must be one of {MISSING_POLICIES}")
    if cfg.changed_images not in CHANGED_POLICIES:
        problems.append(f"--changed_images must be one of {CHANGED_POLICIES}")
    if cfg.aug not in AUGMENTATIONS:
        problems.append(f"--aug must be one of {AUGMENTATIONS}")
    if cfg.amp not in AMP_MODES:
        problems.append(f"--amp must be one of {AMP_MODES}")
    if (cfg.tau is not None and cfg.tau <= 0) or (cfg.tau_end is not None and cfg.tau_end <= 0):
        problems.append("--tau and --tau_end must be > 0")
    if cfg.tau_schedule not in TAU_SCHEDULES:
        problems.append(f"--tau_schedule must be one of {TAU_SCHEDULES}")
    elif cfg.tau_schedule == "cosine" and cfg.tau_end is None:
        problems.append("--tau_schedule cosine needs --tau_end (or --tau_schedule constant)")
    if not cfg.gamma > 0:  # 0 trains on a zero loss, a negative gamma climbs it
        problems.append(f"--gamma must be > 0 (the weight of a background patch), got {cfg.gamma}")
    if not 0.0 < cfg.mask_ratio < 1.0:  # 0 masks nothing: the loss would be 0 / 0
        problems.append("--mask_ratio must be in (0, 1)")
    if cfg.batch_size < 1 or (cfg.accum_iter is not None and cfg.accum_iter < 1):
        problems.append("--batch_size and --accum_iter must be >= 1")
    if cfg.epochs < 1 or cfg.warmup_epochs < 0:
        problems.append("--epochs must be >= 1 and --warmup_epochs >= 0")
    if cfg.dist_url != "env://":
        problems.append("--dist_url: only env:// (torchrun or SLURM set the rendezvous)")
    if cfg.knn_every and not cfg.knn_data:
        problems.append("--knn_every needs --knn_data ROOT (with train/ and val/)")
    if cfg.save_every < 1 or cfg.print_freq < 1 or cfg.vis_count < 1:
        problems.append("--save_every, --print_freq and --vis_count must be >= 1")
    if cfg.shuffle_buffer < 1:
        problems.append("--shuffle_buffer must be >= 1 (1: the shards' own order)")
    if cfg.keep_checkpoints < 0:
        problems.append("--keep_checkpoints must be >= 0 (0 keeps every checkpoint)")
    if problems:
        raise InputError("; ".join(problems))


def resolve_amp(amp: str, device: torch.device) -> str:
    """'auto' -> bf16 autocast on CUDA, fp32 ('none') on CPU."""
    from attgmae.core.device import resolve_precision

    if amp == "auto":
        return "bf16" if resolve_precision("auto", device) == "bf16" else "none"
    return amp


def resolve_accum(accum_iter: int | None, batch_size: int, world_size: int, iters: int) -> int:
    """Explicit ``--accum_iter``, or the smallest that reaches the paper's effective batch (512),
    capped at the iterations of one epoch (tiny data sets)."""
    if accum_iter is not None:
        return accum_iter
    needed = -(-PAPER_EFFECTIVE_BATCH // (batch_size * world_size))
    return max(1, min(needed, iters))


def check_model_fit(cfg: TrainConfig, patch_size: int) -> None:
    """The input size and mask ratio must make sense for the model's patches: at least one
    visible patch (the encoder's input) and one masked (the loss's)."""
    if cfg.input_size < patch_size or cfg.input_size % patch_size:
        raise InputError(
            f"--input_size {cfg.input_size} is not a multiple of {cfg.model}'s patch size "
            f"{patch_size}: use e.g. {max(round(cfg.input_size / patch_size), 1) * patch_size}"
        )
    num_patches = (cfg.input_size // patch_size) ** 2
    visible = int(num_patches * (1 - cfg.mask_ratio))  # as MAE's random_masking keeps them
    if not 1 <= visible <= num_patches - 1:
        raise InputError(
            f"--mask_ratio {cfg.mask_ratio} leaves {visible} of {num_patches} patches visible: "
            "at least one must be visible and one masked"
        )


def divergence_advice(cfg: TrainConfig, tau: float) -> str:
    """What to change after a non-finite loss: the guidance weights first when they are huge."""
    if cfg.guidance != "none":
        top_weight = cfg.gamma * math.exp(min(1.0 / tau, 700.0))
        if top_weight > 1e3:
            return (
                f"The guidance weights reach gamma * exp(1 / tau) = {top_weight:.3g} (tau "
                f"{tau:.3g}, gamma {cfg.gamma:g}) on the most attended patches: raise --tau "
                "(the paper uses 0.5-1.0) or lower --gamma."
            )
    return "Lower --blr, prefer --amp bf16 over fp16, or check the inputs."


def run_settings(cfg: TrainConfig, data, amp: str, schedule: TauSchedule) -> dict:
    """The settings that define this run, as its checkpoints record them: ``DEFINES_RUN`` and
    the values resolved from them (``data``: the run's TrainData)."""
    from attgmae.engine.resume import config_settings  # (checkpoint reading: torch)

    return config_settings(
        cfg,
        epochs=cfg.epochs,
        accum_iter=data.accum_iter,
        eff_batch_size=data.eff_batch_size,
        lr=data.base_lr,
        tau=schedule.start,
        tau_end=schedule.end,
        amp=amp,
        images=data.identity["images"],
        maps=data.identity["maps"],
        streams=data.identity.get("streams"),  # (tar shards only)
    )


def schedule_note(cfg: TrainConfig, schedule: TauSchedule) -> str:
    """What the schedules become at ``cfg.epochs`` (said when a resume changes --epochs)."""
    tau = "" if schedule.end is None or cfg.guidance == "none" else " and the tau cosine"
    return f"the lr cosine{tau} now end{'' if tau else 's'} at epoch {cfg.epochs}"


def diverged_message(cfg: TrainConfig, loss_value, epoch: int, first: int, last: int, lr: float,
                     tau: float, kept) -> str:  # fmt: skip
    """A non-finite loss in iterations ``first``-``last``: where, what is kept, what to change."""
    where = f"iteration {last}" if first == last else f"iterations {first}-{last}"
    return (
        f"loss is {loss_value} at epoch {epoch}, {where} (lr {lr:.3g}): stopping. "
        f"The last good checkpoint is kept: {kept}. {divergence_advice(cfg, tau)} "
        f"--resume from that checkpoint to continue."
    )


def tau_schedule(cfg: TrainConfig) -> TauSchedule:
    """The run's temperature: the cosine spans the whole run, warmup included."""
    from attgmae.guidance import TauSchedule

    if cfg.tau_schedule == "constant":
        return TauSchedule(TAU_CONSTANT if cfg.tau is None else cfg.tau)
    return TauSchedule(TAU_START if cfg.tau is None else cfg.tau, cfg.tau_end, 0.0, cfg.epochs)
