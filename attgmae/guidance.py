"""From normalized guidance maps to per-patch loss weights, and the tau schedule.

AttG weights each masked patch's reconstruction error by ``gamma * exp(M_norm / tau)``:
background (0) keeps weight ``gamma``, the most attended patch (1) gets ``gamma * exp(1 / tau)``
(2.72 at tau 1.0, 3.79 at tau 0.75, 4.17 at tau 0.7). A lower tau sharpens the guidance.

The paper's main models follow a half-cycle cosine temperature schedule; the endpoints are not
published. ``attg-train`` defaults to 1.0 -> 0.7 (docs/training.md says why): it starts with
mild guidance (the top weight e = 2.72) and ends at the sharpest the paper draws (Fig. 2's scale,
exp(1 / 0.7) = 4.2), passing the ablation's constant 0.75 (Fig. 1's scale, 3.8) late in
training. It moves from the first iteration, warmup included: tau is a function of training
progress alone, and during the lr warmup little is learned at any tau.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

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


# The default endpoints TAU_START, TAU_END and the ablation's TAU_CONSTANT live in
# attgmae.core.constants, where the command-line parsers read them without importing torch.


@dataclass(frozen=True)
class TauSchedule:
    """The guidance temperature along training, per iteration: constant ``start`` when ``end``
    is None, else ``start`` until ``from_epoch`` then a half-cycle cosine to ``end`` at
    ``to_epoch``. Recorded in checkpoints and config.json (``as_dict``)."""

    start: float
    end: float | None = None
    from_epoch: float = 0.0
    to_epoch: float = 1.0

    def at(self, epoch_float: float) -> float:
        if self.end is None:
            return self.start
        span = max(self.to_epoch - self.from_epoch, 1e-12)
        return half_cycle_cosine(self.start, self.end, (epoch_float - self.from_epoch) / span)

    def as_dict(self) -> dict:
        return {"kind": "constant" if self.end is None else "cosine", **asdict(self)}

    @classmethod
    def from_dict(cls, values: dict) -> TauSchedule:
        return cls(values["start"], values.get("end"), values.get("from_epoch", 0.0),
                   values.get("to_epoch", 1.0))  # fmt: skip

    def describe(self) -> str:
        if self.end is None:
            return f"tau {self.start:g} (constant)"
        return (
            f"tau {self.start:g} -> {self.end:g} (half-cycle cosine over epochs "
            f"{self.from_epoch:g}-{self.to_epoch:g})"
        )


def tau_at(epoch_float: float, epochs: int, tau: float, tau_end: float | None = None,
           warmup_epochs: float = 0.0) -> float:  # fmt: skip
    """Temperature at fractional epoch ``epoch_float``: constant ``tau``, or with ``tau_end`` a
    half-cycle cosine from ``tau`` to ``tau_end`` over epochs ``warmup_epochs``..``epochs``."""
    return TauSchedule(tau, tau_end, warmup_epochs, epochs).at(epoch_float)


def fresh_random_map(rng: np.random.Generator, grid: int = MAP_GRID) -> np.ndarray:
    """Control for ``--guidance random``: a new uniform-noise map each time a sample is loaded,
    min-max normalized to [0, 1] (float32 [grid, grid]). Same value range as a real map but no
    relation to the image, to tell the effect of *where* the weight goes from the effect of
    re-weighting at all. (Stage 1's ``--methods random`` instead fixes one map per image:
    ``attgmae.maps.random_map.keyed_random_maps``.)"""
    noise = rng.random((grid, grid), dtype=np.float32)
    return minmax_numpy(noise[None])[0]
