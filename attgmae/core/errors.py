"""The one user-facing error type: a message to print without a traceback and an exit code.

Every command maps an ``AttgError`` to ``error: <message>`` on stderr and ``exit_code`` in one
place (``attgmae.cli._args.run_main``). Exit codes: 2 bad input (flags, files, data: fix and
rerun), 1 a run that failed (a diverged loss, out of memory), 75 a run that saved its state and
left when asked to by SIGTERM / SIGUSR1 (``attgmae.core.signals``: rerun the same command to
continue; 75 is BSD's EX_TEMPFAIL, "try again later", which requeue scripts can test).

``write_error`` is the one translation of a write the file system refused (an OSError: disk
full, read-only, no permission, a name too long...) into such an error, naming the path and the
fix: ``WriteFailed`` (exit 1) when space ran out midway, ``UnwritablePath`` (exit 2) for a path
to change. The atomic writer (``core.files``), the output checks (``core.outputs``) and the lock
use it; ``run_main`` turns any OSError still escaping into ``os_error_line``'s one line.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_PREEMPTED = 75  # EX_TEMPFAIL: stopped by SIGTERM / SIGUSR1 after saving; rerun to continue


class AttgError(Exception):
    """A failure the user can act on; ``exit_code`` 1 unless a subclass or the caller says."""

    exit_code = EXIT_FAILED

    def __init__(self, message: str = "", exit_code: int | None = None):
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class InputError(AttgError, ValueError):
    """Bad input (a flag, a path, a file, the data): exit code 2.

    Also a ValueError, so library callers that catch ValueError keep working. One positional
    argument is enough to rebuild it, as DataLoader workers do when they re-raise it.
    """

    exit_code = EXIT_BAD_INPUT


def user_message(err: BaseException) -> str:
    """The message to show for ``err``. An error re-raised from a DataLoader worker carries the
    worker's whole traceback; its last line holds the original message."""
    text = str(err).strip()
    if "Original Traceback" not in text:
        return text
    last = text.splitlines()[-1]
    name, sep, message = last.partition(": ")
    return message if sep and name.replace(".", "").replace("_", "").isalnum() else last


# A write the file system refused, by errno: what the user can do about it. Space running out
# stops a run midway (exit 1: free space, rerun, it resumes); the rest are a path to change
# (exit 2).
_NO_SPACE = "free space there or choose another path, then rerun"
_WRITE_ADVICE = {
    errno.ENOSPC: _NO_SPACE,
    errno.EDQUOT: "your disk quota is used up: " + _NO_SPACE,
    errno.EFBIG: "the file is larger than this file system allows: choose another path",
    errno.EIO: "the disk reported an input/output error: check it, or choose another path",
    errno.EROFS: "the file system is read-only: choose a path on a writable one",
    errno.EACCES: "no permission to write there: choose another path, or change its permissions",
    errno.EPERM: "no permission to write there: choose another path, or change its permissions",
    errno.ENAMETOOLONG: "a name is too long for this file system: choose a shorter one",
    errno.ENOTDIR: "a part of the path is a file, not a folder: choose another path",
    errno.EISDIR: "a folder is where a file is wanted: choose another path",
    errno.EEXIST: "something else is in the way: remove it or choose another path",
    errno.ELOOP: "the path has a link loop: choose another path",
}
_RUN_STOPPED = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO}


class WriteFailed(AttgError):
    """A write that failed midway (the disk full): exit 1; the last complete files are kept."""


class UnwritablePath(InputError):
    """An output path that cannot be written (read-only, no permission, a file in the way)."""


def _one_line(err: OSError) -> str:
    """The reason an OSError gives, on one line (HDF5's messages span several)."""
    return " ".join((err.strerror or str(err) or type(err).__name__).split())


def write_advice(err: OSError) -> str:
    """What to do about a refused write ("" when the errno says nothing we can act on)."""
    return _WRITE_ADVICE.get(err.errno, "")


def write_error(err: OSError, path, note: str = "") -> AttgError:
    """``err``, raised while writing ``path``, as one line naming the path and the fix; the file
    that failed is named too when it is another one (a scratch file, a source being copied)."""
    path = Path(path)
    # The files the error names (a copy names its source and its destination): the target
    # itself, or its hidden temporary copy beside it (core.files.temporary_path), goes unsaid.
    named = [Path(os.fsdecode(name)) for name in (err.filename, err.filename2) if name]
    ours = not named or any(
        name == path or name.name.startswith(f".{path.name}.tmp-") for name in named
    )
    also = "" if ours else f" ({named[0]})"
    reason = _one_line(err)
    advice = write_advice(err)
    message = f"cannot write {path}{also}: {reason}" + (f"; {advice}" if advice else "") + note
    stopped = err.errno in _RUN_STOPPED or err.errno not in _WRITE_ADVICE
    return (WriteFailed if stopped else UnwritablePath)(message)


def os_error_line(err: OSError) -> str:
    """An OSError no layer turned into an AttgError, as ``<path>: <strerror>`` (and the fix)."""
    where = " -> ".join(str(name) for name in (err.filename, err.filename2) if name)
    reason = _one_line(err)
    advice = write_advice(err)
    return (f"{where}: {reason}" if where else reason) + (f" ({advice})" if advice else "")
