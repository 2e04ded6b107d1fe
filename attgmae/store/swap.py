"""Putting a finished store in place, in an order a rerun always recovers from.

A store is written inside ``<store>.partial/`` (``store.zarr`` or ``store.h5``). Finalizing:

1. the inner store gets its final attributes (``complete: true``);
2. the marker ``<store>.partial/finalized`` is written: from here the new store is whole, and a
   rerun finishes the swap instead of resuming or recomputing;
3. an old zarr folder under the final name (``--overwrite``) is moved into
   ``.partial/replaced`` (a rename cannot replace a folder that holds files);
4. the inner store is renamed to the final name (an old HDF5 file is replaced by this one
   rename, atomically);
5. ``.partial/`` is removed, the marker last.

On Linux steps 3-4 of a zarr folder are one atomic exchange of the two names
(``renameat2(RENAME_EXCHANGE)``): the final name holds the old store or the new one at every
instant, a kill -9 included; the marker records the new store's inode, so a rerun after the
exchange knows the store in place is the new one. Elsewhere (another system, a file system
without the exchange) they are two renames: killed after 2 or 3, the next run
(``finish_interrupted``) redoes 3-5; killed after 4 or during 5, it removes what is left;
interrupted by an exception (Ctrl-C) between 3 and 4, the old store is moved back before the
exception goes on, and only a kill -9 in that instant leaves the name empty (a reader then gets
a hint that a rerun finishes). An old HDF5 file is replaced by one rename, atomically. A
finalized partial (marker present) is never deleted: it is finished. Renames stay inside one
folder, so each is atomic.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import shutil
import sys
from pathlib import Path

from attgmae.core.files import fsync_path, write_text_atomic

MARKER = "finalized"


def partial_of(path: Path) -> Path:
    return Path(f"{path}.partial")


def inner_of(path: Path, fmt: str) -> Path:
    return partial_of(path) / f"store.{fmt}"


def _remove(entry: Path) -> None:
    shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()


def remove_partial(partial: Path) -> None:
    """Remove a partial folder, its marker last (a kill midway leaves the marker, so the rerun
    still knows the store is finished and does not mistake the rest for a run to resume)."""
    if not partial.exists():
        return
    for entry in partial.iterdir():
        if entry.name != MARKER:
            _remove(entry)
    (partial / MARKER).unlink(missing_ok=True)
    partial.rmdir()


def _inode(path: Path) -> list[int]:
    info = os.lstat(path)
    return [info.st_dev, info.st_ino]


def _new_store_inode(marker: Path) -> list[int] | None:
    """The inode of the new store that ``marker`` records (None: a marker of an older version,
    which records none)."""
    try:
        return json.loads(marker.read_text()).get("new_store")
    except (ValueError, AttributeError):
        return None


_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def exchange(a: Path, b: Path) -> bool:
    """Swap the names ``a`` and ``b`` in one atomic step (Linux ``renameat2`` with
    ``RENAME_EXCHANGE``); False, having done nothing, where the system or file system has no
    such exchange."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):  # (a C library without it)
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p,
                          ctypes.c_uint]  # fmt: skip
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EXDEV):
        return False
    raise OSError(code, os.strerror(code), str(a), None, str(b))


def mark_finished(path: Path, fmt: str) -> None:
    """Step 2: the marker, recording the inode of the finished inner store."""
    record = {"complete": True, "new_store": _inode(inner_of(path, fmt))}
    write_text_atomic(partial_of(path) / MARKER, json.dumps(record) + "\n")


def swap_in(path: Path, fmt: str) -> None:
    """Steps 2-5 for a finished inner store."""
    mark_finished(path, fmt)
    finish_interrupted(path, fmt)


def finish_interrupted(path: Path, fmt: str) -> bool:
    """Complete a swap that a kill interrupted (steps 3-5); True when there was one."""
    partial = partial_of(path)
    if not (partial / MARKER).exists():
        return False
    inner = inner_of(path, fmt)
    replaced = partial / "replaced"
    new_store = _new_store_inode(partial / MARKER)
    in_place = new_store is not None and path.exists() and _inode(path) == new_store
    try:
        if inner.exists() and not in_place:  # (in place: what is left at inner is the old one)
            old_folder = path.is_dir() and not path.is_symlink()
            # One atomic exchange where there is one (the old folder then sits at inner)...
            if not (old_folder and exchange(inner, path)):
                if old_folder:  # ... else the old zarr folder is moved aside first
                    if replaced.exists():  # an old store moved aside earlier and put back since
                        _remove(replaced)
                    os.rename(path, replaced)
                os.replace(inner, path)
            fsync_path(path.parent)
    except BaseException:
        _put_back(path, replaced)
        raise
    remove_partial(partial)
    return True


def _put_back(path: Path, replaced: Path) -> None:
    """After an interruption between steps 3 and 4: the old store back under its name (the
    marker stays, so the rerun finishes the swap)."""
    if not path.exists() and replaced.exists():
        os.rename(replaced, path)
