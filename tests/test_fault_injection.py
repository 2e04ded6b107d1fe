"""Fault injection: kill -9 and SIGTERM at seeded random moments of `attg-maps generate`,
`attg-maps import --overwrite` and `attg-train` (real subprocesses on the tiny example), then
the same command again: the result equals an uninterrupted run's (stores:
maps, keys, status, attributes but the creation time, bit for bit; training: the weights, bit
for bit, and log.txt but its timing). Import, replacing a store, must leave the old store or
the new one at every instant, never neither (or a finished new store that the rerun swaps in).

A moment is an observable point of the run (the Nth training line; generate's first staged
chunk; import's partial folder appearing) plus a seeded random delay; a signal that comes after
the process ended is a moment too (the rerun then has nothing to redo). The six interrupted runs
go at once (one watching thread each) while this process computes the uninterrupted references:
start-up (torch, timm) is most of a run's time.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from attgmae.checkpoint import load_checkpoint
from attgmae.cli.maps import main as maps_main
from attgmae.cli.train import main as train_main
from attgmae.core.errors import EXIT_PREEMPTED
from attgmae.store import open_store

SIGNALS = {"kill-9": signal.SIGKILL, "sigterm": signal.SIGTERM}
ENV = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}


def rng_for(*names: str) -> np.random.Generator:
    return np.random.default_rng([sum(map(ord, name)) for name in names])


def interrupt(command: list[str], signum: int, moment, delay: float, timeout: float = 240):
    """Run ``command``; at ``moment`` (``("line", f)``: f holds for a line of its stdout;
    ``("poll", f)``: f() holds), wait ``delay`` seconds and send ``signum`` unless it has ended.
    -> its exit code (negative: killed by that signal)."""
    proc = subprocess.Popen(command, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)  # fmt: skip
    deadline = time.monotonic() + timeout
    kind, holds = moment
    if kind == "poll":
        while not holds() and proc.poll() is None:
            assert time.monotonic() < deadline, "the moment never came"
            time.sleep(0.005)
    else:
        for line in proc.stdout:
            if holds(line):
                break
    time.sleep(delay)
    if proc.poll() is None:
        proc.send_signal(signum)
    _, err = proc.communicate(timeout=timeout)
    assert proc.returncode in (0, EXIT_PREEMPTED, -signum, 128 + signum), err[-3000:]
    return proc.returncode


def appears(folder: Path, *prefixes: str):
    """('poll', f): a file named with one of ``prefixes`` is in ``folder``."""

    def holds() -> bool:
        names = [p.name for p in folder.iterdir()] if folder.is_dir() else []
        return any(name.startswith(prefixes) for name in names)

    return "poll", holds


def store_content(path) -> dict:
    store = open_store(path)
    return {"keys": list(store.keys), "maps": store.read_all(), "status": np.asarray(store.status),
            "labels": store.labels, "attrs": {k: v for k, v in store.attrs.items()
                                              if k != "created"}}  # fmt: skip


def assert_same_store(a, b) -> None:
    got, want = store_content(a), store_content(b)
    assert got["keys"] == want["keys"] and got["attrs"] == want["attrs"]
    for name in ("maps", "status", "labels"):
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)


GENERATE = ["--methods", "random", "--random_weights", "--device", "cpu", "--batch_size", "1",
            "--num_workers", "0", "--chunk_rows", "2", "--shard_rows", "4",
            "--no_progress"]  # fmt: skip
FAST = ["--model", "mae_vit_tiny_patch16", "--input_size", "64", "--device", "cpu",
        "--num_workers", "0", "--print_freq", "1", "--accum_iter", "1", "--batch_size", "4",
        "--epochs", "2", "--warmup_epochs", "1", "--blr", "1e-3",
        "--ckpt_every_steps", "3"]  # fmt: skip
MAPS = [sys.executable, "-m", "attgmae.cli.maps"]


def nth_training_line(n: int):
    seen = [0]

    def ready(text: str) -> bool:
        seen[0] += text.startswith("Epoch [")
        return seen[0] >= n

    return ready


def write_archives(base: Path) -> list[Path]:
    """Two .npz archives of the same 3,000 keys: the old store's maps and the new one's."""
    keys = [f"c{i % 7}/img_{i:05d}.png" for i in range(3000)]
    paths = []
    for seed in (0, 1):
        maps = np.random.default_rng(seed).random((len(keys), 14, 14), dtype=np.float32)
        paths.append(base / f"maps{seed}.npz")
        np.savez(paths[-1], **dict(zip(keys, maps)))
    return paths


def import_state(out: Path, old: dict, new: dict) -> str:
    """What a reader finds at ``out`` right after an interruption of its replacement."""
    if not out.exists():
        return "marked new" if (Path(f"{out}.partial") / "finalized").exists() else "neither"
    now = store_content(out)
    for name, want in (("old", old), ("new", new)):
        if now["keys"] == want["keys"] and np.array_equal(now["maps"], want["maps"]):
            return name
    return "a mix"


@pytest.fixture(scope="module")
def interrupted(example_root, make_truth_example, tmp_path_factory):
    """Every command interrupted by each signal (at once, in threads), and the uninterrupted
    references -> {command: {"args", "reference", signal name: its output, ...}}."""
    base = tmp_path_factory.mktemp("fault_injection")
    train_root, train_maps = make_truth_example(base, 4, 2)
    old_src, new_src = write_archives(base)
    runs = {
        "generate": {"args": ["generate", str(example_root / "train"), *GENERATE]},
        "import": {"args": ["import", str(new_src)]},
        "train": {"args": ["--data_path", str(train_root), "--maps", str(train_maps), *FAST]},
    }
    jobs = []
    for name, signum in SIGNALS.items():
        rng = rng_for("fault injection", name)
        out = base / f"generate_{name}"
        runs["generate"][name] = out
        staged = appears(out / "random.zarr.partial" / "staging", "chunk_", "shard_")
        command = [*MAPS, *runs["generate"]["args"], "--out", str(out)]
        jobs.append(("generate", name, command, signum, staged, rng.uniform(0, 0.3)))

        out = base / f"import_{name}" / "maps.zarr"
        assert maps_main(["import", str(old_src), str(out)]) == 0  # the store to replace
        runs["import"][name] = out
        started = appears(out.parent, "maps.zarr.partial")
        command = [*MAPS, "import", str(new_src), str(out), "--overwrite"]
        jobs.append(("import", name, command, signum, started, rng.uniform(0, 0.4)))

        out = base / f"train_{name}"
        runs["train"][name] = out
        command = [sys.executable, "-m", "attgmae.cli.train", *runs["train"]["args"],
                   "--output_dir", str(out)]  # fmt: skip
        moment = "line", nth_training_line(int(rng.integers(1, 9)))  # of 8: 2 epochs of 4
        jobs.append(("train", name, command, signum, moment, rng.uniform(0, 0.3)))
    failures = []

    def watch(command_name, name, command, signum, moment, delay):
        try:
            runs[command_name][f"{name} exit"] = interrupt(command, signum, moment, float(delay))
        except BaseException as err:  # noqa: BLE001 (reported below)
            failures.append(err)

    threads = [threading.Thread(target=watch, args=job) for job in jobs]
    for thread in threads:
        thread.start()
    # the references, while the interrupted runs go (their stores stay as the kill left them
    # until the tests rerun the commands)
    runs["generate"]["reference"] = base / "generate_fresh"
    assert maps_main([*runs["generate"]["args"], "--out", str(base / "generate_fresh")]) == 0
    assert maps_main(["import", str(old_src), str(base / "import_old.zarr")]) == 0
    old = store_content(base / "import_old.zarr")
    runs["import"]["reference"] = base / "import_fresh.zarr"
    assert maps_main(["import", str(new_src), str(runs["import"]["reference"])]) == 0
    new = store_content(runs["import"]["reference"])
    runs["train"]["reference"] = base / "train_straight"
    assert train_main([*runs["train"]["args"], "--output_dir", str(base / "train_straight")]) == 0
    for thread in threads:
        thread.join(timeout=600)
    assert not failures, failures
    for name in SIGNALS:
        runs["import"][f"{name} state"] = import_state(runs["import"][name], old, new)
    return runs


def test_generate_interrupted_anywhere_reruns_to_the_same_stores(interrupted):
    runs = interrupted["generate"]
    for name in SIGNALS:
        out = runs[name]
        assert maps_main([*runs["args"], "--out", str(out)]) == 0, name
        assert not (out / "random.zarr.partial").exists()
        assert_same_store(out / "random.zarr", runs["reference"] / "random.zarr")


def test_import_overwrite_interrupted_anywhere_leaves_the_old_or_the_new_store(interrupted):
    runs = interrupted["import"]
    for name in SIGNALS:
        # at the kill: the old store whole, the new one whole, or a finished new store that the
        # rerun swaps in; never neither, never a mix
        assert runs[f"{name} state"] in ("old", "new", "marked new"), (name, runs[f"{name} state"])
        out = runs[name]
        assert maps_main([*runs["args"], str(out), "--overwrite"]) == 0, name
        assert not Path(f"{out}.partial").exists()
        assert_same_store(out, runs["reference"])


def log_records(out: Path) -> list[dict]:
    lines = (out / "log.txt").read_text().splitlines()
    return [{k: v for k, v in json.loads(x).items() if k != "train_img_per_s"} for x in lines]


def test_train_interrupted_anywhere_reruns_to_the_same_weights(interrupted, capsys):
    runs = interrupted["train"]
    straight = runs["reference"]
    # SIGTERM came during an iteration: the run saved there and left with 75 (or had ended)
    assert runs["sigterm exit"] in (0, EXIT_PREEMPTED)
    for name in SIGNALS:
        out = runs[name]
        saved = (out / "checkpoint-last.pth").exists()
        capsys.readouterr()
        assert train_main([*runs["args"], "--output_dir", str(out)]) == 0, name
        if saved:  # the same command continues from it, not from scratch
            assert f"resumed from {out / 'checkpoint-last.pth'}" in capsys.readouterr().out
        a = load_checkpoint(straight / "checkpoint-1.pth")["model"]
        b = load_checkpoint(out / "checkpoint-1.pth")["model"]
        for key in a:
            assert torch.equal(a[key], b[key]), (name, key)
        assert log_records(out) == log_records(straight), name
