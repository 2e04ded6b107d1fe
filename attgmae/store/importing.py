"""``attg-maps import``: a published map archive -> checked maps -> a new store.

Everything is read and checked in memory first; the store is written only when every map is
good, so a failed import leaves nothing behind. Keys are matched to the images they belong to
(by path without extension) when an image folder is given.

Under the output's lock: what killed runs left beside it (unpacked archives) is removed first,
and a store a killed run had finalized is put in place (``swap.finish_interrupted``); when it
is the very import asked for (same keys, method and content), that is the whole job. Nothing
else is ever deleted on failure: the writer removes only a partial store it made itself.
"""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np

from attgmae.core.files import file_sha256, remove_stale_temporaries, temporary_path
from attgmae.core.listing import IMAGE_EXTENSIONS, list_images
from attgmae.core.outputs import claim_output

from . import checksums, swap
from .layout import (
    GRID,
    STATUS_FAILED,
    StoreError,
    keys_as_bytes,
    keys_digest,
    normalize_maps,
    store_format,
)
from .reader import open_store
from .sources import RawMaps, read_source
from .unpack import unpacked
from .values import checked_rows
from .writer import write_store

MAX_PROBLEMS_SHOWN = 10


class ImportProblems(StoreError):
    """Several named problems; the message lists the first ones and the count."""

    def __init__(self, source, problems: list[str]):
        shown = "\n  ".join(problems[:MAX_PROBLEMS_SHOWN])
        more = len(problems) - MAX_PROBLEMS_SHOWN
        tail = f"\n  ... and {more} more" if more > 0 else ""
        super().__init__(f"cannot import {source}: {len(problems)} problem(s)\n  {shown}{tail}")
        self.problems = problems


def _stem(key: str) -> str:
    return key.rsplit(".", 1)[0] if key.lower().endswith(IMAGE_EXTENSIONS) else key


def match_keys_to_images(keys, images_root) -> tuple[list[str | None], list[str]]:
    """Each key as the relative path of its image under ``images_root`` (matched by stem)."""
    images_root = Path(images_root)
    if not images_root.is_dir():
        raise StoreError(f"--images {images_root}: not a directory")
    image_keys = list_images(images_root)
    by_stem: dict[str, list[str]] = {}
    for image_key in image_keys:
        by_stem.setdefault(_stem(image_key), []).append(image_key)
    known = set(image_keys)
    matched, problems = [], []
    for key in keys:
        if key in known:
            matched.append(key)
            continue
        hits = by_stem.get(_stem(key), [])
        if len(hits) == 1:
            matched.append(hits[0])
        else:
            matched.append(None)
            what = "no image" if not hits else f"several images ({', '.join(hits)})"
            problems.append(f"{key}: {what} with this stem under {images_root}")
    return matched, problems


def resize_area(grid_map: np.ndarray) -> np.ndarray:
    """Area resampling to 14x14 (cv2 INTER_AREA), in float64 (a float64 map keeps its range)."""
    return cv2.resize(grid_map.astype(np.float64), (GRID, GRID), interpolation=cv2.INTER_AREA)


def _as_grid(grid_map: np.ndarray) -> tuple[np.ndarray, str | None]:
    """A flat map (1-D, 1xP or Px1) of k*k values as the k x k grid it is (row-major); a flat
    map of another length is a problem no resampling mends."""
    while grid_map.ndim > 2 and grid_map.shape[0] == 1:
        grid_map = grid_map[0]
    flat = grid_map.ndim == 1 or (grid_map.ndim == 2 and 1 in grid_map.shape and grid_map.size > 1)
    if not flat or grid_map.size == 0:
        return grid_map, None
    side = math.isqrt(grid_map.size)
    if side * side != grid_map.size:
        shape = "x".join(map(str, grid_map.shape))
        return grid_map, (
            f"map is flat ({shape}) and {grid_map.size} is not a square: a flat map must hold "
            f"k*k values (a k x k grid, row-major; {GRID * GRID} for {GRID}x{GRID}), which "
            "--resize cannot make of it"
        )
    return grid_map.reshape(side, side), None


def _map_problem(grid_map: np.ndarray) -> str | None:
    """Why an array cannot be a map (None when it can)."""
    if grid_map.ndim != 2:
        return f"map of shape {list(grid_map.shape)} is not 2-D"
    if grid_map.size == 0:
        return f"map is empty ({grid_map.shape[0]}x{grid_map.shape[1]})"
    if np.iscomplexobj(grid_map):
        return f"map holds complex values ({grid_map.dtype}); maps are real"
    if grid_map.dtype.kind not in "biuf":
        return f"map holds {grid_map.dtype} values, not numbers"
    if not np.isfinite(grid_map).all():
        return "map holds NaN or Inf"
    return None


def check_and_stack(raw: RawMaps, resize: bool, normalize: bool) -> tuple[np.ndarray, list[str]]:
    """float32 [N, 14, 14] and the problems found (by key). Each map is resampled and
    normalized in float64 and cast to float32 last."""
    out = np.zeros((len(raw.maps), GRID, GRID), dtype=np.float32)
    problems = []
    for i, grid_map in enumerate(raw.maps):
        key = raw.origin(i)
        grid_map, problem = _as_grid(np.asarray(grid_map))
        problem = problem or _map_problem(grid_map)
        if problem is not None:
            problems.append(f"{key}: {problem}")
            continue
        grid_map = grid_map.astype(np.float64)
        if grid_map.shape != (GRID, GRID):
            if not resize:
                problems.append(
                    f"{key}: map is {grid_map.shape[0]}x{grid_map.shape[1]}, not "
                    f"{GRID}x{GRID} (pass --resize to area-resample it)"
                )
                continue
            grid_map = resize_area(grid_map)
        if normalize:
            out[i] = normalize_maps(grid_map[None])[0]
        elif grid_map.min() < 0 or grid_map.max() > 1:
            problems.append(
                f"{key}: values in [{grid_map.min():.3g}, {grid_map.max():.3g}], outside "
                "[0, 1] (drop --no-normalize to min-max normalize)"
            )
        else:
            out[i] = grid_map
    return out, problems


def import_maps(
    source,
    out,
    *,
    images=None,
    method=None,
    resize=False,
    normalize=True,
    maps_name=None,
    keys_name=None,
    overwrite=False,
    fmt=None,
) -> dict:
    """Import ``source`` into a new store at ``out``; returns a summary dict."""
    source, out = Path(source), Path(str(out).rstrip("/"))
    out_fmt = store_format(out, fmt)  # fail early on a bad output name
    with claim_output(out, "output store", "file" if out_fmt == "h5" else "store"):
        remove_stale_temporaries(out)  # what killed imports unpacked beside it
        return _import(source, out, out_fmt, images, method, resize, normalize, maps_name,
                       keys_name, overwrite)  # fmt: skip


def _import(source, out, fmt, images, method, resize, normalize, maps_name, keys_name,
            overwrite) -> dict:  # fmt: skip
    finished = swap.finish_interrupted(out, fmt)  # a killed run's finalized store, put in place
    if out.exists() and not overwrite and not finished:
        raise StoreError(f"{out} already exists; pass --overwrite to replace it")
    with unpacked(source, temporary_path(out, suffix=".unpacked")) as path:
        try:
            raw = read_source(path, maps_name, keys_name)
        except StoreError as err:  # name the archive, not the temporary folder it unpacked to
            raise StoreError(_as_shown(str(err), path, source)) from None
        raw.problems = [_as_shown(problem, path, source) for problem in raw.problems]
        if raw.origins is not None:
            raw.origins = [_as_shown(origin, path, source) for origin in raw.origins]
    keys, maps = _checked_keys_and_maps(raw, source, images, resize, normalize)
    order = sorted(range(len(keys)), key=keys.__getitem__)
    if raw.attrs is not None:
        fields = _fields_of_our_store(raw, order)
    else:
        fields = _fields_of_foreign_maps(raw, source, resize, normalize)
    fields["method"] = method or fields["method"]
    keys, maps = [keys[i] for i in order], maps[order]
    summary = {"count": len(keys), "kind": raw.kind, "method": fields["method"], "out": str(out),
               "finished": False}  # fmt: skip
    if finished:  # the store now in place may be the very import asked for
        if _is_this_import(out, keys, maps, fields):
            return {**summary, "finished": True}
        if not overwrite:
            raise StoreError(
                f"{out} already exists (an interrupted run's store, put in place now); pass "
                "--overwrite to replace it"
            )
    write_store(out, keys, maps, overwrite=overwrite, fmt=fmt, **fields)
    return summary


def _is_this_import(out: Path, keys, maps, fields) -> bool:
    """Whether the store at ``out`` holds exactly what this import would write: the same
    keys, method, labels and content (compared through its recorded checksums)."""
    store = open_store(out)
    if not store.has_checksums or store.method != fields["method"]:
        return False
    if store.attrs.get("keys_sha256") != keys_digest(keys):
        return False
    ok = fields.get("ok", np.ones(len(keys), dtype=bool))
    maps16, status = checked_rows(keys, 0, len(keys), maps, ok)
    labels = fields.get("labels")
    found = checksums.damaged_chunks(store.attrs["checksums"], maps16, status,
                                     keys_as_bytes(keys), labels)  # fmt: skip
    return not found


def _as_shown(text: str, read_path: Path, source: Path) -> str:
    """A message about a file read from an unpacked archive, naming the archive instead
    (``maps.tar.gz/n01440764/a.npy`` for a member)."""
    if Path(read_path) == source:
        return text
    return text.replace(str(read_path), str(source))


def _checked_keys_and_maps(raw: RawMaps, source, images, resize, normalize):
    """(keys matched to the images, float32 maps [N, 14, 14]); ImportProblems listing every
    unreadable file, bad map, unmatched or duplicate key at once."""
    problems = list(raw.problems)
    if raw.attrs is not None:  # our own store: copied as it is
        maps = np.stack(raw.maps).astype(np.float32) if raw.maps else np.zeros((0, GRID, GRID))
    else:
        maps, map_problems = check_and_stack(raw, resize, normalize)
        problems += map_problems
    keys = list(raw.keys)
    if images is not None:
        keys, key_problems = match_keys_to_images(keys, images)
        problems += key_problems
    seen: dict[str, str] = {}
    for i, key in enumerate(keys):
        if key is None:
            continue
        if key in seen:
            problems.append(f"duplicate key {key} (from {seen[key]} and {raw.origin(i)})")
        seen.setdefault(key, raw.origin(i))
    if problems:
        raise ImportProblems(source, problems)
    if not keys:
        raise StoreError(f"{source}: holds no maps")
    return keys, maps


def _fields_of_our_store(raw: RawMaps, order) -> dict:
    """write_store's fields for a copy of one of our stores (rows in ``order``)."""
    attrs = dict(raw.attrs)
    return {
        "method": attrs.get("method", "imported"),
        "attrs": attrs,
        "labels": None if raw.labels is None else raw.labels[order],
        "ok": raw.status[order] != STATUS_FAILED,
        "errors": attrs.get("failed", {}),
        "image_identity": None if raw.image_identity is None else raw.image_identity[order],
    }


def _fields_of_foreign_maps(raw: RawMaps, source: Path, resize, normalize) -> dict:
    """write_store's fields for maps of unknown origin: where they came from and what was done."""
    origin = {
        "path": source.name,
        "kind": raw.kind,
        "sha256": file_sha256(source) if source.is_file() else None,
        "resized": bool(resize),
        "normalized": bool(normalize),
    }
    attrs = {
        "params": {},
        "model": {"architecture": "unknown (imported)"},
        "preprocessing": "unknown (imported)",
        "source": origin,
    }
    return {"method": "imported", "attrs": attrs}
