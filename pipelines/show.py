"""`attg-maps show`: the paper's Figure 1 for chosen images of a store.

One row per image: the image, then M_norm, M_norm / tau and exp(M_norm / tau), each upsampled
onto the image, all on one fixed colour scale from 0 to exp(1 / tau) so the columns compare.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from attgmae.core.files import atomic_path
from attgmae.data.images import decode_rgb
from attgmae.store import open_store
from attgmae.visualize import upsample_map


def render_show(store_path, images_root, keys, tau: float, out_png) -> Path:
    store = open_store(store_path)
    maps_norm = store.get_batch(keys)  # [B, 14, 14]
    vmax = float(np.exp(1.0 / tau))
    columns = [
        ("M_norm", lambda m: m),
        (f"M_norm / tau (tau={tau:g})", lambda m: m / tau),
        ("exp(M_norm / tau)", lambda m: np.exp(m / tau)),
    ]
    fig = Figure(figsize=(12, 2.4 * len(keys) + 0.6), layout="constrained")
    axes = fig.subplots(len(keys), 4, squeeze=False)
    shown = None
    for row, (key, grid_map) in enumerate(zip(keys, maps_norm)):
        image = decode_rgb(Path(images_root) / key)
        height, width = image.shape[:2]
        axes[row, 0].imshow(image)
        axes[row, 0].set_title(key, fontsize=8)
        for col, (title, transform) in enumerate(columns, start=1):
            axes[row, col].imshow(image)
            shown = axes[row, col].imshow(
                upsample_map(transform(grid_map), height, width),
                cmap="jet",
                alpha=0.5,
                vmin=0.0,
                vmax=vmax,
            )
            if row == 0:
                axes[row, col].set_title(title, fontsize=9)
    for ax in axes.flat:
        ax.axis("off")
    fig.suptitle(f"{store.method} maps ({Path(store_path).name})", fontsize=10)
    fig.colorbar(shown, ax=axes.ravel().tolist(), shrink=0.8, label=f"0 .. exp(1/tau) = {vmax:.2f}")
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, dpi=100)
    return Path(out_png)
