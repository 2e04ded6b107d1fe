"""Checking a store: layout, values, keys, completeness, and coverage of an image folder."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from attgmae.core.listing import list_images

from .layout import FORMAT_VERSION, GRID, STATUS_FAILED, STATUS_OK, StoreError
from .reader import open_store

EXAMPLES_SHOWN = 5


@dataclass
class VerifyReport:
    path: str
    problems: list[str] = field(default_factory=list)
    facts: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def text(self) -> str:
        lines = [f"{self.path}: {'OK' if self.ok else 'PROBLEMS FOUND'}"]
        lines += [f"  {fact}" for fact in self.facts]
        lines += [f"  problem: {problem}" for problem in self.problems]
        return "\n".join(lines)


def _examples(items) -> str:
    items = list(items)
    shown = ", ".join(items[:EXAMPLES_SHOWN])
    return shown + (f", ... ({len(items)} in all)" if len(items) > EXAMPLES_SHOWN else "")


def verify_store(path, images_root=None, file_list=None) -> VerifyReport:
    report = VerifyReport(str(path))
    try:
        store = open_store(path, allow_incomplete=True)
    except StoreError as err:
        report.problems.append(str(err))
        return report
    report.facts.append(f"method {store.method}, {store.num_rows} maps, format {store.fmt}")
    if store.attrs.get("format_version") != FORMAT_VERSION:
        report.problems.append(
            f"format_version {store.attrs.get('format_version')} "
            f"(this software reads {FORMAT_VERSION})"
        )
    if not store.attrs.get("complete"):
        report.problems.append("store is not marked complete (an interrupted write?)")
    if tuple(store.maps_shape) != (store.num_rows, GRID, GRID):
        report.problems.append(
            f"maps have shape {list(store.maps_shape)}, expected [{store.num_rows}, {GRID}, {GRID}]"
        )
    if store.maps_dtype != "float16":
        report.problems.append(f"maps are {store.maps_dtype}, expected float16")
    if len(store.keys) != store.num_rows or len(store.status) != store.num_rows:
        report.problems.append(
            f"{len(store.keys)} keys and {len(store.status)} status rows for {store.num_rows} maps"
        )
    keys = list(store.keys)
    duplicates = [b for a, b in zip(keys, keys[1:]) if a == b]
    unsorted = [b for a, b in zip(keys, keys[1:]) if b < a]
    if duplicates:
        report.problems.append(f"duplicate keys: {_examples(duplicates)}")
    if unsorted:
        report.problems.append(f"keys not sorted at: {_examples(unsorted)}")

    maps = store.read_all().astype(np.float32)
    finite = np.isfinite(maps).all(axis=(1, 2))
    if not finite.all():
        report.problems.append(
            f"NaN/Inf maps: {_examples(keys[i] for i in np.flatnonzero(~finite))}"
        )
    low = np.where(finite, maps.min(axis=(1, 2)), 0)
    high = np.where(finite, maps.max(axis=(1, 2)), 0)
    out_of_range = np.flatnonzero((low < 0) | (high > 1))
    if len(out_of_range):
        report.problems.append(f"maps outside [0, 1]: {_examples(keys[i] for i in out_of_range)}")
    ok_rows = store.status == STATUS_OK
    if ok_rows.any():
        report.facts.append(
            f"values: mean {maps[ok_rows].mean():.3f}, min {low[ok_rows].min():.3f}, "
            f"max {high[ok_rows].max():.3f}"
        )

    failed = np.flatnonzero(store.status == STATUS_FAILED)
    missing = np.flatnonzero((store.status != STATUS_OK) & (store.status != STATUS_FAILED))
    if len(failed):
        reasons = [f"{keys[i]} ({store.failed.get(keys[i], 'no reason recorded')})" for i in failed]
        report.problems.append(f"{len(failed)} images failed in generation: {_examples(reasons)}")
    if len(missing):
        report.problems.append(
            f"{len(missing)} rows never written: {_examples(keys[i] for i in missing)}"
        )

    if images_root is not None:
        image_keys = set(list_images(images_root, file_list))
        store_keys = set(keys)
        no_map = sorted(image_keys - store_keys)
        no_image = sorted(store_keys - image_keys)
        report.facts.append(f"{len(image_keys)} images under {images_root}")
        if no_map:
            report.problems.append(f"{len(no_map)} images have no map: {_examples(no_map)}")
        if no_image:
            report.problems.append(f"{len(no_image)} maps have no image: {_examples(no_image)}")
    return report


def describe_store(path) -> dict:
    """What ``attg-maps inspect`` prints: identity, parameters and value statistics."""
    store = open_store(path, allow_incomplete=True)
    maps = store.read_all().astype(np.float32)
    ok_rows = store.status == STATUS_OK
    good = maps[ok_rows]
    stats = {}
    if len(good):
        stats = {
            "mean": float(good.mean()),
            "std": float(good.std()),
            "min": float(good.min()),
            "max": float(good.max()),
            "fraction_zero": float((good == 0).mean()),
            "mean_of_image_means": float(good.mean(axis=(1, 2)).mean()),
            "fraction_above_0.5": float((good > 0.5).mean()),
        }
    attrs = store.attrs
    return {
        "path": str(store.path),
        "format": store.fmt,
        "method": store.method,
        "params": attrs.get("params", {}),
        "model": attrs.get("model", {}),
        "preprocessing": attrs.get("preprocessing"),
        "count": store.num_rows,
        "ok": int(ok_rows.sum()),
        "failed": int((store.status == STATUS_FAILED).sum()),
        "complete": bool(attrs.get("complete")),
        "created": attrs.get("created"),
        "software": attrs.get("software", {}),
        "value_stats": stats,
    }
