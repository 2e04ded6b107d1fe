"""Checking a store: layout, content checksums, values, keys, completeness, an export's
``.sha256`` manifest, and coverage of an image folder.

Vectorized throughout (keys compared as fixed-width bytes, values per row with numpy): verifying
ImageNet-1k's 1.28M maps costs little more than loading them (docs/benchmarks.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from attgmae.core.files import file_sha256
from attgmae.core.listing import list_images

from .layout import FORMAT_VERSION, GRID, STATUS_FAILED, STATUS_OK, StoreError
from .reader import MapStore, open_store

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
    shown = ", ".join(str(item) for item in items[:EXAMPLES_SHOWN])
    return shown + (f", ... ({len(items)} in all)" if len(items) > EXAMPLES_SHOWN else "")


def _keys_at(store: MapStore, rows) -> list[str]:
    return [store.keys[i] for i in rows]


def check_manifest(path: Path) -> tuple[str | None, str | None]:
    """(fact, problem) about ``PATH.sha256`` (written by ``attg-maps export``), if present."""
    manifest = Path(f"{path}.sha256")
    if not manifest.is_file() or not Path(path).is_file():
        return None, None
    recorded = manifest.read_text().split()
    actual = file_sha256(path)
    if not recorded or recorded[0] != actual:
        return None, (
            f"{manifest} says sha256 {recorded[0] if recorded else '(empty)'}, the file has "
            f"{actual}: the file changed since it was exported (a damaged copy?)"
        )
    return f"sha256 matches {manifest.name}", None


def _check_layout(store: MapStore, report: VerifyReport) -> None:
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
    key_bytes = store.key_bytes
    if len(key_bytes) != store.num_rows or len(store.status) != store.num_rows:
        report.problems.append(
            f"{len(key_bytes)} keys and {len(store.status)} status rows for {store.num_rows} maps"
        )
        return
    # UTF-8 byte order is code-point order: sorted, unique keys compare as bytes.
    duplicates = np.flatnonzero(key_bytes[1:] == key_bytes[:-1]) + 1
    unsorted = np.flatnonzero(key_bytes[1:] < key_bytes[:-1]) + 1
    if len(duplicates):
        report.problems.append(f"duplicate keys: {_examples(_keys_at(store, duplicates))}")
    if len(unsorted):
        report.problems.append(f"keys not sorted at: {_examples(_keys_at(store, unsorted))}")


FLOAT16_ONE = 0x3C00  # the bits of 1.0; larger bits are > 1, inf, NaN or negative
FLOAT16_MINUS_ZERO = 0x8000


def _rows_outside_unit_range(maps16: np.ndarray) -> np.ndarray:
    """Row indices of float16 maps [N, 14, 14] with a value outside [0, 1] or not finite.

    float16 arithmetic is slow in numpy; its bits are not: a non-negative float16 orders like
    its bits, so one integer max per row finds the candidates (-0.0 aside, checked exactly).
    """
    bits = maps16.reshape(len(maps16), -1).view(np.uint16)
    candidates = np.flatnonzero(bits.max(axis=1) > FLOAT16_ONE)
    exact = maps16[candidates].astype(np.float32)  # [C, 14, 14]
    bad = ~(np.isfinite(exact) & (exact >= 0) & (exact <= 1)).all(axis=(1, 2))
    return candidates[bad]


def _value_range(maps16: np.ndarray) -> tuple[float, float]:
    """(min, max) of float16 maps whose values all lie in [0, 1], from their bits."""
    bits = maps16.reshape(-1).view(np.uint16)
    high = np.uint16(bits.max()).view(np.float16)
    low = 0.0 if (bits == FLOAT16_MINUS_ZERO).any() else np.uint16(bits.min()).view(np.float16)
    return float(low), float(high)


def _check_values(store: MapStore, maps16: np.ndarray, report: VerifyReport) -> None:
    outside = _rows_outside_unit_range(maps16)
    finite = np.isfinite(maps16[outside].astype(np.float32)).all(axis=(1, 2))
    if (~finite).any():
        report.problems.append(f"NaN/Inf maps: {_examples(_keys_at(store, outside[~finite]))}")
    if finite.any():
        bad = _keys_at(store, outside[finite])
        report.problems.append(f"maps outside [0, 1]: {_examples(bad)}")
    ok_rows = store.status == STATUS_OK
    ok_rows[outside] = False
    if ok_rows.any():
        good = maps16[ok_rows]
        low, high = _value_range(good)
        mean = float(np.mean(good, dtype=np.float32))
        report.facts.append(f"values: mean {mean:.3f}, min {low:.3f}, max {high:.3f}")
    failed = np.flatnonzero(store.status == STATUS_FAILED)
    missing = np.flatnonzero((store.status != STATUS_OK) & (store.status != STATUS_FAILED))
    if len(failed):
        reasons = [
            f"{key} ({store.failed.get(key, 'no reason recorded')})"
            for key in _keys_at(store, failed)
        ]
        report.problems.append(f"{len(failed)} images failed in generation: {_examples(reasons)}")
    if len(missing):
        report.problems.append(
            f"{len(missing)} rows never written: {_examples(_keys_at(store, missing))}"
        )


def verify_store(path, images_root=None, file_list=None) -> VerifyReport:
    report = VerifyReport(str(path))
    fact, problem = check_manifest(Path(path))
    report.facts += [fact] if fact else []
    report.problems += [problem] if problem else []
    try:
        store = open_store(path, allow_incomplete=True)
        report.facts.append(f"method {store.method}, {store.num_rows} maps, format {store.fmt}")
        _check_layout(store, report)
        maps16 = store.read_all()
        damaged = store.damage(maps16)
    except StoreError as err:
        report.problems.append(str(err))
        return report
    if store.has_checksums:
        report.facts.append(
            f"checksums: {len(store.attrs['checksums']['data'])} chunks of "
            f"{store.attrs['checksums']['rows']} rows, "
            f"{'all match' if not damaged else f'{len(damaged)} ranges damaged'}"
        )
    else:
        report.facts.append(
            "no checksums recorded (written before stores carried them): damage cannot be told "
            "from content; `attg-maps export` and `import` of it give a store that has them"
        )
    report.problems += [f"damaged: {problem}" for problem in damaged]
    _check_values(store, maps16, report)
    if images_root is not None:
        image_keys = set(list_images(images_root, file_list))
        store_keys = set(store.keys)
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
        "checksums": "yes" if store.has_checksums else "none (an older store)",
        "value_stats": stats,
    }
