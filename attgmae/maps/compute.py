"""One batch of images -> the maps of every requested method, dispatched through the registry.

``MapComputer`` is built from resolved per-method parameters (``registry.resolve_params``), the
loaded backbones (``load_backbones``) and the precision; it knows no method by name. Each
method's function receives a ``MapBatch``: the images, their keys and labels, and the backbones'
forwards, each run once per batch however many methods use it.
"""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import torch

from attgmae.core.device import HostCopy
from attgmae.core.errors import InputError
from attgmae.maps.registry import BACKBONES, METHODS, backbones_needed, resolve


class MapBatch:
    """What the methods of one batch share.

    images float32 [B, 3, 224, 224] ImageNet-normalized on the device; keys [B] str; labels
    int64 [B] on the device (folder label per image, -1 for none) or None; amp: bf16 autocast.
    """

    def __init__(self, images, keys, labels, models: dict, amp: bool, pools: dict):
        self.images, self.keys, self.labels = images, keys, labels
        self.models, self.amp, self.pools = models, amp, pools
        self._forwards: dict = {}

    def model(self, backbone: str):
        return self.models[backbone]

    def forward(self, backbone: str):
        """The backbone's shared forward outputs for this batch (computed on first use)."""
        if backbone not in self._forwards:
            forward = resolve(BACKBONES[backbone].forward)
            self._forwards[backbone] = forward(self.models[backbone], self.images, amp=self.amp)
        return self._forwards[backbone]

    def pool(self, method: str):
        """The method's worker pool, or None (compute in this process)."""
        return self.pools.get(method)


def load_backbones(methods, weights: dict, random_weights: bool, device, trusted: bool = False):
    """The backbones these methods need, in eval mode on ``device``.

    weights {backbone: file path or None (its pretrained tag)} -> ({backbone: model},
    {backbone: identity dict for the store}). Random weights are seeded by the loader;
    ``trusted``: weights files may be unpickled in full (--trust_checkpoint).
    """
    models, identities = {}, {}
    for backbone in backbones_needed(methods):
        load = resolve(BACKBONES[backbone].load)
        model, identity = load(
            weights=weights.get(backbone), random_weights=random_weights, trusted=trusted
        )
        model = model.eval().to(device)
        if torch.device(device).type == "cuda" and BACKBONES[backbone].channels_last:
            model = model.to(memory_format=torch.channels_last)
        models[backbone], identities[backbone] = model, identity
    return models, identities


@contextmanager
def _onednn_off(active: bool):
    """Turn PyTorch's oneDNN (mkldnn) kernels off inside the block when ``active``."""
    before = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = before and not active
    try:
        yield
    finally:
        torch.backends.mkldnn.enabled = before


class _PendingTensor:
    """A method's maps on the GPU, on their way to the host (``HostCopy``): the loop queues the
    next batch instead of waiting for this one."""

    def __init__(self, maps: torch.Tensor):
        self._copy = HostCopy(maps.float())

    def done(self) -> bool:
        return self._copy.done()

    def result(self) -> np.ndarray:
        return self._copy.numpy()


def _as_maps(value):
    """A method's output as float32 numpy [B, 14, 14], or a pending result (``.done()``,
    ``.result()``): a worker pool's, or a GPU tensor's copy to the host."""
    if hasattr(value, "result"):
        return value
    if isinstance(value, torch.Tensor):
        if value.device.type == "cuda":
            return _PendingTensor(value)
        return value.float().numpy()
    return np.asarray(value, dtype=np.float32)


class MapComputer:
    """Normalized images -> {method: float32 [B, 14, 14] or a pending result (``.done()``,
    ``.result()``)} for the methods of ``params`` ({method: resolved parameters})."""

    def __init__(self, params: dict, models: dict, amp: bool, pool_workers: int = 0,
                 device_pools: bool = False):  # fmt: skip
        """``pool_workers`` > 0: methods with a pool start one of that many processes;
        ``device_pools``: methods that can do that work on the device do it there instead."""
        unknown = [name for name in params if name not in METHODS]
        if unknown:
            raise InputError(f"unknown map method(s) {unknown}; choose from {', '.join(METHODS)}")
        self.params, self.models, self.amp = params, models, amp
        self.functions = {name: resolve(METHODS[name].compute) for name in params}
        self.pools = {}
        for name in params:
            method = METHODS[name]
            if device_pools and method.device_pool is not None:
                self.pools[name] = resolve(method.device_pool)(params[name])
            elif method.pool is not None and pool_workers > 0:
                self.pools[name] = resolve(method.pool)(params[name], pool_workers)

    def compute(self, images: torch.Tensor, keys, labels=None, methods=None) -> dict:
        """images float32 [B, 3, 224, 224] on the device; keys [B]; labels int64 [B] or None;
        ``methods``: a subset of this computer's (default: all)."""
        batch = MapBatch(images, list(keys), labels, self.models, self.amp, self.pools)
        names = list(self.params) if methods is None else list(methods)
        # fp32 on the CPU: oneDNN's convolutions round differently with the number of threads
        # (a one-process run vs torchrun's one thread per rank, another machine); PyTorch's
        # native kernels give the same bits for any thread count (ResNet-50 ~15% slower).
        native = images.device.type == "cpu" and not self.amp
        with _onednn_off(native):
            return {name: self._compute_one(name, batch) for name in names}

    def _compute_one(self, name: str, batch: MapBatch):
        return _as_maps(self.functions[name](batch, self.params[name]))

    def close(self) -> None:
        for pool in self.pools.values():
            pool.close()
        self.pools = {}
