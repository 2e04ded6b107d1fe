"""Where a run's process stands: torchrun / SLURM rank, its device, the process group."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.distributed as dist

from attgmae.core.device import rank_device, resolve_device
from attgmae.core.distributed import DistInfo, barrier, cleanup, env_dist_info, init_distributed


@contextmanager
def distributed_session(device_name: str = "auto") -> Iterator[tuple[DistInfo, torch.device]]:
    """(DistInfo, this rank's device) of a process launched by torchrun or SLURM, or alone;
    the process group is joined on entry and left on exit (also after an error). A group that
    already exists (a script running several commands in one torchrun) is used and kept."""
    _, world_size, local_rank = env_dist_info()
    device = rank_device(resolve_device(device_name), local_rank, world_size)
    joined = not dist.is_initialized()
    info = init_distributed(device)
    try:
        yield info, device
        # Leave together: a rank that tears its connections down while another still talks to
        # it can abort that one (gloo). Not after an error: the others may never come.
        barrier(info)
    finally:
        if joined:
            cleanup(info)
