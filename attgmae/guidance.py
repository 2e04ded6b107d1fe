"""From normalized guidance maps to per-patch loss weights, and the tau schedule.

AttG weights each masked patch's reconstruction error by ``gamma * exp(M_norm / tau)``:
background (0) keeps weight ``gamma``, the most attended patch (1) gets ``gamma * exp(1 / tau)``
(3.79 at tau 0.75, 4.17 at tau 0.7). A lower tau sharpens the guidance.
"""

from __future__ import annotations

import numpy as np
import torch

from attgmae.core.constants import MAP_GRID
from attgmae.core.minmax import minmax_numpy
from attgmae.optim import half_cycle_cosine


def loss_weights(maps_norm: torch.Tensor, tau: float, gamma: float = 1.0) -> torch.Tensor:
    """maps_norm [N, G, G] or [N, G*G] in [0, 1] -> weights float32 [N, G*G] (patchify order).

    The flattened map is row-major, the order in which MAE's ``patchify`` lists patches.
    """
    if tau <= 0:
        raise ValueError(f"tau must be > 0, got {tau}")
    flat = maps_norm.reshape(maps_norm.shape[0], -1).float()  # [N, L]
    return gamma * torch.exp(flat / tau)


def tau_at(epoch_float: float, epochs: int, tau: float, tau_end: float | None = None) -> float:
    """Temperature at fractional epoch ``epoch_float``: constant ``tau``, or with ``tau_end`` a
    half-cycle cosine from ``tau`` (start of training) to ``tau_end`` (end), per iteration."""
    if tau_end is None:
        return tau
    return half_cycle_cosine(tau, tau_end, epoch_float / max(epochs, 1))


def fresh_random_map(rng: np.random.Generator, grid: int = MAP_GRID) -> np.ndarray:
    """Control for ``--guidance random``: a new uniform-noise map each time a sample is loaded,
    min-max normalized to [0, 1] (float32 [grid, grid]). Same value range as a real map but no
    relation to the image, to tell the effect of *where* the weight goes from the effect of
    re-weighting at all. (Stage 1's ``--methods random`` instead fixes one map per image:
    ``attgmae.maps.random_map.keyed_random_maps``.)"""
    noise = rng.random((grid, grid), dtype=np.float32)
    return minmax_numpy(noise[None], dtype=np.float32)[0]
