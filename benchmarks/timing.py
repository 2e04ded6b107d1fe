"""Timing helpers the benchmarks share: a DataLoader's img/s, and the best of alternating rounds
(so that neither side of a comparison always runs first, on a warmer or a busier machine)."""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import partial


def loader_throughput(loader, limit_batches: int | None = None) -> float:
    """Images per second through ``loader`` after its first batch (worker start-up excluded);
    a batch is a dict with ``image`` or a tuple whose first item is the images."""
    it = iter(loader)
    next(it)
    t0, images = time.perf_counter(), 0
    for n, batch in enumerate(it):
        first = batch["image"] if isinstance(batch, dict) else batch[0]
        images += first.shape[0]
        if limit_batches and n + 1 >= limit_batches:
            break
    return images / (time.perf_counter() - t0)


def best_of_rounds(measures: dict[str, Callable[[], float]], rounds: int) -> dict[str, float]:
    """{name: the highest of ``rounds`` calls of ``measures[name]``}, the order reversed every
    other round."""
    best = dict.fromkeys(measures, 0.0)
    for r in range(rounds):
        for name in list(measures) if r % 2 == 0 else list(measures)[::-1]:
            best[name] = max(best[name], measures[name]())
    return best


def best_loader_rounds(loaders: dict, rounds: int) -> dict[str, float]:
    """{name: best img/s of ``loaders[name]``} over alternating rounds."""
    measures = {name: partial(loader_throughput, loader) for name, loader in loaders.items()}
    return best_of_rounds(measures, rounds)
