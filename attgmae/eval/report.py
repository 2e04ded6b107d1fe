"""Evaluation results on disk: one JSON with every number, one PNG per protocol.

Both are written atomically (``attgmae.core.files``). The figures follow the project's style
(``attgmae.figures``): matplotlib ``Figure`` objects (no pyplot state, no backend switch in the
caller's process), viridis colours (one per curve, dark to light), fixed scales (accuracy ticks
0 .. 100 %, so two figures compare at a glance, with a margin that keeps a curve at 0 or 100 %
off the frame) and a title that says what is shown. Each figure is built by a ``*_figure``
function (tested without a file) and written by ``plot_*``.

- ``knn_figure``: top-1 (solid) and top-5 (dashed) against k, and the chance level (dotted,
  100 / classes %); the k axis is logarithmic with exactly the k values as its plain tick labels
  (5, 10, 20, 100, 200), no minor ticks.
- ``probe_figure``: validation top-1 per epoch, one curve per run (seed).
- ``finetune_figure``: validation top-1 / top-5 and train / validation loss per epoch.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator, NullLocator

from attgmae.core.files import write_json_atomic
from attgmae.figures import CMAP, save_figure


def write_json(path, payload: dict) -> Path:
    return write_json_atomic(path, payload)


def curve_colors(n: int) -> list:
    """``n`` viridis colours from dark blue towards green (the palest yellow is left out: it
    does not show on white)."""
    return [colormaps[CMAP](x) for x in np.linspace(0.0, 0.8, n)]


ACCURACY_LIMITS = (-3.0, 103.0)  # 0 .. 100 % and a margin: no curve runs along the frame


def _accuracy_axis(ax) -> None:
    ax.set_ylim(*ACCURACY_LIMITS)
    ax.set_yticks(range(0, 101, 20))


def _axes(title: str, size=(6, 4)):
    fig = Figure(figsize=size, layout="constrained")
    ax = fig.subplots()
    # a long title wraps (constrained layout keeps the lines in the figure, it does not cut them)
    fig.suptitle("\n".join(textwrap.wrap(title, width=int(size[0] * 12))), fontsize=10)
    ax.grid(alpha=0.3)
    return fig, ax


def knn_title(labels, temperature: float | None = None) -> str:
    protocol = "DINO protocol" + (f", T = {temperature:g}" if temperature is not None else "")
    return f"Weighted k-NN ({protocol}) of {', '.join(labels)}: val top-1 / top-5 against k"


def knn_figure(results: dict, title: str | None = None, temperature: float | None = None,
               chance: float | None = None):  # fmt: skip
    """results {label: {k: (top1, top5)}} -> Figure; ``title`` defaults to ``knn_title``;
    ``chance``: the accuracy of a guess (percent, 100 / classes), drawn as a dotted line."""
    fig, ax = _axes(title or knn_title(list(results), temperature))
    ks = sorted({int(k) for by_k in results.values() for k in by_k})
    for (label, by_k), color in zip(results.items(), curve_colors(len(results))):
        mine = sorted(int(k) for k in by_k)
        for metric, style in ((0, "-o"), (1, "--s")):
            ax.plot(
                mine,
                [by_k[k][metric] for k in mine],
                style,
                color=color,
                markersize=4,
                label=f"{label} top-{1 if metric == 0 else 5}",
            )
    ax.set_xscale("log")
    ax.set_xticks(ks, labels=[str(k) for k in ks])  # the k values, not powers of ten
    ax.xaxis.set_minor_locator(NullLocator())
    if ks:
        ax.set_xlim(ks[0] / 1.25, ks[-1] * 1.25)
    if chance is not None:
        ax.axhline(chance, color="0.45", linestyle=":", linewidth=1.2,
                   label=f"chance ({chance:.3g}%)")  # fmt: skip
    _accuracy_axis(ax)
    ax.set_xlabel("k (neighbours voting)")
    ax.set_ylabel("val accuracy (%)")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # off the curves
    return fig


def plot_knn(results: dict, path, title: str | None = None, temperature=None,
             chance=None) -> Path:  # fmt: skip
    return save_figure(knn_figure(results, title, temperature, chance), path, dpi=120)


def probe_figure(curves: dict, title: str) -> Figure:
    """curves {label: [val top-1 per epoch]} -> Figure."""
    fig, ax = _axes(title)
    for (label, acc), color in zip(curves.items(), curve_colors(len(curves))):
        marker = "." if len(acc) < 30 else None
        ax.plot(range(len(acc)), acc, "-", marker=marker, color=color, label=label)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    _accuracy_axis(ax)
    ax.set_xlabel("epoch")
    ax.set_ylabel("val top-1 (%)")
    if curves:
        ax.legend(fontsize=8)
    return fig


def plot_probe(curves: dict, path, title: str) -> Path:
    return save_figure(probe_figure(curves, title), path, dpi=120)


def finetune_figure(history: list[dict], title: str) -> Figure:
    """history [{"epoch", "train_loss", "test_acc1", "test_acc5", "test_loss"}, ...] (log.txt's
    records) -> validation top-1 / top-5 (left) and train / validation loss (right) per epoch."""
    epochs = [h["epoch"] for h in history]
    fig = Figure(figsize=(10, 4), layout="constrained")
    acc_ax, loss_ax = fig.subplots(1, 2)
    fig.suptitle(title, fontsize=10)
    marker = "." if len(epochs) < 30 else None
    colors = curve_colors(2)
    for (key, label), color in zip(
        (("test_acc1", "val top-1"), ("test_acc5", "val top-5")), colors
    ):
        acc_ax.plot(
            epochs, [h.get(key) for h in history], "-", marker=marker, color=color, label=label
        )
    for (key, label), color in zip(
        (("train_loss", "train loss"), ("test_loss", "val loss")), colors
    ):
        loss_ax.plot(
            epochs, [h.get(key) for h in history], "-", marker=marker, color=color, label=label
        )
    _accuracy_axis(acc_ax)
    acc_ax.set_ylabel("accuracy (%)")
    acc_ax.set_title("val top-1 / top-5 per epoch", fontsize=9)
    loss_ax.set_ylabel("loss")
    loss_ax.set_title("train / val loss per epoch", fontsize=9)
    for ax in (acc_ax, loss_ax):
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return fig


def plot_finetune(history: list[dict], path, title: str = "fine-tuning") -> Path:
    return save_figure(finetune_figure(history, title), path, dpi=120)
