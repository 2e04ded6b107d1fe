"""The dense tasks' objectives and evaluations, as the engine calls them.

Batches are the dense datasets' dicts: ``{"image": uint8 [B, 3, S, S], "label": int64 [B, S, S]}``
(segmentation) or ``{"image", "targets": {task: float32 [B, 1, S, S]}, "mask": bool
[B, 1, S, S]}`` (Taskonomy). Images are normalized here, batched on the device.

- segmentation: per-pixel cross-entropy, labelled pixels only (MultiMAE's
  ``CrossEntropyLoss(ignore_index=255)``; a batch without any labelled pixel gives 0, not NaN);
  scores from one confusion matrix over every rank's share (``attgmae.eval.segmentation``),
  whole-image or sliding-window inference;
- Taskonomy: the masked L1 loss of one task (MultiMAE's ``masked_l1_loss``); its score summed
  over every valid pixel of the split (``MaskedL1Sum``).

Each evaluation puts the model in eval mode and back; every rank must call it (the sums are
all-reduced).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from attgmae.core.distributed import DistInfo, sum_across_ranks
from attgmae.data.dense_transforms import IGNORE_INDEX
from attgmae.data.transforms import normalize_images
from attgmae.eval.features import autocast_for
from attgmae.eval.segmentation import ConfusionMatrix, predict_logits
from attgmae.models.dense_losses import MaskedL1Sum, masked_l1_loss


def pixel_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over labelled pixels: logits [B, C, H, W], labels [B, H, W] (255
    ignored) -> scalar, float32."""
    total = F.cross_entropy(logits.float(), labels, ignore_index=IGNORE_INDEX, reduction="sum")
    return total / (labels != IGNORE_INDEX).sum().clamp(min=1)


def segmentation_loss(model: nn.Module, batch: dict, step=None) -> torch.Tensor:
    """The engine's loss for segmentation (see the module docstring)."""
    return pixel_cross_entropy(model(normalize_images(batch["image"])), batch["label"])


def regression_loss(task: str):
    """The engine's loss for one Taskonomy task: masked L1 on its target."""

    def loss_fn(model: nn.Module, batch: dict, step=None) -> torch.Tensor:
        pred = model(normalize_images(batch["image"]))  # [B, 1, S, S]
        return masked_l1_loss(pred, batch["targets"][task], batch["mask"])

    loss_fn.task = task
    return loss_fn


class _EvalMode:
    """``with _EvalMode(model):`` eval mode inside, the previous mode restored after."""

    def __init__(self, model: nn.Module):
        self.model, self.was_training = model, model.training

    def __enter__(self):
        self.model.eval()

    def __exit__(self, *exc):
        self.model.train(self.was_training)


@torch.no_grad()
def evaluate_segmentation(
    model: nn.Module,
    loader,
    num_classes: int,
    device,
    precision: str = "auto",
    info: DistInfo | None = None,
    inference: str = "whole",
    window: int | None = None,
    stride: int | None = None,
) -> dict:
    """Scores of ``model`` on every image of ``loader`` (this rank's share) and the other ranks'
    -> ``segmentation_scores``' dict (mIoU, mean class accuracy, pixel accuracy in percent,
    per-class lists) plus ``loss``, the mean cross-entropy over labelled pixels."""
    info = info or DistInfo()
    matrix = ConfusionMatrix(num_classes, IGNORE_INDEX, device=device)
    loss_sum, pixels = 0.0, 0.0
    with _EvalMode(model):
        for batch in loader:
            images = normalize_images(batch["image"].to(device, non_blocking=True))
            labels = batch["label"].to(device, non_blocking=True)  # [B, H, W]
            with autocast_for(device, precision):
                logits = predict_logits(model, images, num_classes, inference, window, stride)
            logits = logits.float()  # [B, C, H, W]
            loss_sum += float(
                F.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX, reduction="sum")
            )
            pixels += float((labels != IGNORE_INDEX).sum())
            matrix.update(logits.argmax(dim=1), labels)
    matrix.all_reduce()
    loss_sum, pixels = sum_across_ranks([loss_sum, pixels], info)
    return {**matrix.scores(), "loss": loss_sum / max(pixels, 1.0)}


@torch.no_grad()
def evaluate_regression(
    model: nn.Module, loader, task: str, device, precision: str = "auto", info=None
) -> dict:
    """{"l1": mean |prediction - target| over every valid pixel of the split} of one task."""
    total = MaskedL1Sum(device=device)
    with _EvalMode(model):
        for batch in loader:
            images = normalize_images(batch["image"].to(device, non_blocking=True))
            with autocast_for(device, precision):
                pred = model(images)
            target = batch["targets"][task].to(device, non_blocking=True)
            total.update(pred.float(), target, batch["mask"].to(device, non_blocking=True))
    total.all_reduce()
    return {"l1": total.value()}


def spread_indices(count: int, wanted: int) -> list[int]:
    """``wanted`` indices evenly spread over ``range(count)`` (the images of a PNG of
    predictions: the same ones every run)."""
    if count == 0 or wanted == 0:
        return []
    return sorted({int(i) for i in np.linspace(0, count - 1, min(wanted, count)).round()})


def _image_hwc(image: torch.Tensor) -> np.ndarray:
    return image.permute(1, 2, 0).cpu().numpy()  # uint8 [3, S, S] -> [S, S, 3]


@torch.no_grad()
def segmentation_samples(
    model,
    dataset,
    indices,
    num_classes: int,
    device,
    precision: str = "auto",
    inference: str = "whole",
    window: int | None = None,
    stride: int | None = None,
) -> list[dict]:
    """{"key", "image" uint8 [H, W, 3], "pred", "target" int [H, W] (255 ignored)} of the
    evaluation samples ``indices`` of ``dataset``, for the PNG of predictions."""
    out = []
    with _EvalMode(model):
        for index in indices:
            sample = dataset[index]
            images = normalize_images(sample["image"][None].to(device))
            with autocast_for(device, precision):
                logits = predict_logits(model, images, num_classes, inference, window, stride)
            out.append(
                {
                    "key": dataset.key(index),
                    "image": _image_hwc(sample["image"]),
                    "pred": logits[0].float().argmax(0).cpu().numpy(),
                    "target": sample["label"].numpy(),
                }
            )
    return out


@torch.no_grad()
def regression_samples(model, dataset, indices, task: str, device, precision="auto") -> list:
    """{"key", "image" uint8 [S, S, 3], "pred", "target" float [S, S], "mask" bool [S, S]} of
    the samples ``indices`` of ``dataset``, for the PNG of predictions."""
    out = []
    with _EvalMode(model):
        for index in indices:
            sample = dataset[index]
            with autocast_for(device, precision):
                pred = model(normalize_images(sample["image"][None].to(device)))
            out.append(
                {
                    "key": dataset.key(index),
                    "image": _image_hwc(sample["image"]),
                    "pred": pred[0, 0].float().cpu().numpy(),
                    "target": sample["targets"][task][0].numpy(),
                    "mask": sample["mask"][0].numpy(),
                }
            )
    return out
