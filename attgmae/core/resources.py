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


# A device pool is chosen over the CPU pool only when it solves this many times faster than the
# planned processes: its time is taken from the forwards' on the same GPU.
DEVICE_POOL_MARGIN = 2.0


@dataclass(frozen=True)
class JobCosts:
    """Measured seconds per image of the CPU jobs beside the forwards, each on one core:
    decoding + resizing (a loader worker's job) and the pool's job (TokenCut's eigensolve);
    ``device_pool_s``: the pool's job done on the GPU instead (None: not measured)."""

    decode_s: float
    pool_s: float
    device_pool_s: float | None = None

    def pool_share(self) -> float:
        """The fraction of the cores the pool needs so that both jobs keep the same pace."""
        return self.pool_s / (self.pool_s + self.decode_s)


@dataclass(frozen=True)
class WorkerPlan:
    loader_workers: int
    prefetch: int | None  # batches in flight per loader worker (None without workers)
    pool_workers: int
    text: str  # one line for the log: the choice and why
    device_pool: bool = False  # the pool's job runs on the GPU (no pool processes)
    batch_bytes: int | None = None  # what /dev/shm was planned for per batch (None: unplanned)


def _shm_need(ranks: int, workers: int, prefetch: int | None, batch_bytes: int) -> int:
    return int(ranks * workers * (prefetch or 0) * batch_bytes * SHM_MARGIN)


def _split_note(costs: JobCosts | None, pool_workers: int, device_pool: bool) -> str:
    if costs is None:
        return ""
    note = (
        f"; measured per image on one core: decode {costs.decode_s * 1e3:.2f} ms, pool's job "
        f"{costs.pool_s * 1e3:.2f} ms"
    )
    if costs.device_pool_s is not None:
        used = "used" if device_pool else "not used"
        note += f"; on the GPU {costs.device_pool_s * 1e3:.3f} ms ({used})"
    return note


def plan_workers(loader_workers: int, pool_workers: int, *, uses_pool: bool, gpu: bool,
                 batch_bytes: int, cores: int | None = None, ranks: int | None = None,
                 shm_free: int | None = -1, costs: JobCosts | None = None,
                 device_pool: bool | None = None) -> WorkerPlan:  # fmt: skip
    """Loader workers, their prefetch and pool processes for one rank; -1 asks for a choice.

    With a GPU the cores of each rank but one (the main process) are split between decoding
    and the pool (when a method has one) in proportion to their measured ``costs`` per image,
    so neither waits for the other (halves without costs). ``device_pool`` True puts the pool's
    job on the GPU, False keeps it on the CPU; None (auto) takes the GPU when the measured
    ``costs.device_pool_s`` beats the planned processes ``DEVICE_POOL_MARGIN`` times over (and
    the pool size was not given). Then every spare core decodes. On the CPU the main process
    computes, so the pool is off and the loader takes what the forwards leave. Prefetch 4
    batches per worker, 2 when shared memory is short; automatic workers shrink to fit
    ``/dev/shm``; explicit ones that cannot fit are an InputError with advice. ``shm_free`` -1:
    measure.
    """
    cores = available_cores() if cores is None else cores
    ranks = ranks_on_this_node() if ranks is None else ranks
    shm_free = shm_free_bytes() if shm_free == -1 else shm_free
    per_rank = max(1, cores // ranks)
    spare = max(1, per_rank - 1)  # one core for the main process
    pooled = gpu and uses_pool
    if pool_workers < 0:
        share = costs.pool_share() if costs is not None else 0.5
        pool_workers = min(max(1, round(spare * share)), max(1, spare - 1)) if pooled else 0
        if pooled and device_pool is None and costs is not None and costs.device_pool_s:
            device_pool = costs.pool_s / pool_workers >= DEVICE_POOL_MARGIN * costs.device_pool_s
    device_pool = bool(pooled and device_pool)
    if device_pool:
        pool_workers = 0
    auto_loader = loader_workers < 0
    if auto_loader:
        free = spare - pool_workers if gpu else per_rank - 1
        loader_workers = min(MAX_LOADER_WORKERS, max(1, free))
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
    pool = "the pool's job on the GPU" if device_pool else f"{pool_workers} pool workers"
    text = (
        f"processes: {loader_workers} loader workers (prefetch {prefetch}), {pool}, for "
        f"{per_rank} of {cores} cores per rank ({ranks} rank(s) here); {shm}"
        f"{_split_note(costs, pool_workers, device_pool) if pooled else ''}"
    )
    return WorkerPlan(loader_workers, prefetch, pool_workers, text, device_pool, batch_bytes)
