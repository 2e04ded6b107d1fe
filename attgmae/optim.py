"""Optimizer parameter groups and the per-iteration schedules (as official MAE)."""

from __future__ import annotations

import math

import torch


def half_cycle_cosine(start: float, end: float, progress: float) -> float:
    """``start`` at progress 0 to ``end`` at progress 1 along half a cosine (lr, tau)."""
    progress = min(max(progress, 0.0), 1.0)
    return end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * progress))


def param_groups_weight_decay(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Two groups: no decay on biases and 1-D parameters (norms), ``weight_decay`` on the rest.

    Frozen parameters (the fixed sin-cos position embeddings) are left out. The order (no-decay
    group first) is that of official MAE, so its optimizer state dicts load into ours.
    """
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if param.ndim <= 1 or name.endswith(".bias"):
            no_decay.append(param)
        else:
            decay.append(param)
    return [
        {"params": no_decay, "weight_decay": 0.0},
        {"params": decay, "weight_decay": weight_decay},
    ]


def make_adamw(
    model: torch.nn.Module, lr: float, weight_decay: float, betas=(0.9, 0.95), fused: bool = False
) -> torch.optim.AdamW:
    """AdamW with MAE's groups; ``fused`` (one kernel for all parameters) on CUDA."""
    groups = param_groups_weight_decay(model, weight_decay)
    return torch.optim.AdamW(groups, lr=lr, betas=betas, fused=fused or None)


def lr_at(epoch_float: float, lr: float, min_lr: float, warmup_epochs: float, epochs: int) -> float:
    """Linear warmup from 0 over ``warmup_epochs``, then half-cycle cosine down to ``min_lr``.

    ``epoch_float`` = epoch + iteration / iterations_per_epoch, so the lr moves every iteration.
    """
    if epoch_float < warmup_epochs:
        return lr * epoch_float / warmup_epochs
    span = max(epochs - warmup_epochs, 1e-12)
    return half_cycle_cosine(lr, min_lr, (epoch_float - warmup_epochs) / span)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set every group's lr (times its ``lr_scale`` when it has one, as layer-decay groups do)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
