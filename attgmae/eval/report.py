"""Evaluation results on disk: one JSON with every number, one PNG per protocol.

Both are written atomically (``attgmae.core.files``). Figures are drawn with matplotlib's
object API (no pyplot state, no backend switch in the caller's process).
"""

from __future__ import annotations

from pathlib import Path

from matplotlib.figure import Figure

from attgmae.core.files import atomic_path, write_json_atomic


def write_json(path, payload: dict) -> Path:
    return write_json_atomic(path, payload)


def _save(fig, path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, bbox_inches="tight")
    return Path(path)


def plot_knn(results: dict, path, title: str = "k-NN") -> Path:
    """results {label: {k: (top1, top5)}} -> accuracy vs k, one line per label and metric."""
    fig = Figure(figsize=(5, 3.5))
    ax = fig.subplots()
    for label, by_k in results.items():
        ks = sorted(int(k) for k in by_k)
        for metric, style in ((0, "-o"), (1, "--s")):
            ax.plot(
                ks,
                [by_k[k][metric] for k in ks],
                style,
                label=f"{label} top-{1 if metric == 0 else 5}",
            )
    ax.set_xscale("log")
    ax.set_xlabel("k (neighbours)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_probe(curves: dict, path, title: str = "linear probe") -> Path:
    """curves {label: [acc1 per epoch]} -> validation top-1 per epoch."""
    fig = Figure(figsize=(5, 3.5))
    ax = fig.subplots()
    for label, acc in curves.items():
        ax.plot(range(len(acc)), acc, "-", marker="." if len(acc) < 30 else None, label=label)
    ax.set_xlabel("epoch")
    ax.set_ylabel("val top-1 (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if curves:
        ax.legend(fontsize=8)
    return _save(fig, path)


def plot_finetune(history: list[dict], path, title: str = "fine-tuning") -> Path:
    """history [{"epoch", "train_loss", "test_acc1", "test_acc5", "test_loss"}, ...] (log.txt's
    records) -> validation top-1 / top-5 (left) and train / validation loss (right) per epoch."""
    epochs = [h["epoch"] for h in history]
    fig = Figure(figsize=(9, 3.5))
    acc_ax, loss_ax = fig.subplots(1, 2)
    marker = "." if len(epochs) < 30 else None
    for key, label in (("test_acc1", "val top-1"), ("test_acc5", "val top-5")):
        acc_ax.plot(epochs, [h.get(key) for h in history], "-", marker=marker, label=label)
    for key, label in (("train_loss", "train loss"), ("test_loss", "val loss")):
        loss_ax.plot(epochs, [h.get(key) for h in history], "-", marker=marker, label=label)
    acc_ax.set_ylabel("accuracy (%)")
    loss_ax.set_ylabel("loss")
    for ax in (acc_ax, loss_ax):
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    return _save(fig, path)
