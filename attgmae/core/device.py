"""Which device a command runs on: ``auto``, ``cpu``, ``cuda`` or ``cuda:N`` -> torch.device."""

from __future__ import annotations

import re

import torch

from attgmae.core.constants import PRECISIONS
from attgmae.core.errors import InputError

DEVICE_CHOICES = "auto, cpu, cuda or cuda:N"


def resolve_device(name: str) -> torch.device:
    """``auto`` is CUDA when available, else the CPU; a CUDA device must exist here."""
    name = str(name).strip()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name != "cpu" and not re.fullmatch(r"cuda(:\d+)?", name):
        raise InputError(f"--device {name!r}: use {DEVICE_CHOICES}")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(f"--device {name}: CUDA is not available here; use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise InputError(
                f"--device {name}: this machine shows {torch.cuda.device_count()} CUDA device(s)"
            )
    return device


def rank_device(device: torch.device, local_rank: int, world_size: int) -> torch.device:
    """The device of one rank: a single process keeps ``device``; in a multi-process CUDA run,
    rank ``local_rank`` takes GPU ``local_rank`` modulo the GPUs this process can see (one each
    under SLURM's --gpus-per-task=1, all of the node's under torchrun)."""
    if device.type != "cuda" or world_size <= 1:
        return device
    return torch.device("cuda", local_rank % max(torch.cuda.device_count(), 1))


def use_device(device: torch.device) -> torch.device:
    """Make a CUDA ``device`` with an index this process's current device, so that pinned-memory
    threads, synchronizations and allocations without an explicit device land on it rather than
    on GPU 0; returns ``device``."""
    if device.type == "cuda" and device.index is not None:
        torch.cuda.set_device(device)
    return device


def resolve_precision(precision: str, device) -> str:
    """'auto' -> 'bf16' autocast on CUDA (speed), 'fp32' elsewhere; 'bf16' and 'fp32' as given
    (fp32 reproduces the original code most closely)."""
    if precision not in PRECISIONS:
        raise InputError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "auto":
        return "bf16" if torch.device(device).type == "cuda" else "fp32"
    return precision


class HostCopy:
    """A tensor's copy to the host, started now and waited for only when it is read.

    On CUDA the copy goes into pinned memory with ``non_blocking`` behind the work already
    queued, and an event marks its end: the caller queues the next batch's GPU work at once
    instead of waiting here (``.cpu()`` would wait for the whole queue). ``done()`` asks the
    event without waiting; ``numpy()`` waits for it. A CPU tensor is ready at once.
    """

    def __init__(self, tensor: torch.Tensor):
        self._event = None
        if tensor.device.type == "cuda":
            self._host = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
            self._host.copy_(tensor, non_blocking=True)
            self._event = torch.cuda.Event()
            self._event.record()
        else:
            self._host = tensor.detach()

    def done(self) -> bool:
        return self._event is None or self._event.query()

    def numpy(self):
        if self._event is not None:
            self._event.synchronize()
        return self._host.numpy()
