"""TokenCut maps from the DINO patch keys: batched graph on the device, eigensolves on CPUs or
on the device.

The affinity ``cos(k_i, k_j) > threshold`` (TokenCut's ``tau``) is one batched matmul (GPU when
the keys are there). The per-image eigensolve (``attgmae.maps.ncut``) runs in this process
(workers=0) or in a process pool with BLAS pinned to one thread per worker, so it overlaps with
the next GPU batch (``TokenCutRunner.submit``: the bit-packed graphs come to the host with a
non-blocking copy, handed to the pool one batch later, so the GPU never waits for the host).
``DeviceSolver`` instead solves the same symmetric form batched with ``torch.linalg.eigh`` where
the keys are (a GPU: no CPU pool, every core left to decoding) and brings only the Fiedler
vectors back; both paths end in the same ``ncut.map_from_eigvec`` (sign rule, bipartition,
seed), and agree (tested, with torch's solver on the CPU). Definitions: ``attgmae/maps/ncut.py``.
"""

from __future__ import annotations

import functools
import math
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import torch
import torch.nn.functional as F
from threadpoolctl import threadpool_limits

from attgmae.core.device import HostCopy
from attgmae.core.minmax import minmax_numpy
from attgmae.core.signals import ignore_stop_signals
from attgmae.maps import ncut

MAP_KINDS = ncut.MAP_KINDS


def patch_adjacency(patch_keys: torch.Tensor, threshold: float = 0.2) -> torch.Tensor:
    """patch_keys [B, N, D] -> bool [B, N, N]: cosine similarity of the L2-normalized keys above
    ``threshold`` (TokenCut's ``tau``)."""
    features = F.normalize(patch_keys.float(), p=2, dim=-1)  # [B, N, D]
    return (features @ features.transpose(1, 2)) > threshold


@functools.lru_cache(maxsize=8)
def _bit_weights(device: torch.device) -> torch.Tensor:
    """uint8 [8] 128 ... 1 on ``device``, made once (not a host-to-device copy per batch)."""
    return torch.tensor([128, 64, 32, 16, 8, 4, 2, 1], dtype=torch.uint8).to(device)


def pack_bits(bits: torch.Tensor) -> torch.Tensor:
    """bool [B, M] -> uint8 [B, ceil(M / 8)] on the same device, ``np.packbits(axis=1)``'s
    layout (first bit the most significant, zero padding at the end)."""
    pad = -bits.shape[1] % 8
    padded = F.pad(bits.to(torch.uint8), (0, pad)).view(bits.shape[0], -1, 8)
    return (padded * _bit_weights(bits.device)).sum(dim=2, dtype=torch.uint8)


def _packed_adjacency(patch_keys: torch.Tensor, threshold: float) -> torch.Tensor:
    """-> uint8 [B, ceil(N*N/8)], the adjacency bit-packed where the keys are (8x less to copy
    to the host and to send to the worker processes)."""
    adjacency = patch_adjacency(patch_keys, threshold)  # [B, N, N] bool
    return pack_bits(adjacency.reshape(len(adjacency), -1))


def fiedler_vectors(adjacency: torch.Tensor, eps: float) -> torch.Tensor:
    """bool [B, N, N] -> float64 [B, N]: each graph's generalized Fiedler vector x, computed as
    ``ncut.second_eigvec_fast`` does (the symmetric form, x = D^-1/2 y) but batched with
    ``torch.linalg.eigh`` (every eigenpair, index 1) on the adjacency's device."""
    one = torch.ones((), dtype=torch.float64, device=adjacency.device)
    affinity = torch.where(adjacency, one, one * eps)  # [B, N, N]: 1 / eps, float64
    inv_sqrt_degree = 1.0 / torch.sqrt(affinity.sum(dim=2))  # [B, N]
    scale = inv_sqrt_degree[:, :, None] * inv_sqrt_degree[:, None, :]
    identity = torch.eye(adjacency.shape[1], dtype=torch.float64, device=adjacency.device)
    _, vectors = torch.linalg.eigh(identity - affinity * scale)  # ascending eigenvalues
    return vectors[:, :, 1] * inv_sqrt_degree


def check_threshold(threshold) -> float:
    if not -1.0 <= float(threshold) < 1.0:
        raise ValueError(f"tokencut threshold is a cosine similarity in [-1, 1), got {threshold}")
    return float(threshold)


def check_eps(eps) -> float:
    if not float(eps) > 0:
        raise ValueError(f"tokencut eps must be > 0 (it keeps the graph connected), got {eps}")
    return float(eps)


def _check_params(map_kind: str, threshold: float, eps: float) -> None:
    if map_kind not in MAP_KINDS:
        raise ValueError(f"tokencut map_kind must be one of {MAP_KINDS}, got {map_kind!r}")
    check_eps(eps)
    check_threshold(threshold)


class _PendingMaps:
    """The maps of one submitted batch; ``result()`` -> float32 [B, g, g]. Its packed graphs
    go to the pool once their copy to the host has landed (``_start``)."""

    def __init__(self, runner: TokenCutRunner, packed: HostCopy, num_patches: int):
        self._runner, self._packed, self._num_patches = runner, packed, num_patches
        self._futures = None

    def _start(self, wait: bool) -> bool:
        """Hand the graphs to the pool (waiting for their copy if ``wait``); -> whether done."""
        if self._futures is None and (wait or self._packed.done()):
            self._futures = self._runner._solve(self._packed.numpy(), self._num_patches)
        return self._futures is not None

    def done(self) -> bool:
        return self._start(wait=False) and all(future.done() for future in self._futures)

    def result(self) -> np.ndarray:
        self._start(wait=True)
        return minmax_numpy(np.concatenate([future.result() for future in self._futures]))


def _pool_worker_init() -> None:
    """A pool process: one BLAS thread; SIGTERM / SIGUSR1 are the main process's to answer
    (SLURM signals every process of a job step; a pool process that died would break the run
    before it could save)."""
    ncut.pin_blas_threads()
    ignore_stop_signals()


class TokenCutRunner:
    """Eigensolves in ``workers`` processes (spawned, BLAS pinned to 1 thread each).

    ``submit(patch_keys)`` builds the graphs now (on the keys' device) and returns at once; the
    caller keeps the GPU busy and collects ``.result()`` later. Use as a context manager or call
    ``close()``.
    """

    def __init__(
        self, workers: int, threshold: float = 0.2, eps: float = 1e-5, map_kind: str = "fg-eigvec"
    ):
        _check_params(map_kind, threshold, eps)
        if workers < 1:
            raise ValueError("TokenCutRunner needs workers >= 1 (use tokencut_maps for in-process)")
        self.workers, self.threshold, self.eps, self.map_kind = workers, threshold, eps, map_kind
        # spawn, not fork: the parent may hold CUDA and torch thread pools.
        self._pool = ProcessPoolExecutor(
            max_workers=workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_pool_worker_init,
        )
        self._waiting: list[_PendingMaps] = []  # submitted, graphs not yet handed to the pool

    def submit(self, patch_keys: torch.Tensor) -> _PendingMaps:
        """Queue the graphs of a batch; returns at once (the previous batch's graphs, whose copy
        has landed by now, go to the pool)."""
        packed = HostCopy(_packed_adjacency(patch_keys, self.threshold))  # [B, bytes]
        for earlier in self._waiting:
            earlier._start(wait=True)
        pending = _PendingMaps(self, packed, patch_keys.shape[1])
        self._waiting = [pending] if not pending._start(wait=False) else []
        return pending

    def _solve(self, packed: np.ndarray, num_patches: int) -> list:
        # Several small chunks per worker keep the pool evenly loaded.
        chunks = np.array_split(packed, min(len(packed), 4 * self.workers))
        return [
            self._pool.submit(ncut.ncut_maps_packed, chunk, num_patches, self.eps, self.map_kind)
            for chunk in chunks
            if len(chunk)
        ]

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class _DeviceMaps:
    """The maps of one batch solved on the device; ``result()`` -> float32 [B, g, g]."""

    def __init__(self, vectors: torch.Tensor, map_kind: str):
        self._vectors, self._map_kind = HostCopy(vectors), map_kind

    def done(self) -> bool:
        return self._vectors.done()

    def result(self) -> np.ndarray:
        vectors = self._vectors.numpy()  # [B, N] float64
        return minmax_numpy(np.stack([ncut.map_from_eigvec(x, self._map_kind) for x in vectors]))


class DeviceSolver:
    """Eigensolves where the keys are (``fiedler_vectors``), the same interface as
    ``TokenCutRunner``: ``submit`` queues the work and returns at once."""

    def __init__(self, threshold: float = 0.2, eps: float = 1e-5, map_kind: str = "fg-eigvec"):
        _check_params(map_kind, threshold, eps)
        self.threshold, self.eps, self.map_kind = threshold, eps, map_kind

    def submit(self, patch_keys: torch.Tensor) -> _DeviceMaps:
        adjacency = patch_adjacency(patch_keys, self.threshold)
        return _DeviceMaps(fiedler_vectors(adjacency, self.eps), self.map_kind)

    def close(self) -> None:
        pass


_RUNNERS: dict[tuple, TokenCutRunner] = {}


def tokencut_maps(
    patch_keys: torch.Tensor,
    threshold: float = 0.2,
    eps: float = 1e-5,
    map_kind: str = "fg-eigvec",
    workers: int = 0,
) -> np.ndarray:
    """patch_keys [B, N, D] (last-block keys of the patches) -> float32 [B, g, g] in [0, 1].

    workers=0: eigensolves in this process; workers>0: a cached process pool of that size
    (reused across calls; ``close_pools()`` ends them).
    """
    _check_params(map_kind, threshold, eps)
    if workers > 0:
        key = (workers, threshold, eps, map_kind)
        if key not in _RUNNERS:
            _RUNNERS[key] = TokenCutRunner(workers, threshold, eps, map_kind)
        return _RUNNERS[key].submit(patch_keys).result()
    adjacency = patch_adjacency(patch_keys, threshold).cpu().numpy()  # [B, N, N]
    with threadpool_limits(1):  # small eigensolves: threading costs more than it gives
        maps = np.stack([ncut.ncut_map(a, eps, map_kind) for a in adjacency])
    return minmax_numpy(maps)


def start_pool(params: dict, workers: int) -> TokenCutRunner:
    """The registry's pool: eigensolves of resolved tokencut parameters in ``workers`` processes."""
    return TokenCutRunner(workers, params["tau"], params["eps"], params["map"])


def start_device_solver(params: dict) -> DeviceSolver:
    """The registry's device solver: eigensolves of resolved tokencut parameters on the GPU."""
    return DeviceSolver(params["tau"], params["eps"], params["map"])


def batch_maps(batch, params: dict):
    """The registry's entry: a MapBatch -> float32 [B, 14, 14] (or, with a pool, a pending
    result) from the keys of the shared DINO forward."""
    _, patch_keys = batch.forward("dino")
    pool = batch.pool("tokencut")
    if pool is not None:
        return pool.submit(patch_keys)  # .result() later: the GPU moves on meanwhile
    return tokencut_maps(patch_keys, params["tau"], params["eps"], params["map"])


def sample_keys(batch: int, seed: int = 0, num_patches: int = 196, dim: int = 64) -> torch.Tensor:
    """Synthetic patch keys [B, N, D] like DINO's on a photo (an object's patches sharing one
    direction, the background's another, noise): graphs for timing the eigensolves."""
    generator = torch.Generator().manual_seed(seed)
    keys = 0.9 * torch.randn(batch, num_patches, dim, generator=generator)
    on_object = torch.rand(batch, num_patches, 1, generator=generator) < 0.3
    object_dir, background_dir = torch.randn(2, batch, 1, dim, generator=generator)
    return keys + torch.where(on_object, 1.2 * object_dir, 0.8 * background_dir)


def pool_costs(params: dict, device: torch.device, batch_size: int) -> tuple:
    """The registry's cost of the pool's job: (seconds per image of the CPU eigensolve on one
    core, BLAS pinned as in a worker; seconds per image of ``DeviceSolver`` on a CUDA
    ``device`` for a batch of ``batch_size``, else None). On synthetic graphs: a dense 196 x 196
    eigensolve costs about the same whatever the graph."""
    keys = sample_keys(8)
    adjacency = patch_adjacency(keys, params["tau"]).numpy()
    with threadpool_limits(1):
        ncut.ncut_map(adjacency[0], params["eps"], params["map"])  # untimed: first-call costs
        started = time.perf_counter()
        for graph in adjacency[1:]:
            ncut.ncut_map(graph, params["eps"], params["map"])
        cpu_s = (time.perf_counter() - started) / (len(adjacency) - 1)
    if device.type != "cuda":
        return cpu_s, None
    batch = sample_keys(batch_size, seed=1).to(device)
    graphs = patch_adjacency(batch, params["tau"])
    fiedler_vectors(graphs, params["eps"])  # untimed: solver set-up
    torch.cuda.synchronize(device)
    started = time.perf_counter()
    fiedler_vectors(graphs, params["eps"])
    torch.cuda.synchronize(device)
    return cpu_s, (time.perf_counter() - started) / batch_size


def close_pools() -> None:
    """Shut down the process pools ``tokencut_maps(workers>0)`` started."""
    while _RUNNERS:
        _RUNNERS.popitem()[1].close()


def tokencut_maps_reference(
    patch_keys: torch.Tensor, threshold: float = 0.2, eps: float = 1e-5, map_kind: str = "fg-eigvec"
) -> np.ndarray:
    """The slow, obvious path (TokenCut's ``ncut`` per image): fp32 similarity per image, then
    scipy's generalized ``eigh(D - A, D)`` with default BLAS threading. [B, g, g]."""
    maps = []
    for keys in patch_keys:
        features = F.normalize(keys.float().cpu(), p=2, dim=1)  # [N, D]
        adjacent = (features @ features.T).numpy() > threshold
        maps.append(ncut.ncut_map(adjacent, eps, map_kind, solver="reference"))
    grid = math.isqrt(patch_keys.shape[1])
    return minmax_numpy(np.stack(maps).reshape(-1, grid, grid))
