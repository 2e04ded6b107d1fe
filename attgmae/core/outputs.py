"""Claiming an output before any work: its path checked, then locked for the whole run.

Every command that writes calls ``claim_output`` first (one call, on every rank of a torchrun):

- ``check_output_path(path, kind)``: every folder above the output is a folder; the output is
  what is wanted or absent (``folder``: a run's output folder; ``store``: a ``.zarr`` folder;
  ``file``: a file, an ``.h5`` store); each name fits the file system's NAME_MAX with room for
  the hidden temporary name written beside it, the whole path its PATH_MAX; and the place is
  writable: a hidden probe file is created there and removed (a read-only disk, no permission).
  Each problem is one ``InputError`` (exit 2) naming the path and the fix, before anything is
  computed.
- ``OutputLock`` (``core.lock``): one writer at a time, held by rank 0 for the whole block
  (inside an output folder, beside a store or file), and ``prepare`` run under it.

All ranks learn whether rank 0 succeeded and stop together (the other ranks with a pointer to
rank 0's message), so no rank is left waiting at a collective for one that has exited.
"""

from __future__ import annotations

import os
import secrets
import stat
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from attgmae.core.errors import InputError, write_error
from attgmae.core.files import temporary_path
from attgmae.core.lock import OutputLock

if TYPE_CHECKING:  # (core.distributed imports torch; the store's commands should not)
    from attgmae.core.distributed import DistInfo

KINDS = ("folder", "store", "file")
PATH_ROOM = 256  # bytes a path must leave for the files written inside an output folder
PID_ROOM = 8  # a temporary name holds a pid: room for one longer than this process's


def _limits(folder: Path) -> tuple[int, int]:
    """(NAME_MAX, PATH_MAX) of the file system holding ``folder``."""
    try:
        return os.pathconf(folder, "PC_NAME_MAX"), os.pathconf(folder, "PC_PATH_MAX")
    except (OSError, ValueError):
        return 255, 4096


def _check_name(step: Path, written_beside: bool, name_max: int, shown: str) -> None:
    size = len(os.fsencode(step.name))
    need = size + (len(temporary_path(step).name) - len(step.name) + PID_ROOM) * written_beside
    if need > name_max:
        room = f" with room for the temporary name written beside it ({need} bytes)"
        raise InputError(
            f"{shown}: the name {step.name[:40]}... is {size} bytes long, more than the "
            f"{name_max} this file system allows{room if written_beside else ''}: choose a "
            "shorter name"
        )


def _probe_writable(folder: Path, path: Path) -> None:
    """Create and remove a hidden file in ``folder``: a read-only disk or a folder without
    write permission is found now, not after hours of work."""
    probe = folder / f".attg-probe-{os.getpid()}-{secrets.token_hex(3)}"
    try:
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        os.unlink(probe)
    except OSError as err:
        raise write_error(err, path) from err


def check_output_path(path, kind: str = "folder", flag: str | None = None) -> Path:
    """``path`` checked as an output of ``kind`` (see the module's docstring); returns it.

    InputError (exit 2) naming the path (and ``flag``, the option that gave it) and the fix.
    """
    if kind not in KINDS:
        raise ValueError(f"kind {kind!r}: one of {KINDS}")
    path = Path(path)
    shown = f"{flag} {path}" if flag else str(path)
    absolute = Path(os.path.abspath(path))
    name_max, path_max = _limits(Path(absolute.anchor))
    if len(os.fsencode(str(absolute))) + PATH_ROOM > path_max:
        raise InputError(
            f"{shown}: the path is {len(os.fsencode(str(absolute)))} bytes long; this file "
            f"system allows {path_max} with the files written inside: choose a shorter path"
        )
    deepest = Path(absolute.anchor)  # the deepest folder that exists
    for step in [*reversed(absolute.parents[:-1]), absolute]:
        is_output = step == absolute
        _check_name(step, is_output and kind != "folder", name_max, shown)
        if step.parent != deepest:
            continue  # below a folder still to be made: nothing there yet
        try:
            mode = os.stat(step).st_mode
        except FileNotFoundError:
            if os.path.islink(step) and not (is_output and kind == "file"):  # (a file replaces it)
                raise InputError(
                    f"{shown}: {step} is a link to {os.readlink(step)}, which does not exist: "
                    "make its target, remove the link or choose another path"
                ) from None
            continue
        except OSError as err:
            raise write_error(err, path) from err
        if stat.S_ISDIR(mode):
            deepest = step
            name_max, path_max = _limits(step)
        elif not is_output:
            raise InputError(f"{shown}: {step} is a file, not a folder: choose another path")
        elif kind != "file":
            raise InputError(f"{shown} is a file, not a folder: remove it or choose another path")
    if kind == "file" and deepest == absolute:
        raise InputError(f"{shown} is a folder, not a file: choose another name")
    # The probe goes where the first write goes: inside an output folder that exists, else
    # the deepest folder above (where the output, its lock and its temporary copies appear).
    _probe_writable(absolute.parent if kind != "folder" and deepest == absolute else deepest, path)
    return path


def _as_list(paths) -> list[Path]:
    if paths is None or isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    return [Path(p) for p in paths if p]


@contextmanager
def claim_output(paths: str | os.PathLike | Iterable | None, flag: str, kind: str = "folder",
                 info: DistInfo | None = None,
                 prepare: Callable[[], None] | None = None) -> Iterator[None]:  # fmt: skip
    """``with claim_output(cfg.output_dir, "--output_dir", info=info): run()``: rank 0 checks
    each path (``check_output_path``) and holds its lock (``OutputLock``: inside a folder,
    beside a store or file) for the whole block, then runs ``prepare`` under the locks; every
    rank learns whether that worked, and all raise together. An output folder this claim made
    and the block left empty (bad input found late) is removed again: a failed run leaves
    nothing. ``paths``: one or several (None or "": nothing to claim); ``info``: None for a
    single process."""
    locks: list[OutputLock] = []
    made: set[Path] = set()
    failed, error = True, None
    try:
        if info is None or info.is_main:
            try:
                for path in _as_list(paths):
                    check_output_path(path, kind, flag)
                    if kind == "folder" and not path.exists():
                        made.add(path)
                    locks.append(OutputLock(path, flag, inside=kind == "folder").acquire())
                if prepare is not None:
                    prepare()
            except Exception as err:  # noqa: BLE001 (re-raised below, after the ranks agree)
                error = err
        if info is not None and info.distributed:
            from attgmae.core.distributed import max_across_ranks

            if max_across_ranks(int(error is not None), info) and error is None:
                raise InputError(f"rank 0 could not claim {flag}: its error says why")
        if error is not None:
            raise error
        yield
        failed = False
    finally:
        for lock in reversed(locks):
            lock.release(drop_empty_folder=failed and lock.target in made)
