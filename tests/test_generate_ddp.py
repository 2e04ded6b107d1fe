"""`torchrun --nproc-per-node 2 attg-maps generate ...` (gloo on CPU) splits the work by whole
shards and gives the stores of a one-process run."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np

from attgmae.core.listing import list_images
from attgmae.store import open_store

METHODS = ("dino", "tokencut", "gradcam", "random")


def test_two_ranks_equal_one_process(torchrun, example_root, tmp_path):
    root = example_root / "train"
    keys = [k for k in list_images(root) if k.endswith(("0000.JPEG", "0001.JPEG"))]
    assert len(keys) == 8
    file_list = tmp_path / "keys.txt"
    file_list.write_text("\n".join(keys) + "\n")
    args = ["generate", str(root), "--file_list", str(file_list), "--methods", ",".join(METHODS),
            "--random_weights", "--device", "cpu", "--batch_size", "2", "--num_workers", "0",
            "--chunk_rows", "2", "--shard_rows", "2", "--no_progress"]  # 4 shards, 2 per rank
    # torchrun gives each rank one thread; the one-process run gets two: the maps must not
    # depend on the number of threads (oneDNN's CPU convolutions would, by a few ulps).
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    two = torchrun("attgmae.cli.maps", *args, "--out", tmp_path / "two", timeout=600)
    assert two.returncode == 0, two.stderr[-3000:]
    assert "rank 0/2: computed 4 images" in two.stderr
    assert "rank 1/2: computed 4 images" in two.stderr
    one = subprocess.run(
        [sys.executable, "-m", "attgmae.cli.maps", *args, "--out", str(tmp_path / "one")],
        env={**env, "OMP_NUM_THREADS": "2"}, capture_output=True, text=True, timeout=600,
    )
    assert one.returncode == 0, one.stderr[-3000:]
    for method in METHODS:
        a = open_store(tmp_path / "two" / f"{method}.zarr")
        b = open_store(tmp_path / "one" / f"{method}.zarr")
        assert list(a.keys) == list(b.keys) == keys
        np.testing.assert_array_equal(a.read_all(), b.read_all())
        np.testing.assert_array_equal(a.status, b.status)
        assert a.attrs["params"] == b.attrs["params"] and a.attrs["complete"]


def test_rank_and_world_from_torchrun_or_slurm(monkeypatch):
    from attgmae.core.distributed import _first_slurm_host, env_dist_info

    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT",
                 "SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID", "SLURM_JOB_NODELIST",
                 "SLURM_STEP_NODELIST", "SLURM_JOB_ID"):
        # set, then delete: monkeypatch then restores even what env_dist_info itself sets
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)
    assert env_dist_info() == (0, 1, 0)
    monkeypatch.setenv("SLURM_PROCID", "5")
    monkeypatch.setenv("SLURM_NTASKS", "8")
    monkeypatch.setenv("SLURM_LOCALID", "1")
    monkeypatch.setenv("SLURM_JOB_NODELIST", "gpu[03-05,07],cpu1")
    monkeypatch.setenv("SLURM_JOB_ID", "123456")
    assert env_dist_info() == (5, 8, 1)
    assert os.environ["MASTER_ADDR"] == "gpu03" and os.environ["MASTER_PORT"] == "23456"
    monkeypatch.setenv("RANK", "2")  # torchrun's variables win
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "2")
    assert env_dist_info() == (2, 4, 2)
    assert _first_slurm_host("node7") == "node7"
    assert _first_slurm_host("a[1-2],b3") == "a1"
