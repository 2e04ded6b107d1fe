"""The random ablation map: a pure function of (seed, key), uniform per patch, in [0, 1]."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np

from attgmae.maps.random_map import key_seed, keyed_random_maps

KEYS = [f"n0144{i:04d}/img_{i}.JPEG" for i in range(40)]


def test_same_key_same_map_whatever_the_batch():
    whole = keyed_random_maps(KEYS, seed=3)
    shuffled_order = np.random.default_rng(0).permutation(len(KEYS))
    shuffled = keyed_random_maps([KEYS[i] for i in shuffled_order], seed=3)
    np.testing.assert_array_equal(shuffled, whole[shuffled_order])
    np.testing.assert_array_equal(keyed_random_maps(KEYS[5:6], seed=3)[0], whole[5])


def test_seed_and_key_change_the_map():
    assert not np.allclose(keyed_random_maps(KEYS[:1], seed=0), keyed_random_maps(KEYS[:1], seed=1))
    maps = keyed_random_maps(KEYS, seed=0)
    assert len({m.tobytes() for m in maps}) == len(KEYS)


def test_range_and_uniformity():
    maps = keyed_random_maps([f"k{i}" for i in range(500)], seed=0)
    assert maps.shape == (500, 14, 14) and maps.dtype == np.float32
    flat = maps.reshape(500, -1)
    np.testing.assert_array_equal(flat.min(1), 0.0)
    np.testing.assert_array_equal(flat.max(1), 1.0)
    histogram, _ = np.histogram(flat, bins=10, range=(0, 1))
    expected = flat.size / 10
    assert np.abs(histogram - expected).max() < 0.05 * expected


def test_stable_across_processes_and_hash_seeds():
    """Python's hash() is salted per process; the map must not be."""
    code = ("from attgmae.maps.random_map import keyed_random_maps, key_seed;"
            "print(key_seed('a/b.jpg', 7), float(keyed_random_maps(['a/b.jpg'], 7).sum()))")
    outputs = set()
    for hash_seed in ("1", "2"):
        env = dict(os.environ, PYTHONHASHSEED=hash_seed)
        result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                                text=True, check=True)
        outputs.add(result.stdout.strip())
    here = f"{key_seed('a/b.jpg', 7)} {float(keyed_random_maps(['a/b.jpg'], 7).sum())}"
    assert outputs == {here}


def test_empty_batch():
    assert keyed_random_maps([], seed=0).shape == (0, 14, 14)
