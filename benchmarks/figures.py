"""Benchmark figures, on disk as soon as they are measured.

``figure(...)`` prints one line (flushed) and appends one JSON line to
``$BENCH_OUT/figures.jsonl`` (flushed and fsynced) when ``BENCH_OUT`` is set: a benchmark killed
by its time limit still leaves every figure it reached. ``python benchmarks/summary.py
$BENCH_OUT`` turns the file into the figure | target | pass/fail table.

Importing this module also makes stdout and stderr line-buffered, so the logs of a killed step
are complete up to its last line.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

sys.stdout.reconfigure(line_buffering=True)
sys.stderr.reconfigure(line_buffering=True)

FIGURES_FILE = "figures.jsonl"


def passed(value: float, target: float | None, better: str) -> bool | None:
    """Whether ``value`` meets ``target`` (None when there is no target)."""
    if target is None:
        return None
    return value >= target if better == "higher" else value <= target


def figure(name: str, value: float, unit: str, target: float | None = None,
           better: str = "higher", note: str = "") -> dict:  # fmt: skip
    """Report one measured figure; ``better`` is 'higher' or 'lower' (for the target)."""
    record = {
        "name": name,
        "value": float(value),
        "unit": unit,
        "target": target,
        "better": better,
        "passed": passed(float(value), target, better),
        "note": note,
        "script": Path(sys.argv[0]).stem,
        "time": time.time(),
    }
    out = os.environ.get("BENCH_OUT")
    if out:  # on disk first: a kill right after the print must not lose it
        Path(out).mkdir(parents=True, exist_ok=True)
        with open(Path(out) / FIGURES_FILE, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
    bound = "" if target is None else f" (target {'>=' if better == 'higher' else '<='} {target:g})"
    print(f"FIGURE {name}: {value:,.4g} {unit}{bound}{'  ' + note if note else ''}", flush=True)
    return record
