"""Exact-resume data plumbing: every random draw of a sample comes from ``(seed, epoch, index)``.

Augmentation pipelines draw from the global RNGs of whichever process runs them (timm's
``create_transform``: RandomResizedCrop and RandAugment draw from Python's ``random``, the flip
from torch, RandomErasing from both; other pipelines use numpy). ``SeededSamples`` seeds all
three from a stable hash of ``(seed, epoch, index)`` before each sample (and puts the previous
states back afterwards), so a sample is the same whichever DataLoader worker, rank or resumed run
draws it. Sample order comes from ``EpochSampler`` (``attgmae.data.pretrain_dataset``): it yields
the ``(index, epoch)`` items and starts mid-epoch after a resume.

``stable_seed`` is the one hash: Python's ``hash()`` is salted per process, numpy's
``SeedSequence`` is not. Each use takes its own stream tag so samples, batch hooks (mixup) and
the model's own draws (drop path) never share a seed.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch
from torch.utils.data import Dataset

from attgmae.data.pretrain_dataset import EpochSampler

__all__ = [
    "BATCH_STREAM",
    "MODEL_STREAM",
    "SAMPLE_STREAM",
    "EpochSampler",
    "SeededSamples",
    "seed_everything",
    "seeded",
    "stable_seed",
]

# Stream tags: the first number hashed after the run's seed.
SAMPLE_STREAM, BATCH_STREAM, MODEL_STREAM = 0, 1, 2


def stable_seed(*numbers: int) -> int:
    """A 64-bit seed from non-negative integers, the same in every process and Python run."""
    words = np.random.SeedSequence([int(n) for n in numbers]).generate_state(2, dtype=np.uint32)
    return (int(words[0]) << 32) | int(words[1])


def _seed_cpu(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)  # numpy's legacy global RNG takes 32 bits
    torch.default_generator.manual_seed(seed)


def seed_everything(seed: int) -> None:
    """Seed Python's ``random``, numpy's global RNG and torch's (CPU and every CUDA device)."""
    _seed_cpu(seed)
    torch.manual_seed(seed)


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run a block with ``random``, numpy's and torch's CPU RNG seeded from ``seed``; their
    previous states are put back afterwards (a sample drawn in the main process, with
    ``num_workers=0``, does not disturb the training loop's draws)."""
    saved = random.getstate(), np.random.get_state(), torch.get_rng_state()
    _seed_cpu(seed)
    try:
        yield
    finally:
        random.setstate(saved[0])
        np.random.set_state(saved[1])
        torch.set_rng_state(saved[2])


class SeededSamples(Dataset):
    """``dataset[index]`` drawn with every RNG seeded from ``(seed, epoch, index)``.

    Items are ``(index, epoch)`` pairs, as ``EpochSampler`` yields them; what the wrapped
    dataset returns is passed through unchanged.
    """

    def __init__(self, dataset, seed: int = 0):
        self.dataset = dataset
        self.seed = int(seed)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item):
        index, epoch = item
        with seeded(stable_seed(self.seed, SAMPLE_STREAM, epoch, index)):
            return self.dataset[index]
