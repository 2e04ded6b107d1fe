"""Per-map min-max normalization, the one convention every map method ends with.

``(m - min) / (max - min)`` per map; a constant map (max == min) becomes all zeros. This is the
same rule as ``attgmae.store.normalize_maps``; it lives here too so the map methods work on torch
tensors on the GPU without a round trip through numpy.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # torch is imported on use: the random map and the TokenCut workers skip it
    import torch


def minmax_maps_torch(maps: torch.Tensor) -> torch.Tensor:
    """``maps`` [B, ...] float -> float32 [B, ...] in [0, 1], each map scaled on its own."""
    import torch

    flat = maps.float().reshape(maps.shape[0], int(np.prod(maps.shape[1:])))  # [B, P]
    low = flat.amin(dim=1, keepdim=True)
    span = flat.amax(dim=1, keepdim=True) - low
    # A constant map carries no information: all zeros rather than 0/0.
    scaled = torch.where(span > 0, (flat - low) / torch.where(span > 0, span, 1.0), 0.0)
    return scaled.reshape(maps.shape)


def minmax_maps_numpy(maps: np.ndarray) -> np.ndarray:
    """``maps`` [B, ...] -> float32 [B, ...] in [0, 1]; constant maps -> zeros."""
    maps = np.asarray(maps)
    flat = maps.astype(np.float64).reshape(len(maps), int(np.prod(maps.shape[1:])))  # [B, P]
    low = flat.min(axis=1, keepdims=True)
    span = flat.max(axis=1, keepdims=True) - low
    scaled = np.where(span > 0, (flat - low) / np.where(span > 0, span, 1.0), 0.0)
    return scaled.reshape(np.shape(maps)).astype(np.float32)
