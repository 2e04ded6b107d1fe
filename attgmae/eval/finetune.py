"""End-to-end fine-tuning of a classifier (the MAE protocol): its loss, mixup, its evaluation.

- Loss as MAE's ``main_finetune``: soft-target cross-entropy when mixup or cutmix is on (the
  label smoothing then goes into the mixed targets), else label-smoothing cross-entropy, else
  plain cross-entropy.
- Mixup / CutMix: timm's ``Mixup`` on the device, once per batch. It draws from numpy's global
  RNG, which ``attgmae.engine`` seeds from ``(seed, epoch, iteration)`` before the hook: the
  same mixing on every rank and after a resume.
- Evaluation: top-1, top-5 (percent) and mean cross-entropy of the model on every validation
  image; each rank evaluates its own share and the counts are summed, so a multi-process
  result equals a single-process one exactly (no padded duplicates).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.data import Mixup
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from torch import nn

from attgmae.core.distributed import DistInfo, sum_across_ranks
from attgmae.eval.features import autocast_for
from attgmae.eval.linprobe import topk_correct

MIXUP_MODES = ("batch", "pair", "elem")


def make_mixup(
    num_classes: int,
    mixup: float = 0.0,
    cutmix: float = 0.0,
    cutmix_minmax=None,
    prob: float = 1.0,
    switch_prob: float = 0.5,
    mode: str = "batch",
    smoothing: float = 0.1,
) -> Mixup | None:
    """timm's Mixup with MAE's arguments, or None when neither mixup nor cutmix is on."""
    if not (mixup > 0 or cutmix > 0 or cutmix_minmax is not None):
        return None
    return Mixup(
        mixup_alpha=mixup,
        cutmix_alpha=cutmix,
        cutmix_minmax=cutmix_minmax,
        prob=prob,
        switch_prob=switch_prob,
        mode=mode,
        label_smoothing=smoothing,
        num_classes=num_classes,
    )


def mixup_hook(mixup: Mixup):
    """A batch hook for ``SupervisedRun``: (images [B, 3, S, S], labels [B], ...) -> (mixed
    images, soft targets [B, C], ...)."""

    def hook(batch, step):
        images, labels, *rest = batch
        return (*mixup(images, labels), *rest)

    return hook


def classification_criterion(mixup_active: bool, smoothing: float) -> nn.Module:
    """MAE's choice of loss (see the module docstring)."""
    if mixup_active:
        return SoftTargetCrossEntropy()
    if smoothing > 0:
        return LabelSmoothingCrossEntropy(smoothing=smoothing)
    return nn.CrossEntropyLoss()


def classification_loss(criterion: nn.Module):
    """A loss for ``SupervisedRun``: batch (images, targets, ...) -> criterion(logits, targets)."""

    def loss_fn(model, batch, step):
        images, targets = batch[0], batch[1]
        return criterion(model(images), targets)

    loss_fn.criterion = criterion  # what the results name
    return loss_fn


@torch.no_grad()
def evaluate_classifier(
    model: nn.Module, loader, device, precision: str = "auto", info: DistInfo | None = None
) -> dict:
    """{"acc1", "acc5" (percent), "loss" (mean cross-entropy, no smoothing)} over the images of
    ``loader`` (batches of (images, labels, ...)) on every rank together; the model's train or
    eval mode is restored."""
    was_training = model.training
    model.eval()
    correct1 = correct5 = loss_sum = count = 0.0
    try:
        for images, labels, *_ in loader:
            images = images.to(device, non_blocking=True)
            labels = labels.to(device, non_blocking=True)
            with autocast_for(device, precision):
                logits = model(images)
            logits = logits.float()
            loss_sum += float(F.cross_entropy(logits, labels, reduction="sum"))
            hits1, hits5 = topk_correct(logits, labels)
            correct1, correct5, count = correct1 + hits1, correct5 + hits5, count + len(labels)
    finally:
        model.train(was_training)
    correct1, correct5, loss_sum, count = sum_across_ranks(
        [correct1, correct5, loss_sum, count], info or DistInfo()
    )
    count = max(count, 1)
    return {
        "acc1": 100.0 * correct1 / count,
        "acc5": 100.0 * correct5 / count,
        "loss": loss_sum / count,
    }
