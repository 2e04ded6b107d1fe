"""BEiT's relative position bias table resized to another token grid, as BEiT's and SimMIM's
fine-tuning code resizes it (timm's ``resize_rel_pos_bias_table`` interpolates linearly; the
official code fits a bicubic spline, which gives other values at any other size).

A table for a ``g x g`` grid holds ``(2g - 1)^2`` relative offsets (row-major, offsets -(g-1)
.. g-1 on each axis) then 3 extra rows (CLS to token, token to CLS, CLS to CLS), one column per
head. The source offsets are spread out on a geometric progression whose half-width reaches the
target's (so the centre keeps its resolution and the far offsets are stretched), and every head's
table is interpolated there at the target's integer offsets by an interpolating bicubic spline
(scipy's ``interp2d(kind='cubic')`` in the official code; the same FITPACK fit, smoothing 0, as
``RectBivariateSpline``). The extra rows are kept as they are.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.interpolate import RectBivariateSpline

EXTRA_ROWS = 3  # CLS-to-token, token-to-CLS, CLS-to-CLS


def _ratio(src_half: int, dst_half: int) -> float:
    """The progression's ratio q: 1 + q + ... + q^(src_half - 1) reaches dst_half (bisection
    over [1.01, 1.5] to 1e-6, as the official code; it stays at 1.01 when shrinking)."""
    left, right = 1.01, 1.5
    while right - left > 1e-6:
        q = (left + right) / 2.0
        if (1.0 - q**src_half) / (1.0 - q) > dst_half:
            right = q
        else:
            left = q
    return q


def source_offsets(src_side: int, dst_side: int) -> np.ndarray:
    """Where the ``src_side`` offsets of the source table sit among the target's integers."""
    q = _ratio(src_side // 2, dst_side // 2)
    steps = [q ** (i + 1) for i in range(src_side // 2 - 1)]
    positive = np.concatenate([[1.0], 1.0 + np.cumsum(steps)])  # 1, 1 + q, 1 + q + q^2, ...
    return np.concatenate([-positive[::-1], [0.0], positive])


def resize_rel_pos_table(table: torch.Tensor, grid: int) -> torch.Tensor:
    """``table`` [(2g - 1)^2 + 3, heads] -> [(2 grid - 1)^2 + 3, heads] (module docstring)."""
    src_side = round((table.shape[0] - EXTRA_ROWS) ** 0.5)
    dst_side = 2 * grid - 1
    if src_side * src_side + EXTRA_ROWS != table.shape[0]:
        raise ValueError(f"a relative position table of {table.shape[0]} rows is not square")
    if src_side == dst_side:
        return table
    offsets = source_offsets(src_side, dst_side)
    half = dst_side // 2
    targets = np.arange(-half, half + 0.1, 1.0)
    values = table[:-EXTRA_ROWS].detach().double().cpu().numpy()
    heads = []
    for head in range(table.shape[1]):
        square = values[:, head].reshape(src_side, src_side)  # [row offset, column offset]
        spline = RectBivariateSpline(offsets, offsets, square, kx=3, ky=3, s=0)
        heads.append(spline(targets, targets).reshape(-1))
    resized = torch.from_numpy(np.stack(heads, axis=1)).to(table.dtype)
    return torch.cat([resized.to(table.device), table[-EXTRA_ROWS:]], dim=0)
