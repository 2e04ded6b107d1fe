"""How much data a file from outside may declare, checked before anything is allocated or extracted.

An archive's members (zip, tar) and a store's arrays (zarr, HDF5) declare their sizes; a few KB
can declare gigabytes (a zip bomb, a 2 KB ``.zarr.zip`` claiming 20M rows). Real map archives
compress little: our ``.zarr.zip`` exports 1x (chunks are stored, compressed already), float16
maps about 1x, a tar.gz or zip of true-mask ``.npy`` maps about 9x, an npz of all-zero maps
about 5x (measured on the example set). A declaration beyond ``MAX_RATIO`` times the real bytes,
or beyond ``MAX_DECLARED_BYTES`` in all, is refused with a message naming the file or member;
below ``FLOOR_BYTES`` nothing is refused (small archives of constant maps compress far better).
"""

from __future__ import annotations

import os
from pathlib import Path

from .layout import RefusedFileError

MAX_RATIO = 200
FLOOR_BYTES = 256 << 20
MAX_DECLARED_BYTES = 64 << 30  # beyond what an import holds in memory on any machine we know


def real_bytes(path) -> int:
    """Bytes on disk of a file, or of every file under a folder (links not followed)."""
    path = Path(path)
    if not path.is_dir():
        return path.stat().st_size
    total = 0
    for folder, _, names in os.walk(path):
        for name in names:
            try:
                total += os.lstat(os.path.join(folder, name)).st_size
            except OSError:
                pass
    return total


def check_declared(where, declared: int, real: int, what: str = "it") -> None:
    """RefusedFileError when ``declared`` bytes cannot honestly come out of ``real`` bytes."""
    limit = min(max(MAX_RATIO * real, FLOOR_BYTES), MAX_DECLARED_BYTES)
    if declared > limit:
        ratio = f"{declared / real:.0f}x" if real else "from nothing"
        raise RefusedFileError(
            f"{where}: {what} declares {declared:,} bytes, {ratio} its {real:,} bytes on disk; no "
            f"map archive expands beyond {MAX_RATIO}x (or {MAX_DECLARED_BYTES >> 30} GiB): refused "
            "as a decompression bomb or a damaged file. Ask its publisher for a good copy"
        )


class ExpansionBudget:
    """Running total of what an archive's members declare, checked as each one is met (so a
    bomb is stopped at the member that gives it away, before it is written)."""

    def __init__(self, archive, archive_bytes: int):
        self.archive = archive
        self.archive_bytes = archive_bytes
        self.total = 0

    def add(self, member: str, declared: int, compressed: int | None = None) -> None:
        if compressed is not None:  # a zip member says how many bytes hold it
            check_declared(self.archive, declared, compressed, f"member {member!r}")
        self.total += declared
        check_declared(self.archive, self.total, self.archive_bytes, f"up to member {member!r}, it")
