"""LARS (layer-wise adaptive rate scaling), the optimizer of MAE's linear probing.

For a parameter ``p`` with more than one dimension (a weight matrix), the update direction is
``d = grad + weight_decay * p`` scaled by the trust ratio ``trust_coefficient * |p| / |d|``
(1 when either norm is zero). Parameters with at most one dimension (biases, norm gains) use the
plain gradient, neither decayed nor scaled. Then heavy-ball momentum without dampening:
``mu = momentum * mu + d``, ``p -= lr * mu``. Same semantics as MAE's util/lars.py (from MoCo v3).
"""

from __future__ import annotations

import torch


class LARS(torch.optim.Optimizer):
    def __init__(self, params, lr=0.0, weight_decay=0.0, momentum=0.9, trust_coefficient=0.001):
        if lr < 0 or weight_decay < 0 or not 0 <= momentum < 1 or trust_coefficient <= 0:
            raise ValueError(
                f"bad LARS hyper-parameters: lr={lr}, weight_decay={weight_decay}, "
                f"momentum={momentum}, trust_coefficient={trust_coefficient}"
            )
        defaults = {
            "lr": lr,
            "weight_decay": weight_decay,
            "momentum": momentum,
            "trust_coefficient": trust_coefficient,
        }
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                direction = p.grad
                if p.ndim > 1:  # weight matrices only: 1-D biases / norm params are not adapted
                    direction = direction.add(p, alpha=group["weight_decay"])
                    p_norm = torch.linalg.vector_norm(p)
                    d_norm = torch.linalg.vector_norm(direction)
                    ratio = group["trust_coefficient"] * p_norm / d_norm
                    # Trust ratio 1 when either norm is zero (fresh zero weights, zero gradient).
                    ratio = torch.where((p_norm > 0) & (d_norm > 0), ratio, torch.ones_like(ratio))
                    direction = direction * ratio
                state = self.state[p]
                if "mu" not in state:
                    state["mu"] = torch.zeros_like(p)
                state["mu"].mul_(group["momentum"]).add_(direction)
                p.add_(state["mu"], alpha=-group["lr"])
        return loss
