"""Taskonomy's objective and scores: the masked L1 loss, its test score summed over ranks, and
the average rank of several checkpoints (the paper's Table 3).

Segmentation needs nothing beyond ``F.cross_entropy(logits, labels, ignore_index=255)``
(MultiMAE's ``CrossEntropyLoss(ignore_index=SEG_IGNORE_INDEX)``).
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def masked_l1_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean |pred - target| over valid pixels (MultiMAE's ``masked_l1_loss``).

    pred, target [B, C, H, W]; mask bool [B, 1, H, W] (or [B, C, H, W]) -> scalar. The error
    is computed in float32 whatever the autocast dtype of ``pred``.
    """
    mask = mask.expand_as(target)
    errors = (pred.float() - target.float()).abs() * mask
    return errors.sum() / mask.sum().clamp(min=1)


class MaskedL1Sum:
    """Test score of one task over a whole split: summed |error| and valid-pixel count (float64,
    all-reducible), so the score is the mean over every valid pixel of the split, whatever the
    batch size or number of ranks. (MultiMAE averages the per-batch means instead: the same
    when every batch has as many valid pixels.)"""

    def __init__(self, device="cpu"):
        self.totals = torch.zeros(2, dtype=torch.float64, device=device)  # [sum |err|, pixels]

    def update(self, pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> None:
        mask = mask.expand_as(target)
        errors = (pred.double() - target.double()).abs() * mask
        self.totals += torch.stack([errors.sum(), mask.sum().double()]).to(self.totals.device)

    def all_reduce(self) -> None:
        """Sum over all ranks (no-op outside a process group)."""
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(self.totals)

    def value(self) -> float:
        error, pixels = self.totals.tolist()
        if pixels == 0:
            raise ValueError("no valid pixels to score")
        return error / pixels


def average_rank(losses: dict[str, dict[str, float]]) -> dict[str, float]:
    """Table 3's "Average rank": ``losses[checkpoint][task]`` (lower is better) -> each
    checkpoint's rank per task (1 = lowest loss; tied checkpoints share the mean of their
    places), averaged over the tasks. Every checkpoint must have every task."""
    names = list(losses)
    tasks = sorted({task for per_task in losses.values() for task in per_task})
    if any(set(losses[name]) != set(tasks) for name in names):
        raise ValueError("every checkpoint needs a loss for every task")
    ranks = dict.fromkeys(names, 0.0)
    for task in tasks:
        for name in names:
            value = losses[name][task]
            better = sum(losses[other][task] < value for other in names)
            tied = sum(losses[other][task] == value for other in names)
            ranks[name] += better + (tied + 1) / 2  # places better + 1 .. better + tied
    return {name: total / len(tasks) for name, total in ranks.items()}
