"""A batch of variable-size uint8 tensors in one buffer, for the trip out of a loader worker.

Full-size decoded images (or JPEG bytes) differ in size, so they cannot be stacked; sent as a
list, each would travel as its own shared-memory segment and file descriptor (thousands in
flight with 15 workers of 256 images: past the usual open-file limit). Packed, a batch is one
segment; ``items`` cuts it back into views, on the device in one copy when asked.

Full-size pixels weigh what the photo weighs (a 12 MP photo 36 MB, 80 ImageNet images), so a
batch may be given a budget, the bytes its /dev/shm was planned for: above it the worker makes
the final pixels of the largest items itself (``finish``: PIL's resize, the same pixels the
device makes) until the batch fits, and marks them ``ready``. A class of large photos then
costs those workers some PIL time instead of a worker killed by a full /dev/shm (SIGBUS).

A worker keeps its shared buffers and reuses them once the main process has released them
(``PackedBatch.release``: the consumers ``device_decode.device_pixels`` and
``DeviceEvalPixels.on_device`` do when they have copied the pixels out, ``pin_memory`` once it
has): a fresh segment costs the kernel a zeroed page per 4 KiB in the worker, which made a
one-worker loader of full-size pixels 1.1-1.3x slower on the dev box (docs/benchmarks.md).
Each kept buffer's last byte says whether the main process holds it; a worker keeps at most
KEPT_BUFFERS, each with HEADROOM over its batch but within the budget, so /dev/shm holds what
the batches in flight would hold anyway.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch.utils.data import get_worker_info

KEPT_BUFFERS = 6  # per worker: the batch it makes, those on their way (prefetch 4), a hand-off
HEADROOM = 1.25  # a kept buffer's room over the batch it was made for (batches vary in size)


@dataclass
class PackedBatch:
    data: torch.Tensor  # uint8 [total]: the items' bytes, one after another
    shapes: list  # per item: its shape (a tuple), or None where there is no item
    ready: list = field(default_factory=list)  # per item: made final in the worker (or empty)
    held: torch.Tensor | None = None  # uint8 [1], 1 while a kept buffer is out of its worker

    def __post_init__(self):
        self.ready = list(self.ready) or [False] * len(self.shapes)

    def __len__(self) -> int:
        return len(self.shapes)

    def pin_memory(self) -> PackedBatch:
        """For the DataLoader's ``pin_memory`` (it calls this on batch objects): a pinned copy;
        the worker's buffer goes back to it."""
        pinned = PackedBatch(self.data.pin_memory(), self.shapes, self.ready)
        self.release()
        return pinned

    def release(self) -> None:
        """Give a kept buffer back to its worker, which will write a later batch into it: call
        once nothing reads this batch's items any more (views of them become invalid). A batch
        in memory of its own (packed in this process, pinned, or past KEPT_BUFFERS) stays as it
        is: nothing will write over it, so it can be read again (a benchmark's repeats)."""
        if self.held is not None:
            self.held.fill_(0)
            self.held, self.data = None, torch.empty(0, dtype=torch.uint8)

    def items(self, device=None) -> list[torch.Tensor | None]:
        """The items as views of the buffer (moved to ``device`` first, in one copy)."""
        data = self.data if device is None else self.data.to(device, non_blocking=True)
        items, offset = [], 0
        for shape in self.shapes:
            if shape is None:
                items.append(None)
                continue
            size = math.prod(shape)
            items.append(data[offset : offset + size].view(shape))
            offset += size
        return items


def pack(
    items: list[torch.Tensor | None],
    budget_bytes: int | None = None,
    finish: Callable[[torch.Tensor], torch.Tensor | None] | None = None,
) -> PackedBatch:
    """uint8 tensors of any shapes (None for a missing item) -> one PackedBatch. In a loader
    worker the buffer is in shared memory, as the DataLoader's own collate makes its batches
    (the items are copied once, not again when the batch is sent), and is one the worker keeps:
    the batch's consumer releases it (``PackedBatch.release``). Over
    ``budget_bytes``, the largest items are replaced by ``finish(item)`` (smaller final pixels;
    None where it cannot) until the batch fits, and marked ready."""
    items, ready = _within_budget(list(items), budget_bytes, finish)
    present = [item.reshape(-1) for item in items if item is not None]
    total = sum(item.numel() for item in present)
    data, held = torch.empty(total, dtype=torch.uint8), None
    if get_worker_info() is not None:
        data, held = _shared_buffer(total, budget_bytes)
    if present:
        torch.cat(present, out=data)
    shapes = [None if item is None else tuple(item.shape) for item in items]
    return PackedBatch(data, shapes, ready, held)


_kept: dict[int, list[torch.Tensor]] = {}  # worker pid -> its kept buffers (uint8, flag last)


def _shared_buffer(
    total: int, budget_bytes: int | None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """uint8 [total] in shared memory and its flag (set: held by the main process): a kept
    buffer the main process has released, else a new one, kept while there are fewer than
    KEPT_BUFFERS; past them a segment of its own and no flag (what a consumer that never
    releases gets once its worker's kept buffers are all out)."""
    kept = _kept.setdefault(os.getpid(), [])  # per process: a fork does not share the parent's
    free = next((i for i, buffer in enumerate(kept) if int(buffer[-1]) == 0), None)
    room = max(total, min(int(total * HEADROOM), budget_bytes or total))
    if free is None:
        if len(kept) >= KEPT_BUFFERS:
            return _new_shared(total), None
        kept.append(_new_shared(room + 1))
        free = len(kept) - 1
    elif kept[free].numel() - 1 < total:  # too small for this batch: a larger one replaces it
        kept[free] = _new_shared(room + 1)
    buffer = kept[free]
    buffer[-1] = 1
    return buffer[:total], buffer[-1:]


def _new_shared(size: int) -> torch.Tensor:
    return torch.empty(0, dtype=torch.uint8).set_(torch.UntypedStorage._new_shared(size))


def _within_budget(items: list, budget_bytes: int | None, finish) -> tuple[list, list[bool]]:
    ready = [False] * len(items)
    if budget_bytes is None or finish is None:
        return items, ready
    total = sum(item.numel() for item in items if item is not None)
    largest_first = sorted(
        (i for i, item in enumerate(items) if item is not None), key=lambda i: -items[i].numel()
    )
    for i in largest_first:
        if total <= budget_bytes:
            break
        final = finish(items[i])
        if final is not None and final.numel() < items[i].numel():
            total -= items[i].numel() - final.numel()
            items[i], ready[i] = final, True
    return items, ready
