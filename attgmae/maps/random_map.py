"""The random ablation map of stage 1: uniform noise per patch, a pure function of (seed, key).

The generator seed is a stable hash of (seed, key) (blake2b, not Python's salted ``hash()``),
so the same key gets the same map in any batch order, process, rank or rerun: the store of
``attg-maps generate --methods random`` is fixed per image (Table 8's random maps). The map is
then min-max normalized like every other method, so its value range is exactly [0, 1]. (Stage 2's
``--guidance random`` instead draws a fresh map each time a sample is loaded:
``attgmae.guidance.fresh_random_map``.)
"""

from __future__ import annotations

import hashlib

import numpy as np

from attgmae.core.constants import MAP_GRID
from attgmae.core.minmax import minmax_numpy


def key_seed(key: str, seed: int) -> int:
    """(key, seed) -> 64-bit generator seed, identical on every machine and Python run."""
    digest = hashlib.blake2b(f"{int(seed)}\x00{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def keyed_random_maps(keys: list[str], seed: int = 0, grid: int = MAP_GRID) -> np.ndarray:
    """keys [B] -> float32 [B, grid, grid] in [0, 1], uniform per patch, min-max normalized."""
    noise = np.zeros((len(keys), grid, grid), np.float32)
    for row, key in enumerate(keys):
        noise[row] = np.random.default_rng(key_seed(key, seed)).random((grid, grid), np.float32)
    return minmax_numpy(noise)


def batch_maps(batch, params: dict) -> np.ndarray:
    """The registry's entry: a MapBatch -> its keys' random maps (no network)."""
    return keyed_random_maps(batch.keys, params["seed"])
