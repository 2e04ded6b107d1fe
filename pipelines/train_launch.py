"""How a training run starts and ends: the world the launcher made, and what it says when it is
done (or out of memory). The output's claim (its lock) is ``attgmae.core.outputs``'s."""

from __future__ import annotations

import shlex
from pathlib import Path

from attgmae.checkpoint import LAST_NAME, epoch_name
from attgmae.core.distributed import launched_world
from attgmae.data.shards import is_shard_source
from attgmae.engine.history import LOG_NAME
from attgmae.pipelines.train_config import TrainConfig


def launch_info(cfg: TrainConfig) -> tuple[int, int]:
    """(world size, local rank) as launched: torchrun's or SLURM's environment, or the official
    flags (``--local_rank``, passed by torch.distributed.launch; ``--world_size``, checked)."""
    return launched_world(cfg.world_size, cfg.local_rank)


def out_of_memory_message(cfg: TrainConfig, device) -> str:
    """What to change after running out of device memory: the same effective batch in smaller
    pieces."""
    half = max(cfg.batch_size // 2, 1)
    if cfg.accum_iter is None:  # the automatic --accum_iter grows to keep the batch of 512
        fix = f"--batch_size {half} (--accum_iter then doubles by itself)"
    else:
        fix = f"--batch_size {half} --accum_iter {cfg.accum_iter * 2}"
    return (
        f"out of memory with --batch_size {cfg.batch_size} on {device}: keep the effective "
        f"batch and use less memory, e.g. {fix}"
    )


def finished_message(cfg: TrainConfig, out_dir) -> str:
    """The last lines of a finished run: its checkpoint and log, and the commands that judge it
    (the paper's k-NN and linear probe; ``--data_path`` must also hold ``val/``; after a run on
    tar shards: IMAGES, the image folder they were packed from)."""
    out_dir = Path(out_dir)
    final = out_dir / epoch_name(cfg.epochs - 1)
    if not final.is_file():  # (pruned, or a run resumed past it)
        final = out_dir / LAST_NAME
    # k-NN and the probe read an image folder with train/ and val/, not the training shards
    data = "IMAGES" if is_shard_source(cfg.data_path) else shlex.quote(str(cfg.data_path))
    checkpoint = shlex.quote(str(final))
    return (
        f"done: {cfg.epochs} epochs; checkpoint {final}, log {out_dir / LOG_NAME}, config "
        f"{out_dir / 'config.json'}\n"
        f"next: attg-eval knn --checkpoint {checkpoint} --data_path {data}\n"
        f"      attg-eval linprobe --checkpoint {checkpoint} --data_path {data}"
    )
