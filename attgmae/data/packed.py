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
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch.utils.data import get_worker_info


@dataclass
class PackedBatch:
    data: torch.Tensor  # uint8 [total]: the items' bytes, one after another
    shapes: list  # per item: its shape (a tuple), or None where there is no item
    ready: list = field(default_factory=list)  # per item: made final in the worker (or empty)

    def __post_init__(self):
        self.ready = list(self.ready) or [False] * len(self.shapes)

    def __len__(self) -> int:
        return len(self.shapes)

    def pin_memory(self) -> PackedBatch:
        """For the DataLoader's ``pin_memory`` (it calls this on batch objects)."""
        return PackedBatch(self.data.pin_memory(), self.shapes, self.ready)

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


def pack(items: list[torch.Tensor | None], budget_bytes: int | None = None,
         finish: Callable[[torch.Tensor], torch.Tensor | None] | None = None) -> PackedBatch:
    """uint8 tensors of any shapes (None for a missing item) -> one PackedBatch. In a loader
    worker the buffer is made in shared memory, as the DataLoader's own collate makes its
    batches: the items are copied once, not again when the batch is sent. Over
    ``budget_bytes``, the largest items are replaced by ``finish(item)`` (smaller final pixels;
    None where it cannot) until the batch fits, and marked ready."""
    items, ready = _within_budget(list(items), budget_bytes, finish)
    present = [item.reshape(-1) for item in items if item is not None]
    total = sum(item.numel() for item in present)
    data = torch.empty(0, dtype=torch.uint8)
    if get_worker_info() is not None:
        data = torch.empty(0, dtype=torch.uint8).set_(torch.UntypedStorage._new_shared(total))
    data = torch.cat(present, out=data.resize_(total)) if present else data.resize_(0)
    return PackedBatch(
        data, [None if item is None else tuple(item.shape) for item in items], ready
    )


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
