"""The dense tasks' figures and tables: metrics per epoch, image | prediction | target grids, and
Table 3's comparison of several checkpoints.

Segmentation colours come from one fixed palette (``class_colours``: matplotlib's tab20, then
seeded colours; ignored pixels black), so the same class has the same colour in every figure
of every run. Taskonomy targets and predictions share one colour scale, [0, 1] (viridis);
invalid target pixels are grey. Figures are written atomically with matplotlib's object API.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from attgmae.core.files import atomic_path
from attgmae.data.dense_transforms import IGNORE_INDEX

IGNORE_COLOUR = (0, 0, 0)


def class_colours() -> np.ndarray:
    """uint8 [256, 3]: tab20's colours for classes 0..19, fixed random ones after them;
    IGNORE_INDEX (255) black."""
    tab20 = np.array(matplotlib.colormaps["tab20"].colors) * 255
    rest = np.random.default_rng(0).integers(30, 256, size=(256 - len(tab20), 3))
    palette = np.concatenate([tab20.round(), rest]).astype(np.uint8)
    palette[IGNORE_INDEX] = IGNORE_COLOUR
    return palette


def _save(fig, path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight")
    return Path(path)


def colour_labels(labels: np.ndarray) -> np.ndarray:
    """int [H, W] class ids (255 ignored) -> uint8 [H, W, 3]."""
    return class_colours()[np.clip(labels, 0, 255).astype(np.int64)]


def _history_axes(history: list[dict], keys: list[tuple[str, str]], ax) -> None:
    marker = "." if len(history) < 30 else None
    for key, label in keys:
        points = [(h["epoch"], h[key]) for h in history if h.get(key) is not None]
        if points:
            ax.plot(*zip(*points), "-", marker=marker, label=label)
    ax.set_xlabel("epoch")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)


def plot_segmentation_history(history: list[dict], path, title: str = "segmentation") -> Path:
    """log.txt's records -> validation mIoU, mean class and pixel accuracy (left), train and
    validation loss (right) per epoch."""
    fig = Figure(figsize=(9, 3.5))
    score_ax, loss_ax = fig.subplots(1, 2)
    scores = [("test_miou", "val mIoU"), ("test_mean_class_acc", "val mAcc")]
    _history_axes(history, [*scores, ("test_pixel_acc", "val pixel acc")], score_ax)
    _history_axes(history, [("train_loss", "train loss"), ("test_loss", "val loss")], loss_ax)
    score_ax.set_ylabel("percent")
    loss_ax.set_ylabel("cross-entropy")
    fig.suptitle(title)
    return _save(fig, path)


def plot_regression_history(history: list[dict], path, title: str = "Taskonomy") -> Path:
    """log.txt's records -> train loss and validation L1 per epoch."""
    fig = Figure(figsize=(5, 3.5))
    ax = fig.subplots()
    _history_axes(history, [("train_loss", "train L1"), ("test_l1", "val L1")], ax)
    ax.set_ylabel("masked L1")
    fig.suptitle(title)
    return _save(fig, path)


def _grid(rows: int, title: str):
    fig = Figure(figsize=(7.5, 2.4 * rows + 0.6))
    axes = np.asarray(fig.subplots(rows, 3, squeeze=False))
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    for ax, name in zip(axes[0], ("image", "prediction", "target")):
        ax.set_title(name)
    fig.suptitle(title)
    return fig, axes


def segmentation_grid(samples: list[dict], path, class_names, title: str = "") -> Path:
    """samples of ``dense_eval.segmentation_samples`` -> rows of image | prediction | target,
    with a legend of the classes shown (ignored pixels black)."""
    fig, axes = _grid(len(samples), title or "segmentation: image | prediction | target")
    shown = set()
    for row, sample in zip(axes, samples):
        row[0].imshow(sample["image"])
        row[1].imshow(colour_labels(sample["pred"]))
        row[2].imshow(colour_labels(sample["target"]))
        row[0].set_ylabel(sample["key"][-28:], fontsize=7)
        for labels in (sample["pred"], sample["target"]):
            shown |= {int(v) for v in np.unique(labels) if v != IGNORE_INDEX}
    palette = class_colours()
    handles = [
        Patch(color=palette[c] / 255, label=class_names[c] if c < len(class_names) else str(c))
        for c in sorted(shown)[:30]
    ]
    if handles:
        fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 5), fontsize=7)
        fig.subplots_adjust(bottom=0.06 + 0.02 * math.ceil(len(handles) / 5))
    return _save(fig, path)


def regression_grid(samples: list[dict], path, task: str, title: str = "") -> Path:
    """samples of ``dense_eval.regression_samples`` -> rows of image | prediction | target on
    the [0, 1] scale; invalid target pixels grey."""
    fig, axes = _grid(len(samples), title or f"{task}: image | prediction | target")
    cmap = matplotlib.colormaps["viridis"].with_extremes(bad="0.5")
    for row, sample in zip(axes, samples):
        row[0].imshow(sample["image"])
        row[1].imshow(sample["pred"], cmap=cmap, vmin=0, vmax=1)
        target = np.ma.masked_where(~sample["mask"], sample["target"])
        row[2].imshow(target, cmap=cmap, vmin=0, vmax=1)
        row[0].set_ylabel(sample["key"][-28:], fontsize=7)
    return _save(fig, path)


def comparison_table(losses: dict, averages: dict, ranks: dict, tasks) -> str:
    """A Markdown table: one row per checkpoint, test L1 per task, the average over tasks and
    the average rank (Table 3's layout)."""
    header = ["checkpoint", *tasks, "average", "average rank"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for label in losses:
        cells = [f"{losses[label][t]:.4f}" for t in tasks]
        cells += [f"{averages[label]:.4f}", f"{ranks[label]:.2f}"]
        lines.append("| " + " | ".join([label, *cells]) + " |")
    return "\n".join(lines) + "\n"
