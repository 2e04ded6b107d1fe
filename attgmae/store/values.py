"""What a stored map may hold: finite values in [0, 1]. Checked when rows are written, whenever
a store is loaded (``MapStore.load`` / ``get_batch``), and by ``attg-maps verify``.

float16 arithmetic is slow in numpy; its bits are not: a non-negative float16 orders like its
bits, so one integer max per row finds the candidates of a float16 store (-0.0 aside, checked
exactly). Stores of other dtypes (foreign writers) are checked in float64.
"""

from __future__ import annotations

import numpy as np

from .layout import GRID, STATUS_FAILED, STATUS_OK, StoreError

# Values a little outside [0, 1] from float error are clipped on writing; anything further is a
# bug upstream.
RANGE_TOLERANCE = 1e-3
FLOAT16_ONE = 0x3C00  # the bits of 1.0; larger bits are > 1, inf, NaN or negative
FLOAT16_MINUS_ZERO = 0x8000


def rows_outside_unit_range(maps) -> np.ndarray:
    """Row indices of maps [N, ...] with a value outside [0, 1] or not finite."""
    maps = np.asarray(maps)
    if maps.dtype == np.float16:
        bits = maps.reshape(len(maps), -1).view(np.uint16)
        candidates = np.flatnonzero(bits.max(axis=1) > FLOAT16_ONE)
    else:
        candidates = np.arange(len(maps))
    exact = (
        maps[candidates].astype(np.float64).reshape(len(candidates), int(np.prod(maps.shape[1:])))
    )
    with np.errstate(invalid="ignore"):
        bad = ~(np.isfinite(exact) & (exact >= 0) & (exact <= 1)).all(axis=1)
    return candidates[bad]


def value_range(maps) -> tuple[float, float]:
    """(min, max) of maps whose values all lie in [0, 1] (from the bits of a float16 store)."""
    maps = np.asarray(maps)
    if maps.dtype != np.float16:
        return float(maps.min()), float(maps.max())
    bits = maps.reshape(-1).view(np.uint16)
    high = np.uint16(bits.max()).view(np.float16)
    low = 0.0 if (bits == FLOAT16_MINUS_ZERO).any() else np.uint16(bits.min()).view(np.float16)
    return float(low), float(high)


def checked_rows(keys, start: int, stop: int, maps, ok) -> tuple[np.ndarray, np.ndarray]:
    """Validated float16 maps and uint8 status for rows [start, stop) of ``keys`` (rows with
    ok=False may hold anything: they are stored as zeros, status failed)."""
    maps = np.asarray(maps, dtype=np.float32)
    ok = np.asarray(ok, dtype=bool)
    if maps.shape != (stop - start, GRID, GRID) or ok.shape != (stop - start,):
        raise StoreError(
            f"rows {start}..{stop}: expected maps [{stop - start}, {GRID}, {GRID}] and ok "
            f"[{stop - start}], got {list(maps.shape)} and {list(ok.shape)}"
        )
    bad = ok & ~(np.isfinite(maps).all(axis=(1, 2)))
    low, high = maps.min(axis=(1, 2)), maps.max(axis=(1, 2))
    bad |= ok & ((low < -RANGE_TOLERANCE) | (high > 1 + RANGE_TOLERANCE))
    if bad.any():
        names = [keys[start + i] for i in np.flatnonzero(bad)[:5]]
        raise StoreError(f"maps with NaN/Inf or outside [0, 1]: {', '.join(names)}")
    maps = np.where(ok[:, None, None], np.clip(maps, 0.0, 1.0), 0.0).astype(np.float16)
    return maps, np.where(ok, STATUS_OK, STATUS_FAILED).astype(np.uint8)
