"""Map store benchmark (not a test): ImageNet-1k-sized synthetic store in each format.

Measures write time (our resumable writer vs one plain array write), size on disk, file count,
full load into memory, and random lookup of batches of 256 keys after loading (binary search on
the in-memory table vs a Python dict of key -> row). Prints one line per figure with the ratio.

    python benchmarks/store.py                # 1,281,167 maps (ImageNet-1k train)
    python benchmarks/store.py --count 100000 # quicker
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from attgmae.store import open_store, write_store
from attgmae.store.layout import normalize_maps
from attgmae.store.verify import verify_store


def synthetic_maps(count: int, seed: int = 0) -> np.ndarray:
    """Smooth blob maps like real attention maps (so compression is realistic), float32."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:14, 0:14].astype(np.float32)
    out = np.empty((count, 14, 14), dtype=np.float32)
    step = 65536
    for start in range(0, count, step):
        n = min(step, count - start)
        cy, cx = rng.uniform(2, 12, (2, n, 1, 1)).astype(np.float32)
        sigma = rng.uniform(1.5, 4, (n, 1, 1)).astype(np.float32)
        blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sigma**2))
        blob += 0.05 * rng.random((n, 14, 14), dtype=np.float32)
        out[start : start + n] = normalize_maps(blob)
    return out


def imagenet_like_keys(count: int) -> list[str]:
    return sorted(
        f"n{c:08d}/n{c:08d}_{i}.JPEG" for i, c in zip(range(count), np.arange(count) % 1000)
    )


def disk_usage(path: Path) -> tuple[int, int]:
    if path.is_file():
        return path.stat().st_size, 1
    files = [p for p in path.rglob("*") if p.is_file()]
    return sum(p.stat().st_size for p in files), len(files)


def plain_write(path: Path, fmt: str, maps: np.ndarray) -> None:
    """Reference: one unsharded array written in one call, no staging, no resume."""
    if fmt == "zarr":
        import zarr

        arr = zarr.create_array(str(path), shape=maps.shape, chunks=(1024, 14, 14), dtype="float16")
        arr[:] = maps.astype(np.float16)
    else:
        import h5py

        with h5py.File(path, "w") as f:
            f.create_dataset(
                "maps",
                data=maps.astype(np.float16),
                chunks=(1024, 14, 14),
                compression="lzf",
                shuffle=True,
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=1_281_167)
    parser.add_argument("--dir", default=None, help="scratch folder (default: a temp folder)")
    parser.add_argument("--lookups", type=int, default=2000, help="batches of 256 to time")
    args = parser.parse_args()

    scratch = Path(args.dir or tempfile.mkdtemp(prefix="attg-bench-store-"))
    scratch.mkdir(parents=True, exist_ok=True)
    print(f"synthetic store of {args.count:,} maps; cpus={os.cpu_count()}; scratch={scratch}")
    maps = synthetic_maps(args.count)
    keys = imagenet_like_keys(args.count)
    rng = np.random.default_rng(1)
    try:
        for fmt, suffix in (("zarr", ".zarr"), ("h5", ".h5")):
            path = scratch / f"bench{suffix}"
            t0 = time.perf_counter()
            write_store(path, keys, maps, method="bench", labels=np.arange(args.count) % 1000)
            write_s = time.perf_counter() - t0
            ref_path = scratch / f"plain{suffix}"
            t0 = time.perf_counter()
            plain_write(ref_path, fmt, maps)
            ref_write_s = time.perf_counter() - t0
            size, files = disk_usage(path)

            t0 = time.perf_counter()
            open_store(path).load(check=False)
            raw_load_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            table = open_store(path).load()  # as training loads it: every chunk checked
            load_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            report = verify_store(path)
            verify_s = time.perf_counter() - t0
            assert report.ok, report.text()

            batches = [
                [keys[i] for i in rng.integers(0, args.count, 256)] for _ in range(args.lookups)
            ]
            t0 = time.perf_counter()
            for batch in batches:
                table.lookup(batch)
            lookup_ms = (time.perf_counter() - t0) / len(batches) * 1e3
            row_of = {k: i for i, k in enumerate(keys)}  # reference: a dict of Python strings
            t0 = time.perf_counter()
            for batch in batches:
                table.maps[[row_of[k] for k in batch]].astype(np.float32)
            ref_lookup_ms = (time.perf_counter() - t0) / len(batches) * 1e3

            print(
                f"[{fmt}] write {write_s:6.2f} s = {args.count / write_s:,.0f} maps/s "
                f"(plain single-array write {ref_write_s:.2f} s, "
                f"ratio {ref_write_s / write_s:.2f}x)"
            )
            print(
                f"[{fmt}] size {size / 2**20:,.1f} MiB in {files} files "
                f"(raw float16 {args.count * 392 / 2**20:,.1f} MiB)"
            )
            print(
                f"[{fmt}] full load {raw_load_s:.2f} s (keys + maps, "
                f"{table.maps.nbytes / 2**20:,.0f} MiB in memory); with the checksums checked, "
                f"as training loads it, {load_s:.2f} s"
            )
            print(
                f"[{fmt}] verify {verify_s:.2f} s = {verify_s / raw_load_s:.2f}x the full load "
                f"(target <= 2x)"
            )
            print(
                f"[{fmt}] lookup of 256 keys {lookup_ms:.3f} ms (dict-of-str reference "
                f"{ref_lookup_ms:.3f} ms, ratio {ref_lookup_ms / lookup_ms:.2f}x; the dict costs "
                f"per-key Python objects that forked workers would copy)"
            )
            shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink()
            shutil.rmtree(ref_path, ignore_errors=True) if ref_path.is_dir() else ref_path.unlink()
    finally:
        if args.dir is None:
            shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
