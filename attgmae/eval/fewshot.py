"""Class-balanced few-shot subsets of a labelled image list, reproducible from a seed.

- ``shots=N``: exactly N images of every class (a class with fewer than N is an error).
- ``percent=P``: every class is sampled at the same rate, ``max(1, round(P / 100 * n_c))``
  images of a class with ``n_c`` images (ImageNet's 1% = about 12-13 images per class).
Each class draws from its own generator seeded with ``(seed, class index)``, so a class's pick
does not depend on the other classes, and a smaller subset with the same seed is contained in a
larger one (the first N of the same permutation).
"""

from __future__ import annotations

import numpy as np

from attgmae.core.errors import InputError


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
