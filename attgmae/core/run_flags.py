"""The flags every supervised command (``attg-eval finetune``, ``segment``, ``taskonomy``) shares,
as config fields with their defaults.

Here, not in ``attgmae.engine`` (whose package imports torch), so that the command-line parsers
read these defaults without importing torch; ``attgmae.engine.config.run_config_from`` passes
them on to a run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar


@dataclass(kw_only=True)
class RunFlags:
    """The flags every supervised command (finetune, segment, taskonomy) has for loading the
    pretrained encoder and for its run; a command's config adds its own fields to these."""

    # the encoder's checkpoint (attgmae.models.encoder reads any accepted format)
    model: str | None = None  # architecture name when the checkpoint does not record it
    num_heads: int | None = None
    force_model: bool = False  # take the heads from --model even if it contradicts
    checkpoint_key: str | None = None  # the entry of a training checkpoint; None: the teacher...
    trust_checkpoint: bool = False
    clip_grad: float | None = None
    # the run
    seed: int = 0
    device: str = "auto"
    amp: str = "auto"  # auto (bf16 on CUDA, fp32 on CPU) | bf16 | fp32
    num_workers: int = 8
    pin_mem: bool = True
    compile: bool = False
    log_dir: str | None = None  # TensorBoard; None: output_dir/tensorboard (MAE's --log_dir)
    resume: str | None = None
    auto_resume: bool = True
    overwrite: bool = False  # a fresh start may delete OUTPUT_DIR's previous checkpoints
    accept_changed: tuple[str, ...] = ()  # settings a resume may change (recorded)
    save_every: int = 20
    ckpt_every_steps: int = 0
    print_freq: int = 20
    stop_after_iters: int = 0

    # The fields above that define a run (attgmae.engine.resume): a resume with other values
    # is refused. The run's schedule (epochs, lr, batch, ...) is the engine's (``engine_settings``).
    # (seed, clip_grad and the precision actually used are among the engine's.)
    DEFINES_RUN: ClassVar[tuple[str, ...]] = ("model", "num_heads", "force_model", "checkpoint_key")
