"""Start-up time of every command: ``--help``, ``--version`` and a bad flag, each in a fresh
Python process (what a user waits for before the first line), beside the import time of torch.

    .venv/bin/python benchmarks/startup.py [--rounds 3]

Each figure is the best of ``--rounds`` runs (the least disturbed by other load on the box);
the target is the issue's 1 s. The structure behind it (no torch imported to build a parser) is
tested in tests/test_cli_startup.py; this file only measures.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

from figures import figure

COMMANDS = {
    "attg-maps": "attgmae.cli.maps",
    "attg-train": "attgmae.cli.train",
    "attg-eval": "attgmae.cli.eval",
}
CALLS = {
    "--help": ["--help"],
    "--version": ["--version"],
    "bad flag": ["--no_such_flag"],
}
TARGET_S = 1.0


def wall_s(code: str, rounds: int) -> float:
    """Best wall time of ``python -c code`` over ``rounds`` fresh processes."""
    best = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], capture_output=True, env=os.environ.copy())
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="runs per figure (best kept)")
    args = parser.parse_args()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    note = f"best of {args.rounds}, load average {load:.2f} on {os.cpu_count()} cores"
    figure("python start", wall_s("pass", args.rounds), "s", better="lower", note=note)
    figure("import torch", wall_s("import torch", args.rounds), "s", better="lower", note=note)
    for command, module in COMMANDS.items():
        for call, argv in CALLS.items():
            code = f"import sys; from {module} import main; sys.exit(main({argv!r}))"
            seconds = wall_s(code, args.rounds)
            figure(f"{command} {call}", seconds, "s", TARGET_S, better="lower", note=note)


if __name__ == "__main__":
    main()
