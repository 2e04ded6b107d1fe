"""Per-map min-max normalization, the one convention every guidance map ends with (M_norm).

``(m - min) / (max - min)`` per map; a constant map (max == min) carries no information and
becomes all zeros rather than 0/0. One numpy and one torch version (the map methods normalize
on the GPU without a round trip through numpy); everything else calls these.
"""

from __future__ import annotations

import numpy as np


def minmax_numpy(maps, dtype=np.float64) -> np.ndarray:
    """``maps`` [B, ...] -> float32 [B, ...] in [0, 1], each map scaled on its own.

    ``dtype``: the precision of the arithmetic (float64 by default; float32 where a caller's
    results must stay bit-identical to float32 arithmetic, as the store's import does).
    """
    maps = np.asarray(maps)
    flat = maps.astype(dtype).reshape(len(maps), int(np.prod(maps.shape[1:])))  # [B, P]
    low = flat.min(axis=1, keepdims=True)
    span = flat.max(axis=1, keepdims=True) - low
    scaled = np.where(span > 0, (flat - low) / np.where(span > 0, span, 1), 0)
    return scaled.reshape(maps.shape).astype(np.float32)


def minmax_torch(maps):
    """``maps`` [B, ...] float tensor -> float32 [B, ...] in [0, 1] on the same device."""
    import torch  # here, not at the top: the store and the TokenCut workers import this module

    flat = maps.float().reshape(maps.shape[0], int(np.prod(maps.shape[1:])))  # [B, P]
    low = flat.amin(dim=1, keepdim=True)
    span = flat.amax(dim=1, keepdim=True) - low
    scaled = torch.where(span > 0, (flat - low) / torch.where(span > 0, span, 1.0), 0.0)
    return scaled.reshape(maps.shape)
