"""`attg-maps compare`: the paper's Figure 4 for chosen images and several stores.

One row per image: the image, then each store's 14x14 map as its patch grid over the image's
extent, one column per store, on the common [0, 1] viridis scale (``attgmae.figures``; on the
image with ``--overlay``). A key a store does not hold, or holds as failed, shows the bare image
with a note.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from attgmae.core.constants import MAP_GRID
from attgmae.core.errors import InputError
from attgmae.core.outputs import check_output_path
from attgmae.data.images import ImageDecodeError, decode_rgb
from attgmae.figures import CMAP, compare_figure, save_figure
from attgmae.store import STATUS_OK, open_store


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


def column_titles(stores) -> list[str]:
    """Each store's column title: its method, with its file name when that does not say the
    method or when another column has the same method (then with its folder too if the file
    names are the same), and a note when its networks had random weights."""
    methods = [store.method for store in stores]
    names = [Path(store.path).name for store in stores]
    titles = []
    for store, method, name in zip(stores, methods, names):
        if methods.count(method) > 1:
            where = Path(store.path)
            name = f"{where.parent.name}/{name}" if names.count(name) > 1 else name
            title = f"{method} ({name})"
        else:
            title = method if method in name else f"{method} ({name})"
        if store.attrs.get("random_weights"):
            title += "\nrandom weights"
        titles.append(title)
    return titles


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
    store_paths,
    images_root,
    out_png,
    keys=None,
    num: int = 6,
    alpha: float = 0.6,
    cmap: str = CMAP,
    overlay: bool = False,
) -> Path:
    """Write the comparison PNG (atomically) and return its path."""
    check_output_path(out_png, "file", "-o")
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
    titles = column_titles(stores)
    columns = [(title, maps, notes) for title, (maps, notes) in zip(titles, per_store)]
    named = ", ".join(t.split("\n")[0] for t in titles)
    title = f"M_norm of {len(stores)} map store(s): {named}"
    if any(store.attrs.get("random_weights") for store in stores):
        title += "\n(networks marked 'random weights' were not trained: not the paper's maps)"
    fig = compare_figure(images, keys, columns, title, overlay, alpha, cmap)
    return save_figure(fig, out_png)
