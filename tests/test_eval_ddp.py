"""DDP: `attg-eval finetune`, `segment` and `taskonomy` under torchrun (2 CPU processes, gloo)
against 1 process at the same effective batch.

Fine-tuning trains exactly as 1 process: every random draw is seeded per sample, and the loss is
a mean over equal halves of the batch. The dense losses are each rank's mean over its own valid
pixels, as MultiMAE's, so 2 processes weight pixels a little differently from 1; there the
learning rate is ~0, the weights stay put, and the scores (each rank scores its share of the
images, the sums are reduced) must equal 1 process's."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from attgmae.checkpoint import load_checkpoint
from attgmae.cli.eval import main
from attgmae.data.example_taskonomy import write_example_taskonomy

CPU = ["--device", "cpu", "--num_workers", "0", "--print_freq", "100", "--drop_path", "0"]
# An lr far below float32 resolution of the weights: an update changes nothing.
FROZEN = ["--lr", "1e-30", "--warmup_lr", "0", "--min_lr", "0", "--epochs", "1",
          "--warmup_epochs", "1"]  # fmt: skip


def log_lines(out):
    return [json.loads(line) for line in (out / "log.txt").read_text().splitlines()]


def one_and_two_processes(torchrun, tmp_path, command: list[str], one_extra=(), two_extra=()):
    """Run ``command`` (output to ``--output_dir``) in this process and under torchrun."""
    one, two = tmp_path / "one", tmp_path / "two"
    assert main([*command, "--output_dir", str(one), *one_extra]) == 0
    proc = torchrun("attgmae.cli.eval", *command, "--output_dir", two, *two_extra)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "x 2 proc" in proc.stdout  # the effective batch line names both processes
    return one, two, proc


def test_finetune_trains_exactly_as_one_process(
    torchrun, tiny_mae_checkpoints, example_root, tmp_path
):
    command = ["finetune", "--checkpoint", tiny_mae_checkpoints[0], "--data_path", example_root,
               "--input_size", "32", "--aa", "none", "--reprob", "0", "--smoothing", "0",
               "--epochs", "2", "--warmup_epochs", "1", "--lr", "2e-3", *CPU]  # fmt: skip
    command = [str(c) for c in command]
    one, two, proc = one_and_two_processes(
        torchrun, tmp_path, command, ["--batch_size", "8"], ["--batch_size", "4"]
    )
    assert "effective batch 8 = 4 x 1 accum x 2 proc" in proc.stdout
    for a, b in zip(log_lines(one), log_lines(two), strict=True):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-5)
        assert b["test_acc1"] == a["test_acc1"] and b["test_acc5"] == a["test_acc5"]
        assert b["test_loss"] == pytest.approx(a["test_loss"], rel=1e-5)
    a, b = load_checkpoint(one / "checkpoint-1.pth"), load_checkpoint(two / "checkpoint-1.pth")
    assert b["args"].world_size == 2 and a["args"].world_size == 1
    for name, value in a["model"].items():
        torch.testing.assert_close(b["model"][name], value, rtol=1e-4, atol=1e-5, msg=name)
    assert json.loads((two / "finetune.json").read_text())["num_val"] == 12


def test_segment_scores_every_image_once_across_ranks(
    torchrun, tiny_mae_checkpoints, objects_root, tmp_path
):
    command = ["segment", "--checkpoint", tiny_mae_checkpoints[0], "--dataset", "folder",
               "--data_path", objects_root, "--input_size", "64", "--head_dim", "384",
               "--head_depth", "1", "--eff_batch_size", "8", *FROZEN, *CPU]  # fmt: skip
    one, two, _ = one_and_two_processes(torchrun, tmp_path, [str(c) for c in command])
    (a,), (b,) = log_lines(one), log_lines(two)
    for key in ("test_miou", "test_mean_class_acc", "test_pixel_acc", "test_loss"):
        assert b[key] == pytest.approx(a[key], rel=1e-6), key
    assert b["train_loss"] == pytest.approx(a["train_loss"], rel=0.05)  # per-rank pixel means
    first, second = (json.loads((out / "segment.json").read_text()) for out in (one, two))
    assert second["class_iou"] == pytest.approx(first["class_iou"], rel=1e-6)
    assert second["protocol_details"]["world_size"] == 2


def test_taskonomy_scores_every_view_once_across_ranks(torchrun, tiny_mae_checkpoints, tmp_path):
    root = write_example_taskonomy(tmp_path / "tk", views_per_building=4)
    command = ["taskonomy", "--checkpoint", *tiny_mae_checkpoints, "--data_path", root,
               "--tasks", "depth", "edges", "--input_size", "64", "--dpt_feature_dim", "32",
               "--dpt_layer_dims", "16", "32", "48", "64", "--eff_batch_size", "8",
               "--eval_every", "1", *FROZEN, *CPU]  # fmt: skip
    one, two, _ = one_and_two_processes(torchrun, tmp_path, [str(c) for c in command])
    first, second = (json.loads((out / "taskonomy_compare.json").read_text()) for out in (one, two))
    for label, losses in first["test_l1"].items():
        assert second["test_l1"][label] == pytest.approx(losses, rel=1e-6)
    assert second["average_rank"] == first["average_rank"]
    logs = sorted(one.rglob("log.txt"))
    assert len(logs) == 4  # 2 checkpoints x 2 tasks
    for path in logs:
        (a,), (b,) = log_lines(path.parent), log_lines(two / path.parent.relative_to(one))
        assert b["test_l1"] == pytest.approx(a["test_l1"], rel=1e-6)
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=0.05)


def test_knn_and_linprobe_on_two_processes_equal_one(
    torchrun, tiny_mae_checkpoints, example_root, tmp_path
):
    """Each rank extracts its share of the images, rank 0 alone searches and writes (DINO's
    eval_knn); the probe's encoder work is shared and its head is one process's, exactly."""
    cpu = ["--checkpoint", tiny_mae_checkpoints[0], "--data_path", example_root, "--device",
           "cpu", "--num_workers", "0", "--input_size", "32"]  # fmt: skip
    knn = ["knn", *cpu, "--nb_knn", "3", "5", "20", "--batch_size", "5"]
    probe = ["linprobe", *cpu, "--batch_size", "4", "--eff_batch_size", "16", "--blr", "2",
             "--epochs", "2", "--warmup_epochs", "1", "--log_every", "0"]  # fmt: skip
    one, two = tmp_path / "one", tmp_path / "two"
    assert main([str(a) for a in [*knn, "--output_dir", one / "knn"]]) == 0
    assert main([str(a) for a in [*probe, "--output_dir", one / "probe"]]) == 0
    ranks = Path(__file__).with_name("eval_ranks.py")
    proc = torchrun(ranks, *knn, "--output_dir", two / "knn", "--",
                    *probe, "--output_dir", two / "probe")  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]

    a, b = (json.loads((out / "knn" / "knn_mae_seed0.json").read_text()) for out in (one, two))
    assert b["results"] == a["results"]  # top-1 and top-5 of every k, exactly
    assert (a["protocol_details"]["world_size"], b["protocol_details"]["world_size"]) == (1, 2)
    assert proc.stdout.count("knn_mae_seed0.json  plot:") == 1  # rank 0 alone writes
    cached = sorted((one / "knn/features").glob("*.pt"))
    assert len(cached) == 2
    for path in cached:  # the same description, so the same name; the features gathered
        gathered = torch.load(two / "knn/features" / path.name)["features"]
        torch.testing.assert_close(gathered, torch.load(path)["features"], atol=1e-5, rtol=0)

    assert "micro-batch 4 x accum 2 x 2 proc = effective batch 16" in proc.stdout
    first, second = log_lines(one / "probe"), log_lines(two / "probe")  # one line per epoch
    assert len(first) == len(second) == 2
    for x, y in zip(first, second):
        assert y["train_loss"] == pytest.approx(x["train_loss"], rel=1e-5)
        assert y["test_acc1"] == x["test_acc1"] and y["test_acc5"] == x["test_acc5"]
    head_a = torch.load(one / "probe/checkpoint-1.pth")["head"]
    head_b = torch.load(two / "probe/checkpoint-1.pth")["head"]
    for name, value in head_a.items():
        torch.testing.assert_close(head_b[name], value, atol=1e-5, rtol=1e-4, msg=name)
    details = json.loads((two / "probe/linprobe.json").read_text())["protocol_details"]
    assert (details["effective_batch"], details["accum_iter"], details["world_size"]) == (16, 2, 2)
