"""Stage 1's compute loop: the chunks each store still needs -> batches -> maps -> staged chunks.

The writers' ``pending_chunks()`` drive what is computed: a killed run resumes where it stopped,
and under torchrun each rank gets whole shards. Batches never straddle a chunk, so a row's batch
(and thus its floating-point result) is the same in a fresh, a resumed and a multi-rank run.
TokenCut's eigensolves run in a process pool (or batched on the GPU) while the next batch is on
the GPU, and every method's maps come back to the host with non-blocking copies (nothing in the
loop waits for the device per batch): a chunk is written once all its rows are in and its
pending results are done. On SIGTERM / SIGUSR1 (``attgmae.core.signals``) the ranks agree after
a batch, write the chunks they have whole, drop the rest and raise ``Preempted`` (exit code
75): the rerun resumes from the staged chunks.
"""

from __future__ import annotations

import contextlib
import functools
import sys
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from attgmae.core import distributed
from attgmae.core.constants import MAP_GRID
from attgmae.core.errors import InputError
from attgmae.core.progress import Progress
from attgmae.core.signals import (
    ignore_stop_signals,
    preempted,
    stop_and_running,
    stop_requests,
)
from attgmae.data.device_decode import device_pixels
from attgmae.data.map_inputs import (
    DecodedImages,
    collate_decoded,
    collate_payloads,
    normalize_batch,
)
from attgmae.data.shard_access import ShardImages
from attgmae.data.shards import is_shard_source, open_shards
from attgmae.store import MapStoreWriter, StoreError

STOP_CHECK_BATCHES = 8  # under torchrun: batches between two agreements on a stop signal


def store_path(out_dir, method: str, fmt: str) -> Path:
    return Path(out_dir) / f"{method}.{fmt}"


def plan_batches(chunks, batch_size: int) -> list[tuple[int, np.ndarray]]:
    """(chunk_index, rows) per batch, cut inside each chunk: a row's batch does not depend on
    which chunks are still pending, so resumed and multi-rank runs repeat the very same batches
    (and floating-point results)."""
    plan = []
    for chunk_index, start, stop in chunks:
        for batch_start in range(start, stop, batch_size):
            plan.append((chunk_index, np.arange(batch_start, min(batch_start + batch_size, stop))))
    return plan


def open_writers(cfg, keys, labels, attrs_by_method, info, update=()) -> dict:
    """One MapStoreWriter per method. Rank 0 creates or resumes the partial stores first (and
    unstages the chunks of images that changed since: ``store/refresh.py``); the other ranks
    attach after a barrier. ``update``: methods whose complete store is updated in place of
    being recomputed (only the chunks of its changed images are)."""
    layout = {"chunk_rows": cfg.chunk_rows, "shard_rows": cfg.shard_rows}
    layout = {name: rows for name, rows in layout.items() if rows}  # else the store's defaults
    writers = {}

    def open_all():
        for method, attrs in attrs_by_method.items():
            writers[method] = MapStoreWriter(
                store_path(cfg.out_dir, method, cfg.fmt),
                keys,
                method=method,
                attrs=attrs,
                labels=labels,
                overwrite=cfg.overwrite,
                fmt=cfg.fmt,
                rank=info.rank,
                world_size=info.world_size,
                images_root=None if is_shard_source(cfg.images_root) else cfg.images_root,
                update=method in update,
                **layout,
            )

    error = None
    if info.is_main:
        try:
            open_all()
        except StoreError as err:
            error = str(err)
    # Every rank learns whether rank 0 succeeded before attaching (no rank left waiting).
    if distributed.max_across_ranks(int(error is not None), info):
        raise InputError(error or "rank 0 could not open the stores")
    if not info.is_main:
        open_all()
    return writers


class ChunkBuffer:
    """One chunk's maps as its batches arrive; written once every row is in and done."""

    def __init__(self, chunk_index: int, start: int, stop: int, methods: list[str]):
        self.chunk_index, self.start, self.stop = chunk_index, start, stop
        self.methods = methods
        self.maps = {
            m: np.zeros((stop - start, MAP_GRID, MAP_GRID), dtype=np.float32) for m in methods
        }
        self.ok = np.zeros(stop - start, dtype=bool)
        self.image_identity = np.full((stop - start, 2), -1, dtype=np.int64)  # (size, mtime_ns)
        self.errors: dict[str, str] = {}
        self.pending = []  # (method, offset, pending result) from a worker pool
        self.rows_in = 0

    def add(self, rows: np.ndarray, results: dict, ok: np.ndarray, errors: dict,
            image_identity: np.ndarray) -> None:  # fmt: skip
        offset = int(rows[0]) - self.start
        self.image_identity[offset : offset + len(rows)] = image_identity
        for method, value in results.items():
            if hasattr(value, "result"):
                self.pending.append((method, offset, value))
            else:
                self.maps[method][offset : offset + len(rows)] = value
        self.ok[offset : offset + len(rows)] = ok
        self.errors.update(errors)
        self.rows_in += len(rows)

    def complete(self) -> bool:
        """Every row of the chunk is in (results may still be pending in the pool)."""
        return self.rows_in == self.stop - self.start

    def ready(self) -> bool:
        return self.complete() and all(value.done() for _, _, value in self.pending)

    def write(self, writers: dict) -> None:
        for method, offset, value in self.pending:
            maps = value.result()  # [b, 14, 14]
            self.maps[method][offset : offset + len(maps)] = maps
        self.pending = []
        for method in self.methods:
            # Failed images were run as black frames; their rows are stored as zeros.
            maps = np.where(self.ok[:, None, None], self.maps[method], 0.0)
            writers[method].write_chunk(
                self.chunk_index, maps, self.ok, self.errors, self.image_identity
            )


def _chunks_to_compute(writers: dict) -> tuple[dict, dict]:
    """The union of every writer's pending chunks: ({chunk: (start, stop)}, {chunk: methods
    missing it}); each chunk computes only the methods that still need it."""
    bounds: dict[int, tuple[int, int]] = {}
    needs: dict[int, list[str]] = {}
    for method, writer in writers.items():
        for chunk_index, start, stop in writer.pending_chunks():
            if bounds.setdefault(chunk_index, (start, stop)) != (start, stop):
                raise RuntimeError(f"stores disagree on the rows of chunk {chunk_index}")
            needs.setdefault(chunk_index, []).append(method)
    return bounds, needs


def device_work(cfg) -> str:
    """What the device does of the decode + resize (``map_inputs.ON_DEVICE``) for ``cfg``'s
    ``--decode`` and (resolved) ``--resize``."""
    if cfg.decode == "gpu":
        return "decode"
    return "resize" if cfg.resize == "gpu" else ""


def decoded_images(images_root, keys, on_device: str = ""):
    """The images decoded and resized by row (``on_device``: what the workers send for the
    device to finish, ``device_work``): from a folder, or from tar shards' bytes."""
    if is_shard_source(images_root):
        return ShardImages(open_shards(images_root), keys, on_device)
    return DecodedImages(images_root, keys, on_device)


@dataclass
class LoopTiming:
    """Images and seconds of one rank's compute loop, whole and after its first chunk (the
    steady state: worker processes started, models warm)."""

    images: int = 0
    seconds: float = 0.0
    steady_images: int = 0
    steady_seconds: float = 0.0


def compute_pending(cfg, keys, labels, writers, computer, device, info, workers) -> LoopTiming:
    """Compute and stage every chunk this rank still owes. -> its LoopTiming.

    labels: int64 [N] folder label per key (-1 for none), handed to the methods per batch;
    workers: the loader's workers and prefetch (``attgmae.core.resources.WorkerPlan``).
    Preempted (exit 75) after a stop signal, once the whole chunks computed are staged.
    """
    bounds, needs = _chunks_to_compute(writers)
    plan = plan_batches([(c, *bounds[c]) for c in sorted(bounds)], cfg.batch_size)
    num_todo = sum(len(rows) for _, rows in plan)
    if not plan and not info.distributed:  # (a rank without work still joins the agreements)
        return LoopTiming()
    if not info.distributed and num_todo < len(keys):
        print(f"resuming: {len(keys) - num_todo} of {len(keys)} images already done",
              file=sys.stderr, flush=True)  # fmt: skip
    with stop_requests():  # SIGTERM / SIGUSR1: keep the whole chunks, leave
        timing, dropped = _compute_plan(
            cfg, keys, labels, writers, computer, device, info, workers, plan, bounds, needs
        )
    if dropped is not None:
        note = f"; the {dropped} images of unfinished chunks are redone" if dropped else ""
        raise preempted(f"the whole chunks computed so far (in the stores' .partial folders{note})")
    return timing


def _compute_plan(cfg, keys, labels, writers, computer, device, info, workers, plan, bounds,
                  needs) -> tuple[LoopTiming, int | None]:  # fmt: skip
    """The batch loop -> (timing, None), or (timing, images dropped) after a stop signal that
    every rank agreed on after a batch (a rank done with its share keeps joining the agreements
    until no rank runs)."""
    num_todo = sum(len(rows) for _, rows in plan)
    on_device = device_work(cfg)
    loader = DataLoader(
        decoded_images(cfg.images_root, keys, on_device),
        batch_sampler=[rows.tolist() for _, rows in plan],
        num_workers=workers.loader_workers if plan else 0,
        collate_fn=(
            functools.partial(collate_payloads, budget_bytes=workers.batch_bytes)
            if on_device else collate_decoded
        ),
        pin_memory=device.type == "cuda",
        prefetch_factor=workers.prefetch if plan and workers.loader_workers else None,
        worker_init_fn=ignore_stop_signals,  # the main process answers SIGTERM / SIGUSR1
    )
    bar = Progress(num_todo, "generate", enabled=cfg.progress and info.is_main)
    labels_on_device = torch.as_tensor(labels, dtype=torch.int64, device=device)
    buffers: deque[ChunkBuffer] = deque()
    computed = failed = 0
    started = time.perf_counter()
    steady_from, steady_images_before = None, 0
    stopped = False
    # Ranks agree on a stop signal every few batches (a collective waits for the device; one
    # process looks after every batch).
    check_every = STOP_CHECK_BATCHES if info.distributed else 1
    with contextlib.closing(bar):
        batches = enumerate(zip(plan, loader), start=1)
        for done, ((chunk_index, planned_rows), (rows_tensor, pixels, reasons, stats)) in batches:
            rows = rows_tensor.numpy()
            assert np.array_equal(rows, planned_rows), "loader and plan out of step"
            if steady_from is None and chunk_index != plan[0][0]:  # the first chunk: warm-up
                steady_from, steady_images_before = time.perf_counter(), computed
            if not buffers or buffers[-1].chunk_index != chunk_index:
                buffers.append(ChunkBuffer(chunk_index, *bounds[chunk_index], needs[chunk_index]))
            batch_keys = [keys[r] for r in rows]
            if on_device:  # the payloads: (nvjpeg and) the resize on the device
                pixels, reasons = device_pixels(pixels, reasons, batch_keys, device)
            ok = np.array([reason is None for reason in reasons])
            errors = {keys[r]: why for r, why in zip(rows, reasons) if why is not None}
            images = normalize_batch(pixels, device=device)  # float32 [B, 3, 224, 224]
            # From the loader's (pinned) rows: no blocking copy from Python numbers per batch.
            batch_labels = labels_on_device[rows_tensor.to(device, non_blocking=True)]
            results = computer.compute(images, batch_keys, batch_labels, needs[chunk_index])
            buffers[-1].add(rows, results, ok, errors, stats)
            computed, failed = computed + len(rows), failed + len(errors)
            bar.update(len(rows))
            if failed:
                bar.set_postfix(failed=failed, refresh=False)
            # Write finished chunks in order; wait on the pool only when two chunks are queued.
            while buffers and (buffers[0].ready() or len(buffers) > 2):
                buffers.popleft().write(writers)
            if done % check_every == 0:
                stopped = stop_and_running(info, running=True)[0]
                if stopped:
                    break
        while buffers and (not stopped or buffers[0].complete()):
            buffers.popleft().write(writers)
        while not stopped:
            stopped, running = stop_and_running(info, running=False)
            if not running:
                break
    ended = time.perf_counter()
    if steady_from is None:  # a single chunk: no steady state to time
        timing = LoopTiming(computed, ended - started)
    else:
        timing = LoopTiming(
            computed, ended - started, computed - steady_images_before, ended - steady_from
        )
    return timing, (sum(b.rows_in for b in buffers) if stopped else None)
