"""The one user-facing error type: a message to print without a traceback and an exit code.

Every command maps an ``AttgError`` to ``error: <message>`` on stderr and ``exit_code`` in one
place (``attgmae.cli._args.run_main``). Exit codes: 2 bad input (flags, files, data: fix and
rerun), 1 a run that failed (a diverged loss, out of memory), 75 a run that saved its state and
left when asked to by SIGTERM / SIGUSR1 (``attgmae.core.signals``: rerun the same command to
continue; 75 is BSD's EX_TEMPFAIL, "try again later", which requeue scripts can test).
"""

from __future__ import annotations

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
