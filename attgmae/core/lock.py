"""One writer at a time: an exclusive lock on an output, held for a whole run.

``OutputLock(target)`` locks the hidden file ``.<name>.lock`` beside ``target`` (or, with
``inside=True`` for an output folder, ``target/.lock``) with ``flock``:
the operating system releases it when the holding process ends in any way (kill -9 included), so
a lock left by a dead run is simply taken over; a live holder is named (pid, host, start time,
command) in the error of the second run, which exits 2 before touching anything. The lock files
stay (empty when released), except in an output folder the run made and left empty, which goes
with its lock (``release(drop_empty_folder=True)``): the file is unlinked while still locked,
and a run that opened it just before takes the lock only if its name still leads to the file it
locked (else it locks the new one), so two runs never both get in. Only rank 0 of a torchrun
locks: all ranks of one run count as one writer.
"""

from __future__ import annotations

import datetime as _dt
import errno
import fcntl
import json
import os
import socket
import sys
import warnings
from pathlib import Path

from attgmae.core.errors import InputError, write_error

LOCK_TRIES = 10  # a lock file replaced under us this often means something else is wrong


class OutputLockedError(InputError):
    """Another run is writing the same output."""


def lock_file_of(target, inside: bool = False) -> Path:
    target = Path(str(target).rstrip("/"))
    return target / ".lock" if inside else target.parent / f".{target.name}.lock"


# The lock files this process holds. A forked child (a DataLoader worker) shares the open file
# and with it the lock: killed with -9, the run's orphaned workers would hold its output locked
# until they notice. Each child closes its copies at once (the parent's lock stays: a flock is
# released only when every copy is closed, or by LOCK_UN).
_HELD: set[int] = set()


def _close_held_in_child() -> None:
    for fd in _HELD:
        try:
            os.close(fd)
        except OSError:
            pass
    _HELD.clear()


os.register_at_fork(after_in_child=_close_held_in_child)


class OutputLock:
    def __init__(self, target, what: str = "output", inside: bool = False):
        self.target = Path(str(target).rstrip("/"))
        self.what = what
        self.path = lock_file_of(self.target, inside)
        self.inside = inside
        self._fd: int | None = None

    def acquire(self) -> OutputLock:
        for _ in range(LOCK_TRIES):
            fd = self._lock_once()
            if self._still_named(fd):
                break
            os.close(fd)  # its holder removed it as it ended: lock the file under the name now
        else:
            raise OutputLockedError(f"{self.path}: keeps being replaced while locking it")
        holder = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
            "command": " ".join(sys.argv)[:300],
        }
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(holder) + "\n").encode(), 0)
            os.fsync(fd)
        except OSError as err:  # a full disk: found now, before any work
            os.close(fd)
            raise write_error(err, self.target) from err
        self._fd = fd
        _HELD.add(fd)
        return self

    def _lock_once(self) -> int:
        """The lock file opened (made if needed) and flocked -> its descriptor."""
        try:  # (an output folder that cannot be made, a read-only disk: named, with the fix)
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            raise write_error(err, self.target) from err
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = self._holder(fd)
            os.close(fd)
            raise OutputLockedError(
                f"{self.target} is being written by another run ({holder}); wait for it to "
                f"finish or stop it, or choose another {self.what}"
            ) from None
        except OSError as err:  # a file system without locks (some network mounts)
            if err.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                os.close(fd)
                raise
            warnings.warn(
                f"{self.path}: this file system has no file locks; two runs writing "
                f"{self.target} at once would not be stopped",
                stacklevel=3,
            )
        return fd

    def _still_named(self, fd: int) -> bool:
        """Whether the lock file's name still leads to the file ``fd`` locked."""
        try:
            named, held = os.stat(self.path), os.fstat(fd)
        except FileNotFoundError:
            return False
        return (named.st_dev, named.st_ino) == (held.st_dev, held.st_ino)

    @staticmethod
    def _holder(fd: int) -> str:
        try:
            holder = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
        except (OSError, ValueError):
            holder = {}
        if not holder:
            return "a process that has not written its name yet"
        return (
            f"pid {holder.get('pid')} on {holder.get('host')}, started {holder.get('started')}: "
            f"{holder.get('command', '')}"
        )

    def release(self, drop_empty_folder: bool = False) -> None:
        """Unlock. ``drop_empty_folder``: the output folder (of an ``inside`` lock), if it holds
        nothing but the lock file, is removed with it (the file first, while still locked)."""
        if self._fd is not None and self._fd in _HELD:  # (not in a forked child)
            _HELD.discard(self._fd)
            dropped = drop_empty_folder and self.inside and _holds_only(self.target, self.path)
            if dropped:
                self.path.unlink(missing_ok=True)
            os.ftruncate(self._fd, 0)
            os.close(self._fd)  # closing releases the flock
            if dropped:
                try:
                    self.target.rmdir()
                except OSError:  # another run has begun in it meanwhile: it stays
                    pass
        self._fd = None

    def __enter__(self) -> OutputLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _holds_only(folder: Path, lock_path: Path) -> bool:
    try:
        return [entry.name for entry in os.scandir(folder)] == [lock_path.name]
    except OSError:
        return False
