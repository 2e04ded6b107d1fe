"""Why stage 1's TokenCut runs below its pool's size (a probe, not a test).

The first H200 check (2026-12-04, docs/benchmarks.md) measured `stage1 tokencut` at 540 img/s
with 6 pool processes whose job costs 1.86 ms per image on one core: about one process's rate,
not six. This probe takes the pool apart on the machine it runs on:

1. the BLAS libraries and their thread counts in this process and in a pool process
   (threadpoolctl's view, after the pool's own initializer pinned them);
2. the pool alone on synthetic graphs (``TokenCutRunner``, 1 and N processes): img/s and the
   ratio N / 1, then the same with OPENBLAS_NUM_THREADS / OMP_NUM_THREADS / MKL_NUM_THREADS = 1
   in the environment the processes are spawned with (BLAS pinned before it loads);
3. stage 1's TokenCut from JPEG files, as planned, without and with those variables.

    python benchmarks/tokencut_pool.py --device cuda --images 4096 --batch_size 256
    python benchmarks/tokencut_pool.py                      # small CPU settings
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import threadpoolctl
from figures import figure
from generate import run_pipeline, write_jpegs
from machine import print_machine

from attgmae.maps.tokencut import TokenCutRunner, pack_bits, patch_adjacency, sample_keys

PINNING = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def blas_threads() -> list[str]:
    """This process's BLAS / OpenMP libraries as 'name (api) threads'."""
    return [f"{Path(info['filepath']).name} ({info['internal_api']}) {info['num_threads']}"
            for info in threadpoolctl.threadpool_info()]  # fmt: skip


def pool_rate(workers: int, packed: np.ndarray, num_patches: int) -> float:
    """img/s of a fresh pool of ``workers`` on ``packed`` graphs (its start-up untimed)."""
    with TokenCutRunner(workers) as runner:
        for future in runner._solve(packed[: 4 * workers], num_patches):  # spawn + imports
            future.result()
        started = time.perf_counter()
        for future in runner._solve(packed, num_patches):
            future.result()
        return len(packed) / (time.perf_counter() - started)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--images", type=int, default=16, help="JPEGs for the stage-1 runs")
    parser.add_argument("--graphs", type=int, default=None, help="graphs for the pool alone")
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--workers", type=int, default=None, help="pool size (default: cores-2)")
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore")
    cores = len(os.sched_getaffinity(0))
    workers = args.workers or max(1, cores - 2)
    graphs = args.graphs or 256 * workers
    print_machine(args.device)
    print(f"threadpoolctl {threadpoolctl.__version__}; here: {'; '.join(blas_threads())}")
    with TokenCutRunner(1) as runner:
        in_pool = runner._pool.submit(blas_threads).result()
    print(f"in a pool process (after its initializer): {'; '.join(in_pool)}")

    keys = sample_keys(graphs)
    packed = pack_bits(patch_adjacency(keys, 0.2).flatten(1)).numpy()
    num_patches = keys.shape[1]
    for label in ("as today", "BLAS env = 1"):
        if label != "as today":
            os.environ.update({name: "1" for name in PINNING})
            with TokenCutRunner(1) as runner:
                pinned = runner._pool.submit(blas_threads).result()
            print(f"in a pool process spawned with {'/'.join(PINNING)}=1: {'; '.join(pinned)}")
        one = pool_rate(1, packed[: graphs // workers], num_patches)
        many = pool_rate(workers, packed, num_patches)
        figure(f"tokencut pool {workers} processes {label}", many, "img/s",
               note=f"one process {one:.0f} img/s; {graphs} synthetic graphs")
        figure(f"tokencut pool {workers} / 1 processes {label}", many / one, "x")
    for name in PINNING:
        os.environ.pop(name)

    with tempfile.TemporaryDirectory() as tmp:
        root = write_jpegs(Path(tmp) / "images", args.images)
        run = argparse.Namespace(device=args.device, batch_size=args.batch_size, num_workers=-1,
                                 tokencut_workers=-1, chunk_rows=2 * args.batch_size)
        for label in ("as today", "BLAS env = 1"):
            if label != "as today":
                os.environ.update({name: "1" for name in PINNING})
            result = run_pipeline(root, Path(tmp) / "maps", ["tokencut"], run)
            figure(f"tokencut stage1 {label}", result.steady_img_per_s or result.img_per_s,
                   "img/s", note=f"{args.images} JPEGs, whole loop {result.img_per_s:.0f} img/s")


if __name__ == "__main__":
    main()
