"""`attg-maps compare`: the paper's Figure 4 for chosen images and several stores.

One row per image: the image, then each store's 14x14 map upsampled (bilinear, the map covers the
whole image) and overlaid on it, one column per store, on the common [0, 1] colour scale.
A key a store does not hold, or holds as failed, shows the bare image with a note.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from attgmae.core.constants import MAP_GRID
from attgmae.core.errors import InputError
from attgmae.core.files import atomic_path
from attgmae.data.images import ImageDecodeError, decode_rgb
from attgmae.store import STATUS_OK, open_store
from attgmae.visualize import upsample_map


def spread_keys(stores, num: int) -> list[str]:
    """``num`` keys evenly spread over the keys every store maps successfully (deterministic)."""
    common = None
    for store in stores:
        ok_keys = {k for k, s in zip(store.keys, store.status) if s == STATUS_OK}
        common = ok_keys if common is None else common & ok_keys
    common = sorted(common or ())
    if not common:
        raise InputError("the stores have no successfully mapped image in common")
    picks = np.linspace(0, len(common) - 1, num=min(num, len(common))).round().astype(int)
    return [common[i] for i in dict.fromkeys(picks.tolist())]


def _column_title(store) -> str:
    name = Path(store.path).name
    return store.method if store.method in name else f"{store.method} ({name})"


def _store_maps(store, keys: list[str]) -> tuple[np.ndarray, list[str | None]]:
    """float32 [B, 14, 14] (zeros where absent) and a note per key (None when shown)."""
    row_of = {k: i for i, k in enumerate(store.keys)}
    shown = [i for i, k in enumerate(keys) if k in row_of and store.status[row_of[k]] == STATUS_OK]
    maps = np.zeros((len(keys), MAP_GRID, MAP_GRID), dtype=np.float32)
    if shown:
        unique = list(dict.fromkeys(keys[i] for i in shown))  # a key may be asked for twice
        fetched = dict(zip(unique, store.get_batch(unique)))  # key -> [14, 14]
        for i in shown:
            maps[i] = fetched[keys[i]]
    notes = [
        None if i in shown else ("failed" if k in row_of else "not in store")
        for i, k in enumerate(keys)
    ]
    return maps, notes


def write_compare_grid(
    store_paths, images_root, out_png, keys=None, num: int = 6, alpha: float = 0.5, cmap="jet"
) -> Path:
    """Write the comparison PNG (atomically) and return its path."""
    stores = [open_store(path) for path in store_paths]
    keys = list(keys) if keys else spread_keys(stores, num)
    per_store = [_store_maps(store, keys) for store in stores]
    if all(note is not None for _, notes in per_store for note in notes):
        raise InputError(f"none of the keys {keys[:5]} has a map in any of the stores")
    images = []
    for key in keys:
        try:
            images.append(decode_rgb(Path(images_root) / key))  # uint8 [H, W, 3]
        except ImageDecodeError as err:
            raise InputError(f"image {key} under {images_root}: {err.reason}") from None

    num_cols = 1 + len(stores)
    fig = Figure(figsize=(2.4 * num_cols + 0.8, 2.0 * len(keys) + 0.6), layout="constrained")
    axes = fig.subplots(len(keys), num_cols, squeeze=False)
    shown = None
    for row, (key, image) in enumerate(zip(keys, images)):
        height, width = image.shape[:2]
        axes[row, 0].imshow(image)
        axes[row, 0].set_title(key, fontsize=7)
        for col, (store, (maps, notes)) in enumerate(zip(stores, per_store), start=1):
            ax = axes[row, col]
            ax.imshow(image)
            if notes[row] is None:
                shown = ax.imshow(
                    upsample_map(maps[row], height, width), cmap=cmap, alpha=alpha, vmin=0, vmax=1
                )
            else:
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
            if row == 0:
                ax.set_title(_column_title(store), fontsize=9)
    for ax in axes.flat:
        ax.axis("off")
    if shown is not None:
        fig.colorbar(shown, ax=axes.ravel().tolist(), shrink=0.8, label="M_norm")
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, dpi=100)
    return Path(out_png)
