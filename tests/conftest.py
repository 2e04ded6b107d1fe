"""Shared fixtures: the built-in example image set, written once per test session."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from attgmae.data.example import write_example

# Default output folders of the commands, relative to where they run: a test must never leave one
# in the checkout (it passes --output_dir tmp_path).
_DEFAULT_OUTPUTS = ("output_dir", "output_eval", "output_linprobe", "output_finetune")


@pytest.fixture(scope="session", autouse=True)
def no_outputs_left_in_the_checkout():
    root = Path(__file__).resolve().parents[1]
    before = {name for name in _DEFAULT_OUTPUTS if (root / name).exists()}
    yield
    left = {name for name in _DEFAULT_OUTPUTS if (root / name).exists()} - before
    assert not left, f"a test wrote {sorted(left)} into the checkout; give it a tmp_path"


@pytest.fixture(scope="session", autouse=True)
def tables_in_the_session_folder(tmp_path_factory):
    """Joined tables that go to the temporary folder (runs without a store) stay in the test
    session's own folder."""
    from attgmae.data import shared_table

    shared_table.DEFAULT_TABLE_DIR = tmp_path_factory.mktemp("tables")


@pytest.fixture(scope="session")
def example_root(tmp_path_factory):
    """The procedural example set (4 classes, 6 train + 3 val images each), read-only for tests."""
    return write_example(
        tmp_path_factory.mktemp("example"), n_train_per_class=6, n_val_per_class=3, seed=0
    )


@pytest.fixture(scope="session")
def tiny_mae_checkpoints(tmp_path_factory):
    """Two tiny MAE pretraining checkpoints of random weights (seeds 0 and 1), in official MAE
    format (``model``, ``epoch`` 799, ``args.model``), named ``mae_seed{seed}.pth``."""
    folder = tmp_path_factory.mktemp("tiny_mae")
    from attgmae.models import mae_vit_tiny_patch16

    paths = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        path = folder / f"mae_seed{seed}.pth"
        args = argparse.Namespace(model="mae_vit_tiny_patch16")
        torch.save({"model": mae_vit_tiny_patch16().state_dict(), "epoch": 799, "args": args}, path)
        paths.append(path)
    return paths


@pytest.fixture(scope="session")
def objects_root(example_root, tmp_path_factory):
    """The example images with their true object masks as label maps (0 background, 1 object):
    a two-class ``folder`` segmentation set."""
    root = tmp_path_factory.mktemp("objects")
    for split in ("train", "val"):
        os.symlink(example_root / split, root / split)
        for mask in sorted((example_root / "masks" / split).rglob("*.png")):
            label = root / "labels" / split / mask.relative_to(example_root / "masks" / split)
            label.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray((np.asarray(Image.open(mask)) > 0).astype(np.uint8)).save(label)
    (root / "classes.txt").write_text("background\nobject\n")
    return root


@pytest.fixture(scope="session")
def make_truth_example():
    """A factory: (folder, train and val images per class) -> (example root, store of its true
    object masks, imported the way a user would with `attg-maps import --resize`)."""
    from attgmae.cli.maps import main as maps_main

    def make(base, n_train_per_class, n_val_per_class):
        root = write_example(base / "ex", n_train_per_class, n_val_per_class)
        maps = base / "maps.zarr"
        argv = ["import", str(root / "masks/train"), str(maps), "--images", str(root / "train")]
        assert maps_main([*argv, "--resize"]) == 0
        return root, maps

    return make


def _torchrun(module: str, *args, nproc: int = 2, timeout: int = 300):
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    # faulthandler: a rank that dies of a signal prints every thread's Python stack first
    env.update(OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore", PYTHONFAULTHANDLER="1")
    target = [str(module)] if str(module).endswith(".py") else ["-m", module]  # a script or -m
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc-per-node", str(nproc), *target, *map(str, args)]  # fmt: skip
    proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:  # the whole of it in the failure's report (asserts show a tail)
        print(proc.stderr, file=sys.stderr)
    return proc


@pytest.fixture(scope="session")
def torchrun():
    """``torchrun(module, *args, nproc=2)``: ``torchrun --standalone -m module args`` (or a
    script, ``module`` a ``.py`` path) on CPU (gloo), one thread a process, outside any process
    group of this test run -> the finished process (its stdout and stderr captured)."""
    return _torchrun


# One intra-op thread: on a small shared box (2 cores, CI) oversubscribed torch threads make the
# tiny models of the tests several times slower, never faster.
torch.set_num_threads(1)
