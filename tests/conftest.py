"""Shared fixtures: the built-in example image set, written once per test session."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

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


@pytest.fixture(scope="session")
def example_root(tmp_path_factory):
    """The procedural example set (4 classes, 6 train + 3 val images each), read-only for tests."""
    return write_example(
        tmp_path_factory.mktemp("example"), n_train_per_class=6, n_val_per_class=3, seed=0
    )


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


# One intra-op thread: on a small shared box (2 cores, CI) oversubscribed torch threads make the
# tiny models of the tests several times slower, never faster.
torch.set_num_threads(1)
