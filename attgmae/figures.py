"""The paper's figures of guidance maps, drawn the way the paper draws them.

Every map is shown as what it is, its 14x14 patch grid (no smoothing), stretched over its image's
extent so patches line up with the photo beside it; viridis (dark blue at the low end, bright
yellow at the high end); one fixed colour scale per figure with its colour bar; the image beside
the maps (an overlay only when asked). Figures are matplotlib ``Figure`` objects (no pyplot
state); ``save_figure`` writes one atomically.

The scales are the paper's (supplementary Sec. D, E), unless ``value_range`` fixes another:

- ``weight_figure`` (Fig. 1): per image, image | M_norm | M_norm / tau | exp(M_norm / tau),
  all on 0 .. exp(1 / tau) (the paper: 0 .. 3.8 at tau 0.75).
- ``tau_figure`` (Fig. 2 and 3): per image, the weights exp(M_norm / tau) at several tau (given,
  or read off a run's schedule), all on 1 .. exp(1 / 0.7) = 4.2, Fig. 2's (the weights of a tau
  below 0.7 reach beyond it and show as its top colour; the colour bar's arrow says so).
- ``compare_figure`` (Fig. 4): per image, each store's M_norm on 0 .. 1.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from attgmae.core.files import atomic_path

CMAP = "viridis"
# Fig. 2's scale: "dark blue for 1.0 and bright yellow for 4.2, the minimum and maximum values
# of the guidance map when setting tau = 0.7" (supplementary Sec. E).
FIG2_TAU = 0.7
FIG2_RANGE = (1.0, float(np.exp(1.0 / FIG2_TAU)))


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


def _check_taus(taus) -> list[float]:
    taus = [float(t) for t in np.atleast_1d(taus)]
    bad = [t for t in taus if not t > 0]
    if bad:
        raise ValueError(f"tau must be > 0 (the weights are exp(M_norm / tau)), got {bad[0]:g}")
    return taus


def weight_figure(images, maps_norm, keys, tau: float, title: str, overlay: bool = False,
                  value_range=None) -> Figure:  # fmt: skip
    """Fig. 1. images: uint8 [H, W, 3] each; maps_norm [B, 14, 14] in [0, 1]; every panel on
    ``value_range`` (default 0 .. exp(1 / tau))."""
    (tau,) = _check_taus(tau)
    scale = value_range or (0.0, float(np.exp(1.0 / tau)))
    columns = [
        ("M_norm", lambda m: m),
        (f"M_norm / tau  (tau = {tau:g})", lambda m: m / tau),
        ("exp(M_norm / tau)", lambda m: np.exp(m / tau)),
    ]
    label = f"{scale[0]:g} .. {scale[1]:.2f}" + (
        " = exp(1/tau)" if value_range is None else " (fixed)"
    )
    return _transformed_maps(images, maps_norm, keys, columns, title, scale, overlay, label)


def tau_figure(images, maps_norm, keys, taus, title: str, labels=None, overlay: bool = False,
               value_range=None) -> Figure:  # fmt: skip
    """Fig. 2 / 3: the weights exp(M_norm / tau) for each tau in ``taus`` (column titles
    ``labels``, default "tau = ..."), one scale ``value_range`` (default Fig. 2's 1 .. 4.2)."""
    taus = _check_taus(taus)
    labels = labels or [f"tau = {t:g}" for t in taus]
    scale = value_range or FIG2_RANGE
    columns = [(label, lambda m, t=tau: np.exp(m / t)) for tau, label in zip(taus, labels)]
    label = f"weight {scale[0]:g} .. {scale[1]:.2f}" + (" (Fig. 2)" if value_range is None else "")
    return _transformed_maps(images, maps_norm, keys, columns, title, scale, overlay, label)


def _transformed_maps(images, maps_norm, keys, columns, title, scale, overlay, bar_label):
    """Rows of image | each column's transform of the map, on one colour ``scale`` (low, top);
    the colour bar's arrows mark values beyond it. columns: [(title, map -> values)]."""
    low, top = float(scale[0]), float(scale[1])
    if not low < top:
        raise ValueError(f"the colour range must rise, got {low:g} .. {top:g}")
    fig, axes = _grid(len(keys), 1 + len(columns), title)
    _image_column(axes, images, keys)
    shown, below, above = None, False, False
    for row, (image, grid_map) in enumerate(zip(images, maps_norm)):
        for col, (name, transform) in enumerate(columns, start=1):
            values = transform(grid_map)
            # beyond the scale by more than float32 rounding (exp(1/0.7) is its top)
            below = below or values.min() < low - 1e-5 * abs(low)
            above = above or values.max() > top + 1e-5 * abs(top)
            shown = _draw_map(axes[row, col], image, values, low, top, overlay)
            axes[0, col].set_title(name, fontsize=9)
    extend = {(False, False): "neither", (True, False): "min", (False, True): "max"}.get(
        (below, above), "both"
    )
    fig.colorbar(shown, ax=axes[:, 1:].ravel().tolist(), shrink=0.8, label=bar_label,
                 extend=extend)  # fmt: skip
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
