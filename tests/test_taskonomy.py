"""`attg-eval taskonomy` end to end on CPU on a synthetic Taskonomy-layout set: a run beats the
constant prediction, tests the weights of its best validation epoch, compares checkpoints by
average rank, continues where it stopped (to identical weights), and names bad input."""

from __future__ import annotations

import json
import os
import shutil

import pytest
import torch

from attgmae.checkpoint import load_checkpoint
from attgmae.cli.eval import main
from attgmae.data.dense_taskonomy import TaskonomyDataset
from attgmae.data.example_taskonomy import write_example_taskonomy
from attgmae.models.dense_losses import average_rank

SIZE = 64


@pytest.fixture(scope="module")
def checkpoints(tiny_mae_checkpoints):
    """Two tiny MAE checkpoints of different random weights."""
    return tiny_mae_checkpoints


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """8 train, 4 val and 4 test views of 64 x 64 (2 / 1 / 1 buildings)."""
    return write_example_taskonomy(tmp_path_factory.mktemp("tk"), views_per_building=4)


def argv(ckpts, data, out, *extra):
    return [
        "taskonomy",
        "--checkpoint",
        *[str(c) for c in ckpts],
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
        "--dpt_feature_dim",
        "32",
        "--dpt_layer_dims",
        *"16 32 48 64".split(),
        "--eff_batch_size",
        "4",
        "--eval_every",
        "1",
        "--print_freq",
        "100",
        *extra,
    ]


def constant_l1(data, folder: str) -> float:
    """The constant prediction: the training targets' mean over valid pixels, at every pixel;
    its L1 over the valid test pixels."""
    train = TaskonomyDataset(data, "train", [folder], SIZE)
    total = sum((s["targets"][folder] * s["mask"]).sum() for s in map(train.__getitem__, range(8)))
    mean = total / sum(train[i]["mask"].sum() for i in range(len(train)))
    test = TaskonomyDataset(data, "test", [folder], SIZE)
    errors = [((s["targets"][folder] - mean).abs() * s["mask"]).sum() for s in test]
    return float(sum(errors) / sum(s["mask"].sum() for s in test))


@pytest.fixture(scope="module")
def learned(checkpoints, root, tmp_path_factory):
    out = tmp_path_factory.mktemp("tk_learn") / "out"
    extra = ["--tasks", "depth", "--epochs", "10", "--warmup_epochs", "1", "--lr", "2e-3"]
    assert main(argv(checkpoints[:1], root, out, *extra, "--drop_path", "0")) == 0
    return out


def test_a_run_beats_the_constant_and_tests_its_best_validation_weights(learned, root):
    summary = json.loads((learned / "taskonomy.json").read_text())
    result = json.loads((learned / "depth" / "taskonomy.json").read_text())
    assert summary["test_l1"] == {"depth": result["test_l1"]} == {"depth": summary["average"]}
    constant = constant_l1(root, "depth_euclidean")
    assert 0.1 < constant < 0.3
    assert result["test_l1"] < 0.6 * constant
    log = [json.loads(line) for line in (learned / "depth" / "log.txt").read_text().splitlines()]
    assert [x["epoch"] for x in log] == list(range(10)) and result["history"] == log
    val = [x["test_l1"] for x in log]
    assert result["test_weights_epoch"] == val.index(min(val))  # the first of the lowest
    best = load_checkpoint(learned / "depth" / "checkpoint-best.pth")
    assert best["epoch"] == result["test_weights_epoch"] and best["value"] == min(val)
    details = result["protocol_details"]
    assert details["folder"] == "depth_euclidean" and details["normalization"]["clamp"] > 0
    assert details["recipe"]["warmup_lr"] == 1e-6 and details["effective_batch"] == 4
    assert "rgb2<task>-1k" in details["sources"]["multimae"]
    assert result["num_train"] == 8 and result["num_test"] == 4
    assert result["mask_source"] == "depth_euclidean"
    for name in ("taskonomy.png", "depth_samples.png", "config.json"):
        assert (learned / "depth" / name).stat().st_size > 0


def test_several_checkpoints_are_compared_by_average_rank(checkpoints, root, tmp_path, capsys):
    extra = ["--tasks", "depth", "keypoints3d", "--epochs", "1", "--warmup_epochs", "0"]
    assert main(argv(checkpoints, root, tmp_path, *extra, "--labels", "mae", "attg")) == 0
    compare = json.loads((tmp_path / "taskonomy_compare.json").read_text())
    losses = compare["test_l1"]
    assert set(losses) == {"mae", "attg"} and set(losses["mae"]) == {"depth", "keypoints3d"}
    for label in ("mae", "attg"):
        run = json.loads((tmp_path / label / "keypoints3d" / "taskonomy.json").read_text())
        assert losses[label]["keypoints3d"] == run["test_l1"]
        assert compare["average"][label] == pytest.approx(sum(losses[label].values()) / 2)
    assert compare["average_rank"] == average_rank(losses)
    assert sorted(compare["average_rank"].values()) in ([1.0, 2.0], [1.5, 1.5])
    table = (tmp_path / "taskonomy_compare.md").read_text()
    assert table == compare["table"] and "| mae |" in table and "average rank" in table
    capsys.readouterr()
    # the same command again: every run is read back, none trained again
    assert main(argv(checkpoints, root, tmp_path, *extra, "--labels", "mae", "attg")) == 0
    out = capsys.readouterr().out
    assert out.count("finished already") == 4 and "epoch 0" not in out
    assert json.loads((tmp_path / "taskonomy_compare.json").read_text()) == compare


def test_killed_mid_epoch_resumes_to_identical_weights(checkpoints, root, tmp_path):
    recipe = ["--tasks", "depth", "--epochs", "2", "--warmup_epochs", "1", "--batch_size", "2"]
    recipe += ["--accum_iter", "2", "--ckpt_every_steps", "1"]
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    assert main(argv(checkpoints[:1], root, straight, *recipe)) == 0
    # 8 images, 4 iterations an epoch: stopped after iteration 6, it resumes after iteration 4
    assert main(argv(checkpoints[:1], root, killed, *recipe, "--stop_after_iters", "6")) == 0
    assert not (killed / "depth" / "taskonomy.json").exists()
    assert main(argv(checkpoints[:1], root, killed, *recipe)) == 0
    a = load_checkpoint(straight / "depth" / "checkpoint-1.pth")["model"]
    b = load_checkpoint(killed / "depth" / "checkpoint-1.pth")["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    logs = [(d / "depth" / "log.txt").read_text() for d in (straight, killed)]
    assert logs[0] == logs[1]
    results = [json.loads((d / "taskonomy.json").read_text()) for d in (straight, killed)]
    assert results[0]["test_l1"] == results[1]["test_l1"]


def test_bad_inputs_are_named(checkpoints, root, tmp_path, capsys):
    one = checkpoints[:1]
    assert main(argv(one, root, tmp_path / "o1", "--tasks", "depth", "normals")) == 2
    assert "unknown Taskonomy task(s) ['normals']" in capsys.readouterr().err
    assert main(argv(one, tmp_path / "nowhere", tmp_path / "o2", "--tasks", "depth")) == 2
    err = capsys.readouterr().err
    assert "--data_path" in err and "is not a directory" in err
    broken = tmp_path / "broken"
    shutil.copytree(root, broken)
    gone = broken / "synth_d" / "keypoints2d" / "point_1_view_1_domain_keypoints2d.png"
    gone.unlink()
    assert main(argv(one, broken, tmp_path / "o3", "--tasks", "keypoints2d")) == 2
    assert str(gone) in capsys.readouterr().err
    assert not (tmp_path / "o3" / "keypoints2d" / "log.txt").exists()  # before any training
    assert main(argv(checkpoints, root, tmp_path / "o4", "--resume", "x.pth")) == 2
    assert "--resume names one run; these are 10" in capsys.readouterr().err
    assert main(argv(one, root, tmp_path / "o5", "--tasks", "depth", "depth_euclidean")) == 2
    assert "names a task twice" in capsys.readouterr().err


def test_a_finished_run_is_reused_only_for_the_same_checkpoint_entry_and_files(
    checkpoints, root, tmp_path, capsys
):
    data = tmp_path / "data"
    shutil.copytree(root, data, copy_function=shutil.copy2)
    run = argv(checkpoints[:1], data, tmp_path / "out", "--tasks", "depth", "--epochs", "1",
               "--warmup_epochs", "0")  # fmt: skip
    assert main(run) == 0
    capsys.readouterr()
    # another entry of the checkpoint: not the finished result, and not its checkpoints either
    assert main([*run, "--checkpoint_key", "model"]) == 2
    out, err = capsys.readouterr()
    assert "made with other encoder: running again" in out
    assert "belongs to another run" in err and "encoder" in err
    # an image replaced under its name (another size and mtime)
    test_rgb = sorted(TaskonomyDataset(data, "test", ["depth"], SIZE).files())[0][2]
    shutil.copyfile(sorted(test_rgb.parent.iterdir())[-1], test_rgb)
    stat = test_rgb.stat()
    os.utime(test_rgb, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert main(run) == 2
    out, err = capsys.readouterr()
    assert "made with other data (test): running again" in out and "different data" in err
