"""TokenCut maps from the DINO patch keys: batched graph on the device, eigensolves on CPUs.

The affinity ``cos(k_i, k_j) > threshold`` (TokenCut's ``tau``) is one batched matmul (GPU when
the keys are there); the
per-image eigensolve (``attgmae.maps.ncut``) runs in this process (workers=0) or in a process pool
with BLAS pinned to one thread per worker, so it can overlap with the next GPU batch
(``TokenCutRunner.submit``). Definitions and the sign rule: see ``attgmae/maps/ncut.py``.
"""

from __future__ import annotations

import math
import multiprocessing
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import torch
import torch.nn.functional as F
from threadpoolctl import threadpool_limits

from attgmae.core.minmax import minmax_numpy
from attgmae.core.signals import ignore_stop_signals
from attgmae.maps import ncut

MAP_KINDS = ncut.MAP_KINDS


def patch_adjacency(patch_keys: torch.Tensor, threshold: float = 0.2) -> torch.Tensor:
    """patch_keys [B, N, D] -> bool [B, N, N]: cosine similarity of the L2-normalized keys above
    ``threshold`` (TokenCut's ``tau``)."""
    features = F.normalize(patch_keys.float(), p=2, dim=-1)  # [B, N, D]
    return (features @ features.transpose(1, 2)) > threshold


def _packed_adjacency(patch_keys: torch.Tensor, threshold: float) -> np.ndarray:
    """-> uint8 [B, ceil(N*N/8)], the adjacency bit-packed on the host."""
    adjacency = patch_adjacency(patch_keys, threshold).cpu().numpy()  # [B, N, N] bool
    return np.packbits(adjacency.reshape(len(adjacency), -1), axis=1)


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
    """The maps of one submitted batch; ``result()`` -> float32 [B, g, g]."""

    def __init__(self, futures):
        self._futures = futures

    def done(self) -> bool:
        return all(future.done() for future in self._futures)

    def result(self) -> np.ndarray:
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

    def submit(self, patch_keys: torch.Tensor) -> _PendingMaps:
        packed = _packed_adjacency(patch_keys, self.threshold)  # [B, bytes]
        num_patches = patch_keys.shape[1]
        # Several small chunks per worker keep the pool evenly loaded.
        chunks = np.array_split(packed, min(len(packed), 4 * self.workers))
        futures = [
            self._pool.submit(ncut.ncut_maps_packed, chunk, num_patches, self.eps, self.map_kind)
            for chunk in chunks
            if len(chunk)
        ]
        return _PendingMaps(futures)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


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


def batch_maps(batch, params: dict):
    """The registry's entry: a MapBatch -> float32 [B, 14, 14] (or, with a pool, a pending
    result) from the keys of the shared DINO forward."""
    _, patch_keys = batch.forward("dino")
    pool = batch.pool("tokencut")
    if pool is not None:
        return pool.submit(patch_keys)  # .result() later: the GPU moves on meanwhile
    return tokencut_maps(patch_keys, params["tau"], params["eps"], params["map"])


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
