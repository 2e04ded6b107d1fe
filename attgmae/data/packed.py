"""A batch of variable-size uint8 tensors in one buffer, for the trip out of a loader worker.

Full-size decoded images (or JPEG bytes) differ in size, so they cannot be stacked; sent as a
list, each would travel as its own shared-memory segment and file descriptor (thousands in
flight with 15 workers of 256 images: past the usual open-file limit). Packed, a batch is one
segment; ``items`` cuts it back into views, on the device in one copy when asked.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch.utils.data import get_worker_info


@dataclass
class PackedBatch:
    data: torch.Tensor  # uint8 [total]: the items' bytes, one after another
    shapes: list  # per item: its shape (a tuple), or None where there is no item

    def __len__(self) -> int:
        return len(self.shapes)

    def pin_memory(self) -> PackedBatch:
        """For the DataLoader's ``pin_memory`` (it calls this on batch objects)."""
        return PackedBatch(self.data.pin_memory(), self.shapes)

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


def pack(items: list[torch.Tensor | None]) -> PackedBatch:
    """uint8 tensors of any shapes (None for a missing item) -> one PackedBatch. In a loader
    worker the buffer is made in shared memory, as the DataLoader's own collate makes its
    batches: the items are copied once, not again when the batch is sent."""
    present = [item.reshape(-1) for item in items if item is not None]
    total = sum(item.numel() for item in present)
    data = torch.empty(0, dtype=torch.uint8)
    if get_worker_info() is not None:
        data = torch.empty(0, dtype=torch.uint8).set_(torch.UntypedStorage._new_shared(total))
    data = torch.cat(present, out=data.resize_(total)) if present else data.resize_(0)
    return PackedBatch(data, [None if item is None else tuple(item.shape) for item in items])
