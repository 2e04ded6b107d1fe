"""Semantic segmentation: scores from one confusion matrix, and whole-image / sliding-window
inference.

Scores (the standard definition, as mmsegmentation's ``mean_iou`` that MultiMAE's
``utils/semseg_metrics.py`` uses), from the confusion matrix ``N[t, p]`` = number of labelled
pixels of true class t predicted as p, accumulated over the whole evaluation set (not averaged
per image):

    IoU_c  = N[c, c] / (sum_p N[c, p] + sum_t N[t, c] - N[c, c])     (TP / (TP + FN + FP))
    Acc_c  = N[c, c] / sum_p N[c, p]                                   (TP / (TP + FN))
    mIoU   = mean of IoU_c over classes present in the prediction or the target (union > 0)
    mAcc   = mean of Acc_c over classes present in the target
    aAcc   = sum_c N[c, c] / sum N                                     (pixel accuracy)

A class absent from both prediction and target has no IoU (0 / 0) and is left out of the mean; a
class predicted but absent from the target has IoU 0 and counts. Pixels whose target is
``ignore_index`` (255: ADE20k's "other", NYUv2's "unlabelled", padding) are not counted at all.
Every score is in percent, as MultiMAE prints them.

The counts are int64 and add up: one ``ConfusionMatrix`` per rank, ``all_reduce()`` once at the
end, and the scores are those of the whole set, whatever the number of ranks.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

IGNORE_INDEX = 255


def _as_long_tensor(values) -> torch.Tensor:
    if isinstance(values, np.ndarray):
        values = torch.from_numpy(values)
    return torch.as_tensor(values).long()


class ConfusionMatrix:
    """Counts ``counts[t, p]`` (int64 [C, C], rows = target class, columns = prediction)."""

    def __init__(self, num_classes: int, ignore_index: int = IGNORE_INDEX, device="cpu"):
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = int(num_classes)
        self.ignore_index = int(ignore_index)
        self.counts = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)

    def update(self, pred, target) -> None:
        """Add one batch: ``pred`` and ``target`` integer class maps of the same shape (e.g.
        [B, H, W]); target pixels equal to ``ignore_index`` are skipped. Values outside
        [0, num_classes) (other than ignored targets) are an error: they mean a wrong
        ``num_classes`` or an unmapped label."""
        pred = _as_long_tensor(pred).to(self.counts.device)
        target = _as_long_tensor(target).to(self.counts.device)
        if pred.shape != target.shape:
            raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ")
        labelled = target != self.ignore_index
        pred, target = pred[labelled], target[labelled]  # [P] each
        num = self.num_classes
        for name, values in (("target", target), ("pred", pred)):
            if values.numel() and (int(values.min()) < 0 or int(values.max()) >= num):
                raise ValueError(
                    f"{name} holds class {int(values.min())}..{int(values.max())}, outside "
                    f"[0, {num}) (ignore_index {self.ignore_index})"
                )
        self.counts += torch.bincount(target * num + pred, minlength=num * num).view(num, num)

    def all_reduce(self) -> None:
        """Sum the counts over all ranks (no-op outside a process group). Under nccl the counts
        must live on this rank's GPU: create the matrix with ``device=`` the training device."""
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(self.counts)

    def scores(self) -> dict:
        return segmentation_scores(self.counts)


def _mean_over_defined(values: np.ndarray) -> float:
    defined = values[~np.isnan(values)]
    return float(defined.mean()) if defined.size else math.nan


def segmentation_scores(counts) -> dict:
    """Scores of a confusion matrix ``counts`` [C, C] (rows target, columns prediction).

    -> {"miou", "mean_class_acc", "pixel_acc": percent; "class_iou", "class_acc": [C] lists of
    percent, None where undefined (left out of the means); "num_pixels": labelled pixels}.
    ValueError when no pixel was labelled (there is nothing to score).
    """
    counts = _as_long_tensor(counts).cpu().numpy().astype(np.float64)
    true_pos = np.diag(counts)  # [C]
    target_total = counts.sum(axis=1)  # [C] pixels of each true class
    pred_total = counts.sum(axis=0)  # [C] pixels predicted as each class
    union = target_total + pred_total - true_pos
    num_pixels = counts.sum()
    if num_pixels == 0:
        raise ValueError("no labelled pixels to score (all targets are ignore_index?)")
    with np.errstate(invalid="ignore", divide="ignore"):
        class_iou = np.where(union > 0, true_pos / union, np.nan) * 100
        class_acc = np.where(target_total > 0, true_pos / target_total, np.nan) * 100
    return {
        "miou": _mean_over_defined(class_iou),
        "mean_class_acc": _mean_over_defined(class_acc),
        "pixel_acc": float(true_pos.sum() / num_pixels * 100),
        "class_iou": [None if np.isnan(v) else float(v) for v in class_iou],
        "class_acc": [None if np.isnan(v) else float(v) for v in class_acc],
        "num_pixels": int(num_pixels),
    }


def miou(pred, target, num_classes: int, ignore_index: int = IGNORE_INDEX) -> dict:
    """Scores of one set of predictions: ``pred``, ``target`` integer class maps of the same
    shape ([H, W] or [B, H, W], tensors or arrays) -> ``segmentation_scores``' dict."""
    matrix = ConfusionMatrix(num_classes, ignore_index)
    matrix.update(pred, target)
    return matrix.scores()


# ---- inference ---------------------------------------------------------------------------


def _pair(value) -> tuple[int, int]:
    return (int(value), int(value)) if np.isscalar(value) else (int(value[0]), int(value[1]))


def window_starts(length: int, window: int, stride: int) -> list[int]:
    """Start offsets of windows of ``window`` pixels every ``stride`` along ``length`` pixels
    (length >= window): evenly stepped, the last one moved back to end at the border, so every
    pixel is covered and no window leaves the image."""
    if stride < 1 or window < 1:
        raise ValueError(f"window {window} and stride {stride} must be >= 1")
    steps = max(math.ceil((length - window) / stride), 0) + 1
    return sorted({min(i * stride, length - window) for i in range(steps)})


@torch.no_grad()
def sliding_window_logits(
    model, images: torch.Tensor, num_classes: int, window, stride, pad_value: float = 0.0
) -> torch.Tensor:
    """Per-pixel logits [B, C, H, W] of ``images`` [B, 3, H, W] (normalized) from a model that
    takes [B, 3, wh, ww] windows and returns [B, C, wh, ww] logits.

    Windows of size ``window`` (int or (h, w)) start every ``stride`` pixels (the last at the
    border, ``window_starts``); where windows overlap, their logits are averaged. An image
    smaller than the window is padded at the bottom and right with ``pad_value`` (0 = the mean
    colour after ImageNet normalization) and the padding cut off the result. With a window equal
    to the image size this is exactly ``model(images)``.
    """
    batch, _, height, width = images.shape
    win_h, win_w = _pair(window)
    stride_h, stride_w = _pair(stride)
    pad_h, pad_w = max(win_h - height, 0), max(win_w - width, 0)
    if pad_h or pad_w:
        images = F.pad(images, (0, pad_w, 0, pad_h), value=pad_value)
    full_h, full_w = images.shape[-2:]
    logits = images.new_zeros(batch, num_classes, full_h, full_w, dtype=torch.float32)
    hits = images.new_zeros(1, 1, full_h, full_w, dtype=torch.float32)  # windows per pixel
    for top in window_starts(full_h, win_h, stride_h):
        for left in window_starts(full_w, win_w, stride_w):
            crop = images[:, :, top : top + win_h, left : left + win_w]
            logits[:, :, top : top + win_h, left : left + win_w] += model(crop).float()
            hits[:, :, top : top + win_h, left : left + win_w] += 1
    return (logits / hits)[:, :, :height, :width]


@torch.no_grad()
def predict_logits(
    model, images: torch.Tensor, num_classes: int, mode: str = "whole", window=None, stride=None
) -> torch.Tensor:
    """Logits [B, C, H, W] by the protocol's inference ``mode``: ``whole`` = one forward pass
    of the whole (already resized and padded) image, as MultiMAE evaluates ADE20k and NYUv2;
    ``slide`` = ``sliding_window_logits`` with ``window`` and ``stride``."""
    if mode == "whole":
        return model(images).float()
    if mode == "slide":
        if window is None or stride is None:
            raise ValueError("sliding-window inference needs window and stride")
        return sliding_window_logits(model, images, num_classes, window, stride)
    raise ValueError(f"inference mode must be 'whole' or 'slide', got {mode!r}")
