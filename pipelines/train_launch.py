"""How a training run starts: the world the launcher made, and the lock on its output."""

from __future__ import annotations

import contextlib

from attgmae.core.distributed import DistInfo, launched_world, max_across_ranks
from attgmae.core.errors import InputError
from attgmae.core.lock import OutputLock
from attgmae.pipelines.train_config import TrainConfig


@contextlib.contextmanager
def locked_output(cfg: TrainConfig, info: DistInfo):
    """Rank 0 holds ``--output_dir``'s lock for the run: two runs never write one folder."""
    lock, error = None, None
    if info.is_main and cfg.output_dir:
        try:
            lock = OutputLock(cfg.output_dir, "--output_dir", inside=True).acquire()
        except InputError as err:
            error = err
    try:
        if max_across_ranks(int(error is not None), info):
            raise error or InputError("rank 0 could not lock --output_dir")
        yield
    finally:
        if lock is not None:
            lock.release()


def launch_info(cfg: TrainConfig) -> tuple[int, int]:
    """(world size, local rank) as launched: torchrun's or SLURM's environment, or the official
    flags (``--local_rank``, passed by torch.distributed.launch; ``--world_size``, checked)."""
    return launched_world(cfg.world_size, cfg.local_rank)
