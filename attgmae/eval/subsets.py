"""Training subsets named by a list file: the standard ImageNet 1% / 10% splits.

The semi-supervised ImageNet splits (SimCLR's ``1percent.txt`` / ``10percent.txt``, also used by
BYOL, DINO, iBOT, MSN) list one training image per line by file name, e.g.
``n01440764_10026.JPEG``. A line may also be a key (``n01440764/n01440764_10026.JPEG``, the path
under ``train/``). Blank lines and ``#`` comments are skipped. Seeded per-class sampling instead
of a list: ``attgmae.eval.fewshot``.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

from attgmae.core.errors import InputError


def read_subset_file(path) -> list[str]:
    """The image names listed in ``path``, in file order; InputError for a missing or empty
    file or a name listed twice."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"subset file {path} not found")
    lines = path.read_text(encoding="utf-8").splitlines()
    names = [x.strip() for x in lines if x.strip() and not x.strip().startswith("#")]
    if not names:
        raise InputError(f"subset file {path} lists no images")
    twice = [name for name, count in Counter(names).items() if count > 1]
    if twice:
        raise InputError(f"subset file {path} lists {len(twice)} images twice, e.g. {twice[0]}")
    return names


def subset_indices(keys, names, source="subset file") -> np.ndarray:
    """Sorted int64 indices into ``keys`` (paths under the split folder, '/'-separated) of the
    listed ``names``: a name is matched as a whole key, else as a key's file name.

    InputError naming ``source`` when a name matches no image or (a bare file name found in
    several class folders) more than one.
    """
    by_key = {key: i for i, key in enumerate(keys)}
    by_file = defaultdict(list)
    for i, key in enumerate(keys):
        by_file[key.rsplit("/", 1)[-1]].append(i)
    picked, missing, ambiguous = [], [], []
    for name in names:
        name = name.replace("\\", "/").removeprefix("./")
        if name in by_key:
            picked.append(by_key[name])
        elif len(by_file.get(name, ())) == 1:
            picked.append(by_file[name][0])
        else:
            (ambiguous if by_file.get(name) else missing).append(name)
    if missing:
        raise InputError(
            f"{source}: {len(missing)} of {len(names)} listed images are not in the training "
            f"set (first: {', '.join(missing[:3])})"
        )
    if ambiguous:
        raise InputError(
            f"{source}: {ambiguous[0]} names images in several class folders; list it as "
            f"<class>/{ambiguous[0]}"
        )
    return np.unique(np.asarray(picked, dtype=np.int64))
