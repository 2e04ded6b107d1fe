"""How a training run starts: the world the launcher made."""

from __future__ import annotations

import os

from attgmae.core.distributed import env_dist_info
from attgmae.core.errors import InputError
from attgmae.pipelines.train_config import TrainConfig


def launch_info(cfg: TrainConfig) -> tuple[int, int]:
    """(world size, local rank) as launched: torchrun's or SLURM's environment, or the official
    flags (``--local_rank``, passed by torch.distributed.launch; ``--world_size``, checked)."""
    if cfg.local_rank is not None and cfg.local_rank >= 0:
        os.environ.setdefault("LOCAL_RANK", str(cfg.local_rank))
    _, world_size, local_rank = env_dist_info()
    if cfg.world_size is not None and cfg.world_size != world_size:
        raise InputError(
            f"--world_size {cfg.world_size}, but {world_size} process(es) were launched: drop "
            "the flag (torchrun or SLURM set the world size) or launch that many"
        )
    return world_size, local_rank
