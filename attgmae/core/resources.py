"""How many processes a run can use on this machine: CPU cores and shared memory.

Data-loader workers hand their batches to the main process through ``/dev/shm``; a container
with a small one (docker's default is 64 MiB) makes a DataLoader die with a bus error deep into
a run. Stage 1 also runs a process pool (TokenCut's eigensolves) beside the loader: together
they must not oversubscribe the cores each rank has.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass

from attgmae.core.errors import InputError

SHM_PATH = "/dev/shm"
SHM_MARGIN = 1.25  # headroom over the batches in flight (collation copies, the pin thread)
MAX_LOADER_WORKERS = 16


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity, e.g. a SLURM allocation)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def ranks_on_this_node() -> int:
    """Processes of this run sharing the machine (torchrun's LOCAL_WORLD_SIZE, SLURM's
    SLURM_NTASKS_PER_NODE), 1 for a plain run."""
    for name in ("LOCAL_WORLD_SIZE", "SLURM_NTASKS_PER_NODE"):
        value = os.environ.get(name, "")
        if value.isdigit() and int(value) > 0:
            return int(value)
    return 1


def shm_free_bytes(path: str = SHM_PATH) -> int | None:
    """Free bytes of the shared-memory file system, None where there is none."""
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return None


@dataclass(frozen=True)
class WorkerPlan:
    loader_workers: int
    prefetch: int | None  # batches in flight per loader worker (None without workers)
    pool_workers: int
    text: str  # one line for the log: the choice and why


def _shm_need(ranks: int, workers: int, prefetch: int | None, batch_bytes: int) -> int:
    return int(ranks * workers * (prefetch or 0) * batch_bytes * SHM_MARGIN)


def plan_workers(loader_workers: int, pool_workers: int, *, uses_pool: bool, gpu: bool,
                 batch_bytes: int, cores: int | None = None, ranks: int | None = None,
                 shm_free: int | None = -1) -> WorkerPlan:  # fmt: skip
    """Loader workers, their prefetch and pool processes for one rank; -1 asks for a choice.

    With a GPU the cores of each rank are shared: half to the pool (when a method has one),
    the rest to decoding, one left for the main process. On the CPU the main process computes,
    so the pool is off and the loader takes what the forwards leave. Prefetch 4 batches per
    worker, 2 when shared memory is short; automatic workers shrink to fit ``/dev/shm``;
    explicit ones that cannot fit are an InputError with advice. ``shm_free`` -1: measure.
    """
    cores = available_cores() if cores is None else cores
    ranks = ranks_on_this_node() if ranks is None else ranks
    shm_free = shm_free_bytes() if shm_free == -1 else shm_free
    per_rank = max(1, cores // ranks)
    if pool_workers < 0:
        pool_workers = max(1, per_rank // 2) if (gpu and uses_pool) else 0
    auto_loader = loader_workers < 0
    if auto_loader:
        spare = per_rank - pool_workers - 1 if gpu else per_rank - 1
        loader_workers = min(MAX_LOADER_WORKERS, max(1, spare))
    prefetch = 4 if loader_workers > 0 else None
    fits = shm_free is None or _shm_need(ranks, loader_workers, prefetch, batch_bytes) <= shm_free
    if not fits and loader_workers > 0:
        prefetch = 2
        while (
            auto_loader
            and loader_workers > 1
            and not (_shm_need(ranks, loader_workers, prefetch, batch_bytes) <= shm_free)
        ):
            loader_workers -= 1
        fits = _shm_need(ranks, loader_workers, prefetch, batch_bytes) <= shm_free
    mib = 1 << 20
    if not fits:
        need = _shm_need(ranks, loader_workers, prefetch, batch_bytes)
        raise InputError(
            f"{SHM_PATH} has {shm_free // mib} MiB free, but {ranks} rank(s) x "
            f"{loader_workers} loader workers x {prefetch} batches of {batch_bytes // mib} MiB "
            f"need about {need // mib} MiB: give the container more shared memory (docker run "
            "--shm-size=8g), or pass a smaller --batch_size or --num_workers (0 decodes in the "
            "main process)"
        )
    shm = "no /dev/shm" if shm_free is None else f"/dev/shm {shm_free // mib} MiB free"
    text = (
        f"processes: {loader_workers} loader workers (prefetch {prefetch}), {pool_workers} pool "
        f"workers, for {per_rank} of {cores} cores per rank ({ranks} rank(s) here); {shm}"
    )
    return WorkerPlan(loader_workers, prefetch, pool_workers, text)
