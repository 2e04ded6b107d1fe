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

Killed after 2 or 3, the next run (``finish_interrupted``) redoes 3-5; killed after 4 or during
5, it removes what is left. Interrupted by an exception (Ctrl-C) between 3 and 4, the old store
is moved back before the exception goes on. So the final name holds the old store or the new
one, whole; only a kill -9 in the instant between 3 and 4 of a zarr folder leaves it empty, and
a reader then gets a hint that a rerun finishes. A finalized partial (marker present) is never
deleted: it is finished. Renames stay inside one folder, so each is atomic.
"""

from __future__ import annotations

import os
import shutil
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


def swap_in(path: Path, fmt: str) -> None:
    """Steps 2-5 for a finished inner store."""
    write_text_atomic(partial_of(path) / MARKER, "the inner store is complete\n")
    finish_interrupted(path, fmt)


def finish_interrupted(path: Path, fmt: str) -> bool:
    """Complete a swap that a kill interrupted (steps 3-5); True when there was one."""
    partial = partial_of(path)
    if not (partial / MARKER).exists():
        return False
    inner = inner_of(path, fmt)
    replaced = partial / "replaced"
    try:
        if inner.exists():
            if path.is_dir() and not path.is_symlink():  # the old zarr folder is still in place
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
