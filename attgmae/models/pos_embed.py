"""Fixed 2-D sine-cosine position embeddings, laid out as in official MAE.

Token ``t = row * G + col`` of a ``G x G`` grid gets ``[enc(col), enc(row)]``: the first half of
the channels encodes the column (x), the second half the row (y); each half is
``[sin(pos * omega), cos(pos * omega)]`` with ``omega_k = 10000 ** (-k / (D / 4))``. MAE
checkpoints store these tensors, so the layout must match for them to mean the same thing.
"""

from __future__ import annotations

import torch


def sincos_1d(dim: int, positions: torch.Tensor) -> torch.Tensor:
    """``positions`` float [M] -> [M, dim] as ``[sin(p * omega), cos(p * omega)]``."""
    if dim % 2:
        raise ValueError(f"sin-cos embedding needs an even dimension, got {dim}")
    omega = torch.arange(dim // 2, dtype=torch.float64) / (dim / 2.0)
    omega = 1.0 / (10000.0**omega)  # [dim/2]
    angles = positions.to(torch.float64)[:, None] * omega[None, :]  # [M, dim/2]
    return torch.cat([angles.sin(), angles.cos()], dim=1)


def sincos_2d(dim: int, grid_size: int, cls_token: bool = False) -> torch.Tensor:
    """float32 ``[G*G (+1), dim]``; with ``cls_token`` a zero row first (the CLS position)."""
    if dim % 4:
        raise ValueError(f"2-D sin-cos embedding needs a dimension divisible by 4, got {dim}")
    rows, cols = torch.meshgrid(
        torch.arange(grid_size, dtype=torch.float64),
        torch.arange(grid_size, dtype=torch.float64),
        indexing="ij",
    )  # [G, G] each, row-major token order
    emb = torch.cat(
        [sincos_1d(dim // 2, cols.reshape(-1)), sincos_1d(dim // 2, rows.reshape(-1))], dim=1
    )  # [G*G, dim]
    if cls_token:
        emb = torch.cat([torch.zeros(1, dim, dtype=emb.dtype), emb], dim=0)
    return emb.float()
