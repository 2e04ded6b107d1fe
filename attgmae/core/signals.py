"""Preemption: SIGTERM and SIGUSR1 ask a run to save and leave at its next iteration boundary.

SLURM sends SIGTERM before it preempts a job or at its time limit (and SIGKILL ``KillWait``
seconds later); ``#SBATCH --signal=USR1@120`` sends SIGUSR1 that long before the limit. While a
resumable loop runs (inside ``stop_requests()``), either signal only sets a flag: the handler
does nothing else, since a signal can land anywhere, in the middle of a write. The loop asks
``stop_agreed(info)`` at its iteration boundaries; every rank takes part (the maximum of the
flag over the ranks), so all ranks stop at the same iteration, save what resumes the run, and
raise ``preempted(...)``: exit code 75 (``EXIT_PREEMPTED``), which a requeue script can test.
Outside such a loop the signals keep their default action (the process ends; no work in flight
is lost that a rerun would not redo).

Worker processes (DataLoader workers, the TokenCut pool) ignore both signals
(``ignore_stop_signals`` as their initializer): SLURM signals every process of a job step, and a
worker that died would fail the main process before it could save. The main process ends its
workers itself once it has saved.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from attgmae.core.distributed import DistInfo, sum_across_ranks
from attgmae.core.errors import EXIT_PREEMPTED, AttgError

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)

_received: list[int] = []  # stop signals this process got and no run has answered yet
_installed: dict[int, object] = {}  # signal -> the handler to put back
_depth = [0]  # nested stop_requests() (a command running several loops)


class Preempted(AttgError):
    """A run that saved a resumable state and left on SIGTERM / SIGUSR1: exit code 75."""

    exit_code = EXIT_PREEMPTED


def _note(signum, frame) -> None:
    _received.append(signum)


@contextmanager
def stop_requests() -> Iterator[None]:
    """Within: SIGTERM and SIGUSR1 set the stop flag instead of ending the process. (Only the
    main thread may install handlers; elsewhere this does nothing and the signals keep their
    action.)"""
    owner = threading.current_thread() is threading.main_thread()
    if owner:
        if _depth[0] == 0:
            for sig in STOP_SIGNALS:
                _installed[sig] = signal.signal(sig, _note)
        _depth[0] += 1
    try:
        yield
    finally:
        if owner:
            _depth[0] -= 1
            if _depth[0] == 0:
                for sig, handler in _installed.items():
                    signal.signal(sig, handler)
                _installed.clear()


def stop_requested() -> str | None:
    """The name of the first stop signal this process received (None: none)."""
    return signal.Signals(_received[0]).name if _received else None


def stop_agreed(info: DistInfo) -> bool:
    """Whether any rank received a stop signal. A collective when distributed: every rank calls
    it at the same point of its loop."""
    return stop_and_running(info, running=False)[0]


def stop_and_running(info: DistInfo, running: bool) -> tuple[bool, bool]:
    """(any rank received a stop signal, any rank is still ``running``): one collective, for
    loops whose ranks run different numbers of iterations (a rank done with its share keeps
    calling this with ``running=False`` until no rank runs or a stop is agreed)."""
    stop, busy = sum_across_ranks([float(bool(_received)), float(running)], info)
    return stop > 0, busy > 0


def preempted(saved: str) -> Preempted:
    """The error that ends a run stopped by a signal; ``saved`` says what it left to resume
    from. The request is answered: a later loop of the same process does not stop for it."""
    name = stop_requested() or "a stop signal"
    _received.clear()
    return Preempted(
        f"{name} received: stopped after saving {saved}; run the same command again to "
        f"continue (exit code {EXIT_PREEMPTED})"
    )


def ignore_stop_signals(*_worker_id) -> None:
    """Make this (worker) process ignore SIGTERM and SIGUSR1: a DataLoader ``worker_init_fn``
    and a process pool's ``initializer``."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
