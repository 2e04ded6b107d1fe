"""Writes that matter, done one way: write aside, fsync, rename over the target. And sha256.

A reader (or a rerun after a kill) sees either the old file or the whole new one, never a
truncated one. The temporary file sits beside the target (same file system, so the rename is
atomic), is hidden (leading dot), names the writing process, and keeps the target's suffix last
so writers that choose a format by extension (matplotlib, numpy's ``.npz``) write the right one.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from attgmae.core.errors import write_error

# Said after a failed atomic write: the reader's file is the one from before.
KEPT_NOTE = " (the previous file, if any, is kept)"


def temporary_path(path, suffix: str | None = None) -> Path:
    """A fresh hidden name beside ``path`` for writing it aside (ending in ``suffix``, by
    default the path's own)."""
    path = Path(path)
    suffix = path.suffix if suffix is None else suffix
    return path.with_name(f".{path.name}.tmp-{os.getpid()}-{secrets.token_hex(3)}{suffix}")


def remove_stale_temporaries(path) -> list[Path]:
    """Remove what dead writers of ``path`` left beside it (``temporary_path`` names: files, or
    scratch folders made under such a name); returns them. Call it only while holding the lock
    of ``path`` (``attgmae.core.lock.OutputLock``): then no other writer of ``path`` is alive,
    and those names belong to runs that were killed."""
    path = Path(path)
    prefix, mine = f".{path.name}.tmp-", f".{path.name}.tmp-{os.getpid()}-"
    if not path.parent.is_dir():
        return []
    removed = []
    for entry in path.parent.iterdir():
        if not entry.name.startswith(prefix) or entry.name.startswith(mine):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed.append(entry)
    return removed


def fsync_path(path) -> None:
    """Flush a written file (or a folder's entries) to disk."""
    flags = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) if Path(path).is_dir() else os.O_RDONLY
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path) -> Iterator[Path]:
    """``with atomic_path(target) as tmp: write(tmp)``: on success ``tmp`` is flushed to disk and
    renamed over ``target`` (its folder is created if needed); on any exception it is removed
    and ``target`` is left as it was.

    The file system refusing the write (disk full, read-only, no permission, a name too long, a
    file where a folder should be: an OSError here or in the block) becomes one error naming
    ``target`` and the fix (``errors.write_error``: exit 1 for space running out, 2 for a path
    to change). Writers that take a path may fail otherwise: hand them an open file instead
    (``torch.save`` reports a full disk as a RuntimeError, a file object's as an OSError).
    """
    path = Path(path)
    tmp = temporary_path(path)
    with refused_writes_named(path, KEPT_NOTE):
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            yield tmp
            fsync_path(tmp)
            os.replace(tmp, path)
            fsync_path(path.parent)  # the rename itself survives a crash
        finally:
            _remove_quietly(tmp)


@contextmanager
def refused_writes_named(path, note: str = "") -> Iterator[None]:
    """An OSError inside (the file system refusing a write to ``path``) becomes the one error
    that names ``path`` and the fix (``errors.write_error``). ``atomic_path`` uses it; so does
    what a library writes in place (a store's arrays, through zarr or HDF5)."""
    try:
        yield
    except OSError as err:
        raise write_error(err, path, note) from err


def _remove_quietly(tmp: Path) -> None:
    try:
        tmp.unlink(missing_ok=True)
    except OSError:  # (a read-only file system never let it be made)
        pass


def write_bytes_atomic(path, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text_atomic(path, text: str) -> Path:
    return write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path, value, **dumps_kwargs) -> Path:
    """``value`` as JSON (``indent=2`` unless told otherwise) plus a final newline."""
    dumps_kwargs.setdefault("indent", 2)
    return write_text_atomic(path, json.dumps(value, **dumps_kwargs) + "\n")


def file_sha256(path, block_bytes: int = 8 << 20) -> str:
    """Hex sha256 of a file's bytes, read in blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(block_bytes), b""):
            digest.update(block)
    return digest.hexdigest()
