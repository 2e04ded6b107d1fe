"""The benchmarks' image sets: photo-like JPEGs of ImageNet's size and bitrate
(``attgmae.data.photo_like``: 400 x 390, quality 90, ~106 KB), in class folders.

``count`` files, of which ``unique`` are distinct and written in parallel (one process per core,
into ``<root>_sources``); the files under ``root`` are hard links to them: decoding costs the
same, the set is written in seconds.
"""

from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from PIL import Image

from attgmae.core.resources import available_cores
from attgmae.data.photo_like import write_photo_jpegs


def _write_part(args) -> list[Path]:
    folder, count, seed = args
    return write_photo_jpegs(folder, count, seed=seed)


def photo_set(root, count: int, unique: int = 128, classes: int = 4) -> list[str]:
    """Write ``count`` JPEGs under ``root/<class>/``; -> their keys relative to ``root``."""
    root = Path(root)
    unique = max(1, min(unique, count))
    parts = min(unique, available_cores())
    sizes = [unique // parts + (i < unique % parts) for i in range(parts)]
    sources_dir = root.with_name(root.name + "_sources")  # outside root: not listed as images
    jobs = [(sources_dir / f"part{i}", size, i) for i, size in enumerate(sizes)]
    with ProcessPoolExecutor(parts) as pool:
        sources = [path for part in pool.map(_write_part, jobs) for path in part]
    keys = []
    for i in range(count):
        key = f"n{i % classes:08d}/photo_{i:06d}.JPEG"
        (root / key).parent.mkdir(parents=True, exist_ok=True)
        os.link(sources[i % unique], root / key)
        keys.append(key)
    return keys


def describe(root, keys) -> str:
    """'N photo-like JPEGs W x H, quality 90: mean K KB (b bits per pixel)'."""
    distinct = {os.stat(Path(root) / key).st_ino: Path(root) / key for key in keys}
    sizes = [path.stat().st_size for path in distinct.values()]
    with Image.open(next(iter(distinct.values()))) as img:
        width, height = img.size
    mean = sum(sizes) / len(sizes)
    return (
        f"{len(keys)} photo-like JPEGs ({len(distinct)} distinct) {width} x {height}, quality 90: "
        f"mean {mean / 1000:.1f} KB, {8 * mean / (width * height):.2f} bits per pixel "
        "(ImageNet train: ~110 KB)"
    )
