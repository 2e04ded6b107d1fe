"""`attg-eval segment` end to end on CPU: a tiny MAE checkpoint of random weights fine-tuned on
the example set's per-pixel object masks (`folder` layout) beats the constant prediction,
resumes mid-epoch to identical weights, scores by sliding windows when asked, and names bad
input."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from attgmae.checkpoint import load_checkpoint
from attgmae.cli.eval import main
from attgmae.data.dense_datasets import SegmentationDataset, segmentation_split
from attgmae.data.dense_transforms import SegmentationTransform
from attgmae.eval.segmentation import miou

SIZE = 64  # input size: a 4 x 4 token grid


@pytest.fixture(scope="module")
def tiny_checkpoint(tiny_mae_checkpoints):
    return tiny_mae_checkpoints[0]


def argv(ckpt, data, out, *extra):
    return [
        "segment",
        "--checkpoint",
        str(ckpt),
        "--dataset",
        "folder",
        "--data_path",
        str(data),
        "--output_dir",
        str(out),
        "--device",
        "cpu",
        "--num_workers",
        "0",
        "--input_size",
        str(SIZE),
        "--head_dim",
        "384",  # 16 predictions a token of 24 channels (MultiMAE: 6144 = 16 x 384)
        "--head_depth",
        "1",
        "--print_freq",
        "100",
        *extra,
    ]


def constant_scores(root) -> dict:
    """The constant prediction: the training labels' majority class at every pixel, scored
    against the validation labels as the run scores them (evaluation transform, SIZE)."""
    train = SegmentationDataset(
        segmentation_split("folder", root, "train"), SegmentationTransform(SIZE, train=False)
    )
    counts = sum(np.bincount(train.read(i)[1].ravel(), minlength=256) for i in range(len(train)))
    majority = int(np.argmax(counts[:255]))
    val = SegmentationDataset(
        segmentation_split("folder", root, "val"), SegmentationTransform(SIZE, train=False)
    )
    labels = torch.stack([val[i]["label"] for i in range(len(val))])  # [N, S, S]
    return miou(torch.full_like(labels, majority), labels, num_classes=2)


@pytest.fixture(scope="module")
def learned(tiny_checkpoint, objects_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("seg_learn") / "out"
    extra = ["--epochs", "8", "--warmup_epochs", "1", "--eff_batch_size", "8", "--lr", "2e-3"]
    assert main(argv(tiny_checkpoint, objects_root, out, *extra, "--drop_path", "0")) == 0
    return out


def test_a_run_beats_the_constant_prediction_and_writes_its_outputs(learned, objects_root):
    result = json.loads((learned / "segment.json").read_text())
    constant = constant_scores(objects_root)
    assert 40 < constant["miou"] < 50  # background IoU ~ 0.89, object IoU 0, over 2 classes
    assert result["final"]["miou"] > constant["miou"] + 8
    assert result["class_iou"]["object"] > 20 and result["class_names"] == ["background", "object"]
    log = [json.loads(line) for line in (learned / "log.txt").read_text().splitlines()]
    assert [x["epoch"] for x in log] == list(range(8)) and result["history"] == log
    assert result["final"]["miou"] == log[-1]["test_miou"]
    assert result["best"]["miou"] == max(x["test_miou"] for x in log)
    assert log[-1]["train_loss"] < log[0]["train_loss"]
    details = result["protocol_details"]
    assert details["effective_batch"] == 8 and details["recipe"]["warmup_lr"] == 1e-6
    assert details["recipe"]["lr"] == 2e-3 and details["recipe"]["layer_decay"] == 0.75
    assert "ft_ade_64e_mae-b_rgb.yaml" in details["sources"]["multimae"]
    assert "whole image" in details["evaluation"]
    for name in ("segment.png", "segment_samples.png", "config.json"):
        assert (learned / name).stat().st_size > 0
    ckpt = load_checkpoint(learned / "checkpoint-7.pth")
    assert ckpt["args"].model == "mae_vit_tiny_patch16" and ckpt["args"].dataset == "folder"
    assert any(k.startswith("head.") for k in ckpt["model"])
    assert not any(k.startswith("encoder.norm.") for k in ckpt["model"])  # MultiMAE: no norm


def test_killed_mid_epoch_resumes_to_identical_weights(tiny_checkpoint, example_root, tmp_path):
    """Five classes, flip / scale jitter / colour jitter / crop, drop path, accumulation: the
    run killed in epoch 1 ends with the uninterrupted run's weights and log."""
    recipe = ["--epochs", "2", "--warmup_epochs", "1", "--batch_size", "4", "--accum_iter", "2"]
    recipe += ["--ckpt_every_steps", "1"]
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    assert main(argv(tiny_checkpoint, example_root, straight, *recipe)) == 0
    # 24 images, 6 iterations an epoch: stopped after iteration 9, it resumes after iteration 8
    stopped = argv(tiny_checkpoint, example_root, killed, *recipe, "--stop_after_iters", "9")
    assert main(stopped) == 0
    assert not (killed / "segment.json").exists()
    assert load_checkpoint(killed / "checkpoint-last.pth")["resume"]["samples_seen"] == 8
    assert main(argv(tiny_checkpoint, example_root, killed, *recipe)) == 0
    a = load_checkpoint(straight / "checkpoint-1.pth")["model"]
    b = load_checkpoint(killed / "checkpoint-1.pth")["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (killed / "log.txt").read_text() == (straight / "log.txt").read_text()
    done = [json.loads((d / "segment.json").read_text()) for d in (straight, killed)]
    assert done[0]["class_iou"] == done[1]["class_iou"] and len(done[0]["class_iou"]) == 5


def test_sliding_window_inference_scores_at_the_shorter_side(
    tiny_checkpoint, example_root, tmp_path
):
    extra = [
        "--epochs",
        "1",
        "--warmup_epochs",
        "0",
        "--eff_batch_size",
        "8",
        "--inference",
        "slide",
    ]
    assert main(argv(tiny_checkpoint, example_root, tmp_path, *extra, "--slide_stride", "16")) == 0
    result = json.loads((tmp_path / "segment.json").read_text())
    # 160 x 120 images -> 85 x 64, all labelled: scored there, not on a padded 64 x 64 square
    assert result["final"]["num_pixels"] == 12 * 85 * 64
    assert "sliding window 64 stride 16" in result["protocol_details"]["evaluation"]


def _link_images(example_root, root):
    root.mkdir()
    for split in ("train", "val"):
        os.symlink(example_root / split, root / split)
    return root


def test_bad_inputs_are_named(tiny_checkpoint, example_root, tmp_path, capsys):
    run = ["--epochs", "1", "--warmup_epochs", "0", "--eff_batch_size", "8"]
    data = _link_images(example_root, tmp_path / "nolabels")
    assert main(argv(tiny_checkpoint, data, tmp_path / "o1", *run, "--num_classes", "5")) == 2
    assert "have no label map" in capsys.readouterr().err
    assert main(argv(tiny_checkpoint, data, tmp_path / "o2", *run)) == 2
    assert "no classes.txt; give the number of classes (--num_classes)" in capsys.readouterr().err
    # a label value that is not a class: named with its file when it is read
    bad = _link_images(example_root, tmp_path / "bad")
    os.symlink(example_root / "labels", bad / "labels")
    (bad / "classes.txt").write_text("background\nobject\n")  # the labels hold 0..4
    assert main(argv(tiny_checkpoint, bad, tmp_path / "o3", *run)) == 2
    err = capsys.readouterr().err
    assert "label value" in err and "is not one of the 2 classes" in err and ".png" in err
    assert main(argv(tmp_path / "none.pth", example_root, tmp_path / "o4", *run)) == 2
    assert "--checkpoint" in capsys.readouterr().err
    assert main(argv(tiny_checkpoint, example_root, tmp_path / "o5", "--num_classes", "3")) == 2
    assert "--num_classes 3 but" in capsys.readouterr().err
    ade = ["--dataset", "ade20k"]
    assert main(argv(tiny_checkpoint, example_root, tmp_path / "o6", *run, *ade)) == 2
    assert "ADE20k" in capsys.readouterr().err
    assert main(argv(tiny_checkpoint, example_root, tmp_path / "o7", "--input_size", "60")) == 2
    assert "--input_size must be a multiple of 16" in capsys.readouterr().err
    assert main(argv(tiny_checkpoint, example_root, tmp_path / "o8", "--epochs", "2")) == 2
    assert "--warmup_epochs 3 must lie in [0, --epochs 2]" in capsys.readouterr().err
