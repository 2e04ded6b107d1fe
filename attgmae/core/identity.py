"""A cheap identity of an image file, to tell when an image was replaced under the same name.

``(size in bytes, mtime in ns)`` from one ``os.stat``; the file is not read. It is recorded with
whatever is computed from an image (its guidance map, its features) and compared later, so that
an image replaced since is named instead of silently served with the old image's map. Not a
content hash: hashing 1.28M images would cost about as much as decoding them. A copy that keeps
size and mtime (``cp -p``, ``rsync -a``) counts as the same image; one that does not (``cp``
without ``-p``) counts as changed, which errs on the safe side.
"""

from __future__ import annotations

import os

import numpy as np

UNKNOWN = -1  # a row whose identity was never recorded (older stores, imports, unreadable files)


def image_identity(path) -> tuple[int, int]:
    """(size in bytes, mtime in ns) of ``path``; OSError when it cannot be stat'ed."""
    info = os.stat(path)
    return info.st_size, info.st_mtime_ns


def image_identities(root, keys) -> np.ndarray:
    """int64 [N, 2] (size, mtime_ns) of ``root/key`` for each key; UNKNOWN where the file
    cannot be stat'ed (missing, no permission)."""
    root = str(root)
    out = []
    for key in keys:  # ~1-2 us a file when the folders are cached (docs/training.md)
        try:
            info = os.stat(os.path.join(root, str(key)))
            out.append((info.st_size, info.st_mtime_ns))
        except OSError:
            out.append((UNKNOWN, UNKNOWN))
    return np.array(out, dtype=np.int64).reshape(len(keys), 2)


def changed_images(root, keys, recorded, current=None) -> list[str]:
    """The keys whose image under ``root`` is no longer the one ``recorded`` (int64 [N, 2], as
    ``image_identities`` returns, one row per key) describes: another size or mtime, or gone.
    Rows recorded as UNKNOWN are not compared. ``current``: the images' identities now, when
    already stat'ed (to compare several records with one pass over the files)."""
    recorded = np.asarray(recorded, dtype=np.int64).reshape(len(keys), 2)
    known = np.flatnonzero(recorded[:, 0] != UNKNOWN)
    if not len(known):
        return []
    if current is None:
        current = image_identities(root, [keys[i] for i in known])
    else:
        current = np.asarray(current, dtype=np.int64).reshape(len(keys), 2)[known]
    differ = (current != recorded[known]).any(axis=1)
    return [str(keys[i]) for i in known[differ]]
