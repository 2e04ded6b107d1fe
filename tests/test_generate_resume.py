"""Kill `attg-maps generate` with SIGKILL mid-run, run the same command again: it resumes, and the
stores equal those of an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np

from attgmae.cli.maps import main
from attgmae.core.listing import list_images
from attgmae.store import open_store

METHODS = ("dino", "tokencut", "random")


def store_content(path) -> dict:
    """Everything a store holds except its creation time."""
    store = open_store(path)
    attrs = {k: v for k, v in store.attrs.items() if k != "created"}
    return {"keys": list(store.keys), "maps": store.read_all(), "status": store.status,
            "labels": store.labels, "attrs": attrs}


def assert_same_store(a, b):
    got, want = store_content(a), store_content(b)
    assert got["keys"] == want["keys"]
    np.testing.assert_array_equal(got["maps"], want["maps"])
    np.testing.assert_array_equal(got["status"], want["status"])
    np.testing.assert_array_equal(got["labels"], want["labels"])
    assert got["attrs"] == want["attrs"]


def test_sigkill_then_rerun_equals_an_uninterrupted_run(example_root, tmp_path):
    root = example_root / "train"
    keys = [k for k in list_images(root) if k.endswith(("0000.JPEG", "0001.JPEG"))]
    assert len(keys) == 8  # 4 chunks of 2 rows, 2 shards
    file_list = tmp_path / "keys.txt"
    file_list.write_text("\n".join(keys) + "\n")
    args = ["generate", str(root), "--file_list", str(file_list), "--methods", ",".join(METHODS),
            "--random_weights", "--device", "cpu", "--batch_size", "2", "--num_workers", "1",
            "--chunk_rows", "2", "--shard_rows", "4", "--no_progress"]
    killed = tmp_path / "killed"
    command = [sys.executable, "-m", "attgmae.cli.maps", *args, "--out", str(killed)]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}

    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    # A chunk's stores are written in method order: once the last one (random) holds a chunk,
    # every store does, and the rerun has fewer images to compute.
    staging = killed / "random.zarr.partial" / "staging"
    deadline = time.monotonic() + 240
    def saved() -> bool:  # a staged chunk or a written shard (not a temporary file)
        names = [p.name for p in staging.iterdir()] if staging.is_dir() else []
        return any(name.startswith(("chunk_", "shard_")) for name in names)

    while not saved():
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.monotonic() < deadline, "no chunk written in time"
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stderr.close()
    assert not (killed / "dino.zarr").exists() and staging.exists()

    rerun = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr
    assert "resuming" in rerun.stderr
    computed = json.loads((killed / "generate_run.json").read_text())["result"]["num_computed"]
    assert 0 < computed < len(keys)  # the rows saved before the kill were not recomputed
    assert not (killed / "dino.zarr.partial").exists()

    fresh = tmp_path / "fresh"
    assert main([*args, "--out", str(fresh)]) == 0
    for method in METHODS:
        assert_same_store(killed / f"{method}.zarr", fresh / f"{method}.zarr")


def test_rerun_after_some_stores_were_finalized(example_root, tmp_path, capsys):
    """A kill between two finalizations leaves one store complete and the other not: the rerun
    skips the complete one and finishes the other, as an uninterrupted run would."""
    root = example_root / "train"
    keys = [k for k in list_images(root) if k.endswith("0000.JPEG")]
    file_list = tmp_path / "keys.txt"
    file_list.write_text("\n".join(keys) + "\n")
    args = ["generate", str(root), "--file_list", str(file_list), "--random_weights",
            "--device", "cpu", "--num_workers", "0", "--no_progress"]
    out = tmp_path / "out"
    assert main([*args, "--methods", "random", "--out", str(out)]) == 0
    assert main([*args, "--methods", "dino,random", "--out", str(out)]) == 0
    assert "already complete, skipped: random" in capsys.readouterr().err
    fresh = tmp_path / "fresh"
    assert main([*args, "--methods", "dino,random", "--out", str(fresh)]) == 0
    for method in ("dino", "random"):
        assert_same_store(out / f"{method}.zarr", fresh / f"{method}.zarr")
