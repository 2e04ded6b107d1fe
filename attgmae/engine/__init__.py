"""attgmae.engine: the supervised run machinery shared by fine-tuning and the dense tasks.

- ``seeding``: every random draw of a sample from ``(seed, epoch, index)`` (``SeededSamples``,
  with ``EpochSampler``'s ``(index, epoch)`` items), so resumed and multi-process runs draw the
  same samples;
- ``config``: ``RunConfig``, the run's settings, their checks, the lr schedule
  (``scheduled_lr``) and when to evaluate (``evaluation_due``);
- ``history``: ``log.txt``, one JSON line per epoch across resumes;
- ``run``: ``SupervisedRun`` (DDP, bf16, accumulation, per-iteration lr with ``lr_scale``,
  checkpoints, exact resume, save-and-leave on SIGTERM / SIGUSR1); ``launch``:
  ``distributed_session`` (torchrun / SLURM set-up);
- ``resume``: the one resume rule of every command (attg-train and the linear probe too): which
  checkpoint, never skipping one refused for trust, refusing one of other settings
  (``check_settings``), no silent fresh start over a previous run.

A library: no command-line parsing; errors are ``InputError`` (bad input) or ``RunFailed``.
"""

from attgmae.engine.config import (
    RunConfig,
    evaluation_due,
    run_config_from,
    scheduled_lr,
    validate_run,
)
from attgmae.engine.history import EpochLog
from attgmae.engine.launch import distributed_session
from attgmae.engine.run import RunFailed, Step, SupervisedRun, to_device
from attgmae.engine.seeding import EpochSampler, SeededSamples, seed_everything, stable_seed

__all__ = [
    "EpochLog",
    "EpochSampler",
    "RunConfig",
    "run_config_from",
    "RunFailed",
    "SeededSamples",
    "Step",
    "SupervisedRun",
    "distributed_session",
    "evaluation_due",
    "scheduled_lr",
    "seed_everything",
    "stable_seed",
    "to_device",
    "validate_run",
]
