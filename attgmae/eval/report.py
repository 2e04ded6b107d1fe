"""Evaluation results on disk: one JSON with every number, one PNG per protocol.

JSON files are written atomically (temp name + os.replace). Plots use matplotlib's Agg backend.
"""

from __future__ import annotations

import json
import os
from pathlib import Path


def write_json(path, payload: dict) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=False) + "\n")
    os.replace(tmp, path)
    return path


def _figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    fig.savefig(tmp, dpi=120, bbox_inches="tight")
    os.replace(tmp, path)
    return path


def plot_knn(results: dict, path, title: str = "k-NN") -> Path:
    """results {label: {k: (top1, top5)}} -> accuracy vs k, one line per label and metric."""
    plt = _figure()
    fig, ax = plt.subplots(figsize=(5, 3.5))
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
    try:
        return _save(fig, path)
    finally:
        plt.close(fig)


def plot_probe(curves: dict, path, title: str = "linear probe") -> Path:
    """curves {label: [acc1 per epoch]} -> validation top-1 per epoch."""
    plt = _figure()
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for label, acc in curves.items():
        ax.plot(range(len(acc)), acc, "-", marker="." if len(acc) < 30 else None, label=label)
    ax.set_xlabel("epoch")
    ax.set_ylabel("val top-1 (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if curves:
        ax.legend(fontsize=8)
    try:
        return _save(fig, path)
    finally:
        plt.close(fig)
