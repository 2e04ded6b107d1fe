"""The paper's figures of guidance maps, drawn the way the paper draws them.

Every map is shown as what it is, its 14x14 patch grid (no smoothing), stretched over its image's
extent so patches line up with the photo beside it; viridis (dark blue at the low end, bright
yellow at the high end); one fixed colour scale per figure with its colour bar; the image beside
the maps (an overlay only when asked). Figures are matplotlib ``Figure`` objects (no pyplot
state); ``save_figure`` writes one atomically.

- ``weight_figure`` (Fig. 1): per image, image | M_norm | M_norm / tau | exp(M_norm / tau),
  all on 0 .. exp(1 / tau).
- ``tau_figure`` (Fig. 2 and 3): per image, the weights exp(M_norm / tau) at several tau (given,
  or read off a run's schedule), all on 1 .. exp(1 / min tau).
- ``compare_figure`` (Fig. 4): per image, each store's M_norm on 0 .. 1.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from attgmae.core.files import atomic_path

CMAP = "viridis"


def _draw_map(
    ax,
    image: np.ndarray,
    grid_map: np.ndarray,
    vmin: float,
    vmax: float,
    overlay: bool,
    alpha: float = 0.6,
    cmap: str = CMAP,
):
    """One map panel: the patch grid over the image's extent (on the image when ``overlay``)."""
    height, width = image.shape[:2]
    if overlay:
        ax.imshow(image)
    return ax.imshow(
        grid_map,
        cmap=cmap,
        vmin=vmin,
        vmax=vmax,
        interpolation="nearest",
        extent=(0, width, height, 0),
        alpha=alpha if overlay else 1.0,
    )


def _grid(rows: int, cols: int, title: str, panel: float = 2.3) -> tuple[Figure, np.ndarray]:
    fig = Figure(figsize=(panel * cols + 1.0, panel * 0.8 * rows + 0.8), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title, fontsize=10)
    return fig, axes


def _image_column(axes, images, keys) -> None:
    for row, (image, key) in enumerate(zip(images, keys)):
        axes[row, 0].imshow(image)
        axes[row, 0].set_ylabel(key, fontsize=7)
    axes[0, 0].set_title("image", fontsize=9)


def weight_figure(images, maps_norm, keys, tau: float, title: str, overlay: bool = False) -> Figure:
    """Fig. 1. images: uint8 [H, W, 3] each; maps_norm [B, 14, 14] in [0, 1]."""
    top = float(np.exp(1.0 / tau))
    columns = [
        ("M_norm", lambda m: m),
        (f"M_norm / tau  (tau = {tau:g})", lambda m: m / tau),
        ("exp(M_norm / tau)", lambda m: np.exp(m / tau)),
    ]
    return _transformed_maps(images, maps_norm, keys, columns, title, (0.0, top), overlay,
                             f"0 .. exp(1/tau) = {top:.2f}")  # fmt: skip


def tau_figure(
    images, maps_norm, keys, taus, title: str, labels=None, overlay: bool = False
) -> Figure:
    """Fig. 2 / 3: the weights exp(M_norm / tau) for each tau in ``taus`` (column titles
    ``labels``, default "tau = ..."), one scale 1 .. exp(1 / min tau)."""
    taus = [float(t) for t in taus]
    labels = labels or [f"tau = {t:g}" for t in taus]
    top = float(np.exp(1.0 / min(taus)))
    columns = [(label, lambda m, t=tau: np.exp(m / t)) for tau, label in zip(taus, labels)]
    return _transformed_maps(images, maps_norm, keys, columns, title, (1.0, top), overlay,
                             f"weight: 1 .. {top:.2f}")  # fmt: skip


def _transformed_maps(images, maps_norm, keys, columns, title, scale, overlay, bar_label):
    """Rows of image | each column's transform of the map, on one colour ``scale`` (low, top).
    columns: [(title, map -> values)]."""
    fig, axes = _grid(len(keys), 1 + len(columns), title)
    _image_column(axes, images, keys)
    shown = None
    for row, (image, grid_map) in enumerate(zip(images, maps_norm)):
        for col, (name, transform) in enumerate(columns, start=1):
            shown = _draw_map(axes[row, col], image, transform(grid_map), *scale, overlay)
            axes[0, col].set_title(name, fontsize=9)
    fig.colorbar(shown, ax=axes[:, 1:].ravel().tolist(), shrink=0.8, label=bar_label)
    return fig


def compare_figure(
    images, keys, columns, title: str, overlay: bool = False, alpha: float = 0.6, cmap: str = CMAP
) -> Figure:
    """Fig. 4. columns: [(name, maps [B, 14, 14] in [0, 1], notes [B] (None = shown))]."""
    fig, axes = _grid(len(keys), 1 + len(columns), title)
    _image_column(axes, images, keys)
    shown = None
    for col, (name, maps, notes) in enumerate(columns, start=1):
        axes[0, col].set_title(name, fontsize=9)
        for row, image in enumerate(images):
            ax = axes[row, col]
            if notes[row] is None:
                shown = _draw_map(ax, image, maps[row], 0.0, 1.0, overlay, alpha, cmap)
            else:
                ax.imshow(image)
                ax.text(
                    0.5,
                    0.5,
                    notes[row],
                    color="white",
                    ha="center",
                    va="center",
                    transform=ax.transAxes,
                    bbox={"facecolor": "black", "alpha": 0.6},
                )
    if shown is not None:
        fig.colorbar(
            shown, ax=axes[:, 1:].ravel().tolist(), shrink=0.8, label="M_norm: 0 .. 1"
        )
    return fig


def save_figure(fig: Figure, path, dpi: int = 100) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi)
    return Path(path)
