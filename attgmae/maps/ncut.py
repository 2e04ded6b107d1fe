"""TokenCut's normalized cut on one image's patch graph (numpy/scipy only, no torch).

Kept free of torch so the eigensolve worker processes start light. Definitions (TokenCut,
Wang et al. CVPR 2022, ``object_discovery.py``: ``ncut`` + ``detect_box``):

    A_ij = 1 if cos(k_i, k_j) > threshold else eps    (binary graph, float64; TokenCut's tau)
    D    = diag(sum_j A_ij)
    x    = second-smallest generalized eigenvector of (D - A) x = lambda D x
    bipartition = x > mean(x);  seed = argmax |x|
    if seed not in bipartition: x = -x, bipartition = not bipartition

Fast solver: the generalized problem equals the symmetric one on
L = D^-1/2 (D - A) D^-1/2 = I - D^-1/2 A D^-1/2 with x = D^-1/2 y (so x^T D x = 1, the same
scaling scipy's generalized ``eigh`` returns). Solving for the single eigenvector index 1 with
LAPACK ``syevr`` is about twice as fast as the generalized solve, and agrees with it (tested).
The same symmetric form solved batched by ``torch.linalg.eigh`` on a GPU
(``attgmae.maps.tokencut.fiedler_vectors``) feeds the same ``map_from_eigvec``.
"""

from __future__ import annotations

import math

import numpy as np
import scipy.linalg
from scipy import ndimage
from threadpoolctl import threadpool_limits

from attgmae.core.minmax import minmax_numpy

MAP_KINDS = ("fg-eigvec", "eigvec", "mask")


def adjacency_to_affinity(adjacent: np.ndarray, eps: float) -> np.ndarray:
    """bool [N, N] (similarity > threshold) -> float64 A [N, N] with 1 / eps entries."""
    return np.where(adjacent, 1.0, eps)


def second_eigvec_fast(affinity: np.ndarray) -> np.ndarray:
    """float64 A [N, N] -> x [N], the generalized Fiedler vector via the symmetric form."""
    inv_sqrt_degree = 1.0 / np.sqrt(affinity.sum(axis=1))  # [N]
    laplacian_sym = np.eye(len(affinity)) - affinity * np.outer(inv_sqrt_degree, inv_sqrt_degree)
    _, vectors = scipy.linalg.eigh(laplacian_sym, subset_by_index=[1, 1], driver="evr")
    return vectors[:, 0] * inv_sqrt_degree


def second_eigvec_reference(affinity: np.ndarray) -> np.ndarray:
    """The slow, obvious way (TokenCut's own call): scipy's generalized solver."""
    degree = np.diag(affinity.sum(axis=1))
    _, vectors = scipy.linalg.eigh(degree - affinity, degree, subset_by_index=[1, 2])
    return vectors[:, 0]


def bipartition_with_sign_rule(eigvec: np.ndarray):
    """x [N] -> (x with TokenCut's sign, bipartition bool [N], seed int).

    The result does not depend on the sign the solver returned x with.
    """
    bipartition = eigvec > eigvec.mean()
    seed = int(np.argmax(np.abs(eigvec)))
    if not bipartition[seed]:
        eigvec = -eigvec
        bipartition = ~bipartition
    return eigvec, bipartition, seed


def seed_component(bipartition_grid: np.ndarray, seed: int) -> np.ndarray:
    """bool [g, g] -> bool [g, g]: the 4-connected component of the bipartition holding the seed
    (``scipy.ndimage.label``'s default structure, as TokenCut's ``detect_box``)."""
    components, _ = ndimage.label(bipartition_grid)
    return components == components.flat[seed]


def ncut_map(
    adjacent: np.ndarray, eps: float = 1e-5, map_kind: str = "fg-eigvec", solver: str = "fast"
) -> np.ndarray:
    """One image: bool [N, N] adjacency (cos > threshold) -> float32 [g, g] map in [0, 1].

    map_kind: "fg-eigvec" min-max of x kept on the bipartition (0 elsewhere), "eigvec" min-max
    of x everywhere, "mask" 1 on the seed's 4-connected bipartition component.
    solver: "fast" (symmetric form) or "reference" (scipy generalized, TokenCut's call).
    """
    affinity = adjacency_to_affinity(adjacent, eps)
    solve = second_eigvec_fast if solver == "fast" else second_eigvec_reference
    return map_from_eigvec(solve(affinity), map_kind)


def map_from_eigvec(eigvec: np.ndarray, map_kind: str = "fg-eigvec") -> np.ndarray:
    """x [N] (the generalized Fiedler vector, any sign) -> float32 [g, g] map of ``map_kind``:
    TokenCut's sign rule, bipartition and seed, whichever solver found x."""
    eigvec, bipartition, seed = bipartition_with_sign_rule(np.asarray(eigvec, dtype=np.float64))
    grid = math.isqrt(len(eigvec))
    if map_kind == "eigvec":
        values = minmax_numpy(eigvec[None])[0]
    elif map_kind == "fg-eigvec":
        values = minmax_numpy(eigvec[None])[0] * bipartition
    elif map_kind == "mask":
        values = seed_component(bipartition.reshape(grid, grid), seed).astype(np.float64)
    else:
        raise ValueError(f"tokencut map_kind must be one of {MAP_KINDS}, got {map_kind!r}")
    return values.reshape(grid, grid).astype(np.float32)


def ncut_maps_packed(
    packed: np.ndarray, num_patches: int, eps: float, map_kind: str, solver: str = "fast"
) -> np.ndarray:
    """Worker entry: bit-packed adjacency uint8 [b, ceil(N*N/8)] -> float32 [b, g, g].

    Bit-packing makes the matrices 8x cheaper to send to worker processes.
    """
    adjacency = np.unpackbits(packed, axis=1, count=num_patches * num_patches).astype(bool)
    adjacency = adjacency.reshape(len(packed), num_patches, num_patches)
    return np.stack([ncut_map(a, eps, map_kind, solver) for a in adjacency])


def pin_blas_threads() -> None:
    """Process-pool initializer: one BLAS thread per worker (scipy's eigensolve is ~7x slower per
    core with default threading on small matrices)."""
    global _BLAS_LIMIT
    _BLAS_LIMIT = threadpool_limits(1)  # kept referenced for the worker's lifetime


_BLAS_LIMIT = None
