"""Per-map min-max normalization, the one convention every guidance map ends with (M_norm).

``(m - min) / (max - min)`` per map; a constant map (max == min) carries no information and
becomes all zeros rather than 0/0. One numpy and one torch version (the map methods normalize
on the GPU without a round trip through numpy); everything else calls these.
"""

from __future__ import annotations

import numpy as np


def minmax_numpy(maps) -> np.ndarray:
    """``maps`` [B, ...] (any real dtype) -> float32 [B, ...] in [0, 1], each map scaled on its own.

    The arithmetic is float64 and the cast to float32 comes last: a float64 map beyond float32's
    range (1e300, or only 1e-300 tiny) keeps its shape, and ``max - min`` of a finite map near
    float32's limits (+-3e38) does not overflow.
    """
    maps = np.asarray(maps)
    flat = maps.astype(np.float64).reshape(len(maps), int(np.prod(maps.shape[1:])))  # [B, P]
    low = flat.min(axis=1, keepdims=True)
    with np.errstate(over="ignore", invalid="ignore"):
        span = flat.max(axis=1, keepdims=True) - low
        wide = np.isinf(span) & np.isfinite(low)  # finite maps spanning more than float64 holds
        if wide.any():  # halved, each term stays finite
            span = np.where(wide, flat.max(axis=1, keepdims=True) / 2 - low / 2, span)
            flat = np.where(wide, flat / 2, flat)
            low = np.where(wide, low / 2, low)
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
