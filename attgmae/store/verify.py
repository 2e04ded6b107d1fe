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
from attgmae.core.identity import UNKNOWN, changed_images
from attgmae.core.listing import list_images

from .layout import READABLE_VERSIONS, STATUS_FAILED, STATUS_OK, StoreError
from .reader import MapStore, open_store
from .values import rows_outside_unit_range, value_range

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
    if store.attrs.get("format_version") not in READABLE_VERSIONS:
        report.problems.append(
            f"format_version {store.attrs.get('format_version')} "
            f"(this software reads {', '.join(map(str, READABLE_VERSIONS))})"
        )
    if not store.attrs.get("complete"):
        report.problems.append("store is not marked complete (an interrupted write?)")
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


def _check_values(store: MapStore, maps16: np.ndarray, report: VerifyReport) -> None:
    outside = rows_outside_unit_range(maps16)
    finite = np.isfinite(maps16[outside].astype(np.float64)).all(axis=(1, 2))
    if (~finite).any():
        report.problems.append(f"NaN/Inf maps: {_examples(_keys_at(store, outside[~finite]))}")
    if finite.any():
        bad = _keys_at(store, outside[finite])
        report.problems.append(f"maps outside [0, 1]: {_examples(bad)}")
    ok_rows = store.status == STATUS_OK
    ok_rows[outside] = False
    if ok_rows.any():
        good = maps16[ok_rows]
        low, high = value_range(good)
        mean = float(np.mean(good, dtype=np.float64))
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
        _check_images(store, images_root, file_list, report)
    return report


def _check_images(store: MapStore, images_root, file_list, report: VerifyReport) -> None:
    """Images without a map, maps without an image, and images replaced since their map."""
    image_keys = set(list_images(images_root, file_list))
    store_keys = set(store.keys)
    no_map = sorted(image_keys - store_keys)
    no_image = sorted(store_keys - image_keys)
    report.facts.append(f"{len(image_keys)} images under {images_root}")
    if no_map:
        report.problems.append(f"{len(no_map)} images have no map: {_examples(no_map)}")
    if no_image:
        report.problems.append(f"{len(no_image)} maps have no image: {_examples(no_image)}")
    try:
        recorded = store.image_identity
    except StoreError as err:
        report.problems.append(str(err))
        return
    known = np.zeros(store.num_rows, bool) if recorded is None else recorded[:, 0] != UNKNOWN
    if not known.any():
        report.facts.append(
            "no image identities recorded (a store from before they were, or imported): "
            "an image replaced under the same name cannot be told"
        )
        return
    rows = [row for row in np.flatnonzero(known) if store.keys[row] in image_keys]
    changed = changed_images(images_root, list(store.keys[rows]), recorded[rows])
    report.facts.append(f"image identities recorded for {int(known.sum())} maps")
    if changed:
        report.problems.append(
            f"{len(changed)} images changed since their maps were computed (size or mtime): "
            f"{_examples(changed)}; `attg-maps generate` with the same command recomputes them"
        )


def describe_store(path) -> dict:
    """What ``attg-maps inspect`` prints: identity, parameters and value statistics."""
    store = open_store(path, allow_incomplete=True)
    maps = store.read_all()
    maps = maps.astype(np.float32 if maps.dtype == np.float16 else np.float64)
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
