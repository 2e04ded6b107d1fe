"""Class-balanced few-shot subsets of a labelled image list, reproducible from a seed.

- ``shots=N``: exactly N images of every class (a class with fewer than N is an error).
- ``percent=P``: every class is sampled at the same rate, ``max(1, round(P / 100 * n_c))``
  images of a class with ``n_c`` images (ImageNet's 1% = about 12-13 images per class).
Each class draws from its own generator seeded with ``(seed, class index)``, so a class's pick
does not depend on the other classes, and a smaller subset with the same seed is contained in a
larger one (the first N of the same permutation).

``training_subset`` picks what a probe trains on: every image, the images a list file names
(``attgmae.eval.subsets``: the standard ImageNet 1% / 10% lists, a fixed subset whatever the
seed) or the seeded per-class sample above; ``subset_sha256`` fingerprints the pick.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from attgmae.core.errors import InputError
from attgmae.eval.subsets import read_subset_file, subset_indices


def fewshot_indices(
    labels, *, shots: int | None = None, percent: float | None = None, seed: int = 0
) -> np.ndarray:
    """Sorted int64 indices into ``labels`` ([N] int, -1 = unlabelled, never picked)."""
    if (shots is None) == (percent is None):
        raise InputError("give exactly one of shots or percent")
    if shots is not None and shots < 1:
        raise InputError(f"shots must be >= 1, got {shots}")
    if percent is not None and not 0 < percent <= 100:
        raise InputError(f"percent must be in (0, 100], got {percent}")
    labels = np.asarray(labels, dtype=np.int64)
    picked = []
    for cls in np.unique(labels[labels >= 0]):
        members = np.flatnonzero(labels == cls)  # ascending, independent of any ordering
        if shots is not None:
            if len(members) < shots:
                raise InputError(
                    f"class {cls} has only {len(members)} images, fewer than --shots {shots}"
                )
            count = shots
        else:
            count = max(1, round(percent / 100.0 * len(members)))
        order = np.random.default_rng([seed, int(cls)]).permutation(len(members))
        picked.append(members[order[:count]])
    if not picked:
        raise InputError("no labelled images to pick from")
    return np.sort(np.concatenate(picked))


def training_subset(
    keys,
    labels,
    *,
    subset_file=None,
    shots: int | None = None,
    percent: float | None = None,
    seed: int = 0,
) -> np.ndarray:
    """Sorted int64 indices into ``keys`` / ``labels`` (the training split): those listed in
    ``subset_file``, else a per-class sample (``shots`` or ``percent``), else all of them."""
    if sum(x is not None for x in (subset_file, shots, percent)) > 1:
        raise InputError("give at most one of --subset_file, --shots and --percent")
    if subset_file is not None:
        names = read_subset_file(subset_file)
        return subset_indices(keys, names, source=f"--subset_file {subset_file}")
    if shots is not None or percent is not None:
        return fewshot_indices(labels, shots=shots, percent=percent, seed=seed)
    return np.arange(len(keys), dtype=np.int64)


def subset_sha256(indices) -> str:
    """sha256 of the indices as little-endian int64: equal picks, equal digests."""
    return hashlib.sha256(np.ascontiguousarray(indices, dtype="<i8").tobytes()).hexdigest()


def configured_subset(cfg, split) -> np.ndarray:
    """``training_subset`` of a split (``keys``, ``labels``) as a command's config names it
    (its ``subset_file``, ``shots``, ``percent`` and ``seed``)."""
    return training_subset(
        split.keys,
        split.labels,
        subset_file=cfg.subset_file,
        shots=cfg.shots,
        percent=cfg.percent,
        seed=cfg.seed,
    )


def subset_text(cfg, num_used: int) -> str:
    """The training subset a config names (``subset_file``, ``shots``, ``percent``) in words,
    for figure titles."""
    if cfg.subset_file:
        return f"{num_used} images listed in {Path(cfg.subset_file).name}"
    if cfg.shots is not None:
        return f"{cfg.shots} shot(s) per class ({num_used} images)"
    if cfg.percent is not None:
        return f"{cfg.percent:g}% of each class ({num_used} images)"
    return f"all {num_used} training images"
