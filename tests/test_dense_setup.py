"""The dense runs' small shared pieces: recipe + flags, batch arithmetic, checkpoint labels, the
pixel loss, the palette."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from attgmae.core.errors import InputError
from attgmae.eval.dense_eval import pixel_cross_entropy, spread_indices
from attgmae.eval.dense_report import class_colours, colour_labels
from attgmae.eval.dense_setup import check_recipe, checkpoint_labels, dense_batch, resolve_recipe
from attgmae.pipelines.segment_config import SegmentConfig
from attgmae.pipelines.taskonomy_config import TaskonomyConfig


def test_flags_go_over_the_recipe():
    nyu = resolve_recipe("nyuv2", SegmentConfig(checkpoint="c", data_path="d", dataset="nyuv2"))
    got = (nyu.input_size, nyu.eval_every, nyu.epochs, nyu.lr, nyu.warmup_lr)
    assert got == (640, 20, 64, 3e-4, 1e-6)
    given = SegmentConfig(checkpoint="c", data_path="d", lr=1e-3, eff_batch_size=4, epochs=2)
    ade = resolve_recipe("ade20k", given)
    assert (ade.lr, ade.total_batch_size, ade.epochs, ade.input_size) == (1e-3, 4, 2, 512)
    tk = resolve_recipe("taskonomy", TaskonomyConfig(checkpoint="c", data_path="d"))
    got = (tk.input_size, tk.total_batch_size, tk.max_train_images, tk.eval_every)
    assert got == (384, 8, 800, 5)
    with pytest.raises(InputError, match="--warmup_epochs 3 must lie in"):
        check_recipe(resolve_recipe("ade20k", SegmentConfig("c", "d", epochs=2)))


def test_batch_arithmetic():
    assert dense_batch(16, None, None, 4) == (4, 1, 16)  # Table 6 on 4 GPUs
    assert dense_batch(16, 4, None, 1) == (4, 4, 16)  # one GPU, accumulation 4
    assert dense_batch(16, 2, 2, 2) == (2, 2, 8)  # an explicit accumulation sets the batch
    assert dense_batch(8, None, None, 1) == (8, 1, 8)  # Table 7
    with pytest.raises(InputError, match="effective batch of 16 is not --batch_size 3"):
        dense_batch(16, 3, None, 2)


def test_checkpoint_labels(tmp_path):
    assert checkpoint_labels(["a/mae.pth", "b/attg.pth"]) == ["mae", "attg"]
    same_stem = [
        tmp_path / "mae" / "checkpoint-last.pth",
        tmp_path / "attg" / "checkpoint-last.pth",
    ]
    assert checkpoint_labels(same_stem) == ["mae", "attg"]
    assert checkpoint_labels(same_stem, ["x", "y"]) == ["x", "y"]
    with pytest.raises(InputError, match="--labels gives 1 names for 2"):
        checkpoint_labels(same_stem, ["x"])
    with pytest.raises(InputError, match="pass --labels"):
        checkpoint_labels(["r/a/c.pth", "s/a/c.pth"])


def test_pixel_cross_entropy_counts_labelled_pixels_only():
    logits = torch.randn(2, 4, 3, 3)
    labels = torch.randint(0, 4, (2, 3, 3))
    labels[0, 0] = 255
    expected = F.cross_entropy(logits, labels, ignore_index=255)
    assert torch.allclose(pixel_cross_entropy(logits, labels), expected)
    nothing = torch.full((2, 3, 3), 255)
    assert pixel_cross_entropy(logits, nothing).item() == 0.0  # not NaN: the run goes on


def test_palette_is_fixed_and_ignored_pixels_are_black():
    palette = class_colours()
    assert palette.shape == (256, 3) and (palette[255] == 0).all()
    assert (palette == class_colours()).all() and len({tuple(c) for c in palette[:150]}) == 150
    labels = torch.tensor([[0, 1], [255, 149]]).numpy()
    assert (colour_labels(labels)[1, 0] == 0).all()
    assert (colour_labels(labels)[0, 1] == palette[1]).all()
    assert spread_indices(10, 4) == [0, 3, 6, 9] and spread_indices(2, 4) == [0, 1]
