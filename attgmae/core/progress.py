"""Progress of long phases, readable on a terminal and in a log file alike.

``Progress``: a counter over a known total (images of a feature extraction, of ``generate``,
test images of a k-NN search). On a terminal it is a tqdm bar redrawn at most every 0.5 s; when
its stream is not a terminal (a SLURM log, ``| tee``) it writes whole lines instead, no carriage
returns: one at the first update, one every 30 s (``attg-maps generate``'s interval off a
terminal) and one at the end, each with the count, the rate and the ETA.

``pace``: the end of a training log line, as MAE's MetricLogger shows it: seconds per
iteration, the ETA of the epoch and of the run, and the peak GPU memory on CUDA.
"""

from __future__ import annotations

import math
import sys
import time

from tqdm import tqdm

TERMINAL_INTERVAL_S = 0.5
LOG_INTERVAL_S = 30.0


def on_terminal(stream) -> bool:
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


def duration(seconds: float) -> str:
    """``H:MM:SS`` (``?`` when unknown)."""
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    whole = int(round(seconds))
    return f"{whole // 3600}:{whole % 3600 // 60:02d}:{whole % 60:02d}"


def max_memory_mib(device) -> float | None:
    """Peak memory allocated by torch on a CUDA ``device`` so far (MiB); None elsewhere.
    torch is not imported here: a process that has not imported it uses no GPU."""
    torch = sys.modules.get("torch")
    if torch is None or torch.device(device).type != "cuda" or not torch.cuda.is_available():
        return None
    return torch.cuda.max_memory_allocated(torch.device(device)) / 2**20


def pace(seconds_per_iter: float, iters_left_epoch: int, iters_left_run: int, device=None) -> str:
    """``s/iter 0.512 ETA epoch 0:01:02 run 2:03:04 max mem 1234 MiB`` (memory on CUDA only)."""
    text = (
        f"s/iter {seconds_per_iter:.3f} ETA epoch {duration(seconds_per_iter * iters_left_epoch)}"
        f" run {duration(seconds_per_iter * iters_left_run)}"
    )
    memory = max_memory_mib(device) if device is not None else None
    return text if memory is None else f"{text} max mem {memory:.0f} MiB"


def loop_pace(epoch_started: float, start_iter: int, iteration: int, iters_per_epoch: int,
              epoch: int, epochs: int, device=None) -> str:  # fmt: skip
    """``pace`` of a training loop just after ``iteration`` (0-based) of ``epoch`` (of
    ``epochs``): seconds per iteration averaged since ``epoch_started`` (``time.perf_counter``
    when the epoch started, or resumed, at ``start_iter``), as MAE's MetricLogger averages."""
    per_iter = (time.perf_counter() - epoch_started) / max(iteration + 1 - start_iter, 1)
    left = iters_per_epoch - iteration - 1
    return pace(per_iter, left, left + (epochs - epoch - 1) * iters_per_epoch, device)


class Progress:
    """``done`` out of ``total`` ``unit`` s of the phase ``desc``; ``update(n)`` after each
    batch, ``close()`` (or leave the ``with`` block) at the end. ``enabled`` False: silent (the
    ranks other than 0). ``interval``: seconds between log-file lines (default 30)."""

    def __init__(self, total: int, desc: str, unit: str = "img", *, stream=None,
                 enabled: bool = True, interval: float | None = None):  # fmt: skip
        self.total, self.desc, self.unit = int(total), desc, unit
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled and total > 0
        self.interval = LOG_INTERVAL_S if interval is None else interval
        self.done, self.postfix = 0, ""
        self.started = self.last_line = time.perf_counter()
        self.lines_written, self.reported = 0, 0  # log-file lines so far, the count last shown
        self.bar = None
        if self.enabled and on_terminal(self.stream):
            self.bar = tqdm(total=self.total, desc=desc, unit=unit, file=self.stream,
                            mininterval=TERMINAL_INTERVAL_S, dynamic_ncols=True)  # fmt: skip

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def update(self, n: int = 1) -> None:
        self.done += int(n)
        if self.bar is not None:
            self.bar.update(n)
        elif self.enabled:
            now = time.perf_counter()
            if self.lines_written == 0 or now - self.last_line >= self.interval:
                self._write_line(now)

    def moved_to(self, done: int) -> None:
        """The count is now ``done`` (for callbacks that report a running total)."""
        self.update(done - self.done)

    def set_postfix(self, refresh: bool = False, **values) -> None:
        """Extra ``name=value`` fields shown after the rate (e.g. failed images)."""
        self.postfix = ", ".join(f"{name}={value}" for name, value in values.items())
        if self.bar is not None:
            self.bar.set_postfix(refresh=refresh, **values)

    def line(self, now: float | None = None) -> str:
        """``desc: 1200/5000 img (24%), 312.5 img/s, elapsed 0:00:04, ETA 0:00:12``."""
        elapsed = (time.perf_counter() if now is None else now) - self.started
        rate = self.done / elapsed if elapsed > 0 else float("nan")
        left = (self.total - self.done) / rate if rate > 0 else float("nan")
        text = (
            f"{self.desc}: {self.done}/{self.total} {self.unit} "
            f"({100.0 * self.done / max(self.total, 1):.0f}%), {rate:.1f} {self.unit}/s, "
            f"elapsed {duration(elapsed)}, ETA {duration(left)}"
        )
        return f"{text}, {self.postfix}" if self.postfix else text

    def _write_line(self, now: float) -> None:
        print(self.line(now), file=self.stream, flush=True)
        self.last_line, self.lines_written, self.reported = now, self.lines_written + 1, self.done

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        elif self.enabled and self.done != self.reported:
            self._write_line(time.perf_counter())
        self.enabled = False  # a second close writes nothing
