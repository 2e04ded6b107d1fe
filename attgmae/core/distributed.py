"""Process-group set-up for scale-out runs (torchrun or SLURM), and the few collectives we use.

A run is distributed when torchrun's ``WORLD_SIZE`` (or SLURM's ``SLURM_NTASKS`` under ``srun``)
is above 1. gloo on CPU, nccl on CUDA. One process (world size 1) never touches
``torch.distributed``, so a plain run needs no rendezvous.
"""

from __future__ import annotations

import datetime
import gc
import os
import re
from dataclasses import dataclass

import torch
import torch.distributed as dist

from attgmae.core.constants import DEFAULT_TIMEOUT_MIN
from attgmae.core.device import use_device
from attgmae.core.errors import InputError


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands in the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None  # None when not distributed

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _first_slurm_host(nodelist: str) -> str:
    """First host of a SLURM node list: 'gpu[03-05,07],cpu1' -> 'gpu03'."""
    match = re.match(r"([^,\[]+)(?:\[([^\]]+)\])?", nodelist.strip())
    if match is None:
        return nodelist
    prefix, ranges = match.group(1), match.group(2)
    if ranges is None:
        return prefix
    first = ranges.split(",", 1)[0].split("-", 1)[0]
    return prefix + first


def env_dist_info() -> tuple[int, int, int]:
    """(rank, world_size, local_rank) from torchrun's env vars, else SLURM's, else (0, 1, 0).

    Under SLURM this also fills MASTER_ADDR / MASTER_PORT when missing, so that
    ``srun python -m attgmae.cli.maps generate ...`` needs no wrapper script.
    """
    env = os.environ
    if "WORLD_SIZE" in env and "RANK" in env:
        return int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", 0))
    if "SLURM_PROCID" in env and int(env.get("SLURM_NTASKS", "1")) > 1:
        rank, world = int(env["SLURM_PROCID"]), int(env["SLURM_NTASKS"])
        local_rank = int(env.get("SLURM_LOCALID", 0))
        nodelist = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST", "127.0.0.1")
        env.setdefault("MASTER_ADDR", _first_slurm_host(nodelist))
        # Derive the port from the job id so two jobs on one node do not collide.
        env.setdefault("MASTER_PORT", str(20000 + int(env.get("SLURM_JOB_ID", "0")) % 20000))
        env.setdefault("RANK", str(rank))
        env.setdefault("WORLD_SIZE", str(world))
        env.setdefault("LOCAL_RANK", str(local_rank))
        return rank, world, local_rank
    return 0, 1, 0


def launched_world(world_size: int | None = None, local_rank: int | None = None) -> tuple[int, int]:
    """(world size, local rank) as launched (``env_dist_info``), with the official scripts'
    flags taken as MAE takes them under a launcher: ``local_rank`` (torch.distributed.launch
    passes ``--local_rank``) fills LOCAL_RANK when unset; ``world_size``, when given, must be
    the number of processes launched (InputError otherwise)."""
    if local_rank is not None and local_rank >= 0:
        os.environ.setdefault("LOCAL_RANK", str(local_rank))
    _, launched, local = env_dist_info()
    if world_size is not None and world_size != launched:
        raise InputError(
            f"--world_size {world_size}, but {launched} process(es) were launched: drop "
            "the flag (torchrun or SLURM set the world size) or launch that many"
        )
    return launched, local


def init_distributed(device: torch.device, timeout_min: float = DEFAULT_TIMEOUT_MIN) -> DistInfo:
    """Make ``device`` this process's CUDA device and, when launched with several ranks, join
    the process group; returns this rank's DistInfo.

    ``device`` is this rank's device (``rank_device``): gloo on the CPU, nccl on CUDA. Setting
    the current CUDA device in a single process too keeps pinned-memory threads and
    synchronizations on that GPU instead of creating a context on GPU 0. ``timeout_min``: how
    long a collective may wait for the slowest rank (rank 0 alone finalizes stores, runs the
    k-NN monitor and writes figures while the others wait at a barrier).
    """
    use_device(device)
    rank, world_size, local_rank = env_dist_info()
    if world_size <= 1:
        return DistInfo()
    backend = "nccl" if device.type == "cuda" else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(
            backend=backend,
            rank=rank,
            world_size=world_size,
            timeout=datetime.timedelta(minutes=timeout_min),
        )
    return DistInfo(rank=rank, world_size=world_size, local_rank=local_rank, backend=backend)


def _collective_device(info: DistInfo) -> torch.device:
    if info.backend == "nccl":  # tensors on this rank's CUDA device (set by init_distributed)
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def barrier(info: DistInfo) -> None:
    if info.distributed:
        dist.barrier()


def sum_across_ranks(values: list[float], info: DistInfo) -> list[float]:
    """Element-wise sum of a short list of numbers over all ranks (identity on one process)."""
    if not info.distributed:
        return list(values)
    tensor = torch.tensor(values, dtype=torch.float64, device=_collective_device(info))
    dist.all_reduce(tensor)
    return tensor.cpu().tolist()


def max_across_ranks(value: int, info: DistInfo) -> int:
    """Largest value over all ranks (used to agree on an exit code)."""
    if not info.distributed:
        return int(value)
    tensor = torch.tensor([value], dtype=torch.int64, device=_collective_device(info))
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return int(tensor.item())


def main_value(value: int, info: DistInfo) -> int:
    """Rank 0's ``value`` on every rank (a decision rank 0 alone can take, e.g. a cache hit)."""
    if not info.distributed:
        return int(value)
    tensor = torch.tensor([value], dtype=torch.int64, device=_collective_device(info))
    dist.broadcast(tensor, src=0)
    return int(tensor.item())


def all_gather_rows(tensor: torch.Tensor, info: DistInfo) -> list[torch.Tensor]:
    """Every rank's ``tensor`` [n_rank, ...], in rank order, on every rank ([tensor] on one
    process). The ranks may hold different numbers of rows (a rank with none may pass any empty
    tensor of the same dimensions and dtype); parts come back on the collective device."""
    if not info.distributed:
        return [tensor]
    device = _collective_device(info)
    shape = torch.tensor(tensor.shape, dtype=torch.int64, device=device)
    shapes = [torch.empty_like(shape) for _ in range(info.world_size)]
    dist.all_gather(shapes, shape)
    shapes = [[int(n) for n in s.tolist()] for s in shapes]
    rows = max(s[0] for s in shapes)
    trailing = [max(s[d] for s in shapes) for d in range(1, tensor.ndim)]
    if rows == 0:
        return [torch.zeros([0, *trailing], dtype=tensor.dtype, device=device) for _ in shapes]
    padded = torch.zeros([rows, *trailing], dtype=tensor.dtype, device=device)
    if tensor.shape[0]:  # padded: all_gather needs equal sizes
        padded[: tensor.shape[0]] = tensor.to(device)
    parts = [torch.empty_like(padded) for _ in shapes]
    dist.all_gather(parts, padded)
    return [part[: s[0]] for part, s in zip(parts, shapes)]


def cleanup(info: DistInfo) -> None:
    """Leave the process group. What still holds it (a DistributedDataParallel wrapper in a
    reference cycle, its pending works) is freed first, while the group and the interpreter are
    alive: freed during the interpreter's shutdown, gloo's threads can abort the process
    (SIGABRT, "terminate called without an active exception")."""
    if info.distributed and dist.is_initialized():
        gc.collect()
        dist.destroy_process_group()


class RunningMean:
    """Values summed on the device and read only when asked: reading (``.item()`` and an
    all-reduce) makes the host wait for the device, which a training step should not do."""

    def __init__(self, device, info: DistInfo):
        self.info = info
        self.total = torch.zeros((), dtype=torch.float64, device=device)
        self.count = 0

    def add(self, value: torch.Tensor) -> None:
        self.total += value.double()  # float64: exactly the sum of the float32 values
        self.count += 1

    def read(self) -> tuple[float, int]:
        """(sum since the last read, averaged over ranks; values added) and start again. A
        non-finite value on any rank makes every rank's sum non-finite."""
        total = float(self.total.item())
        if self.info.distributed:
            total = sum_across_ranks([total], self.info)[0] / self.info.world_size
        count, self.count = self.count, 0
        self.total.zero_()
        return total, count
