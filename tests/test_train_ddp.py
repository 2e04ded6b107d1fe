"""DDP: 2 CPU processes (gloo, launched by torchrun) train exactly as 1 process at the same
effective batch: same per-epoch loss, same weights after every update."""

import json

import pytest
import torch

from attgmae.checkpoint import load_checkpoint
from attgmae.cli.train import main as train_main


@pytest.fixture(scope="module")
def data(tmp_path_factory, make_truth_example):
    return make_truth_example(tmp_path_factory.mktemp("train_ddp"), 4, 1)


def common(root, maps, out):
    return ["--data_path", str(root), "--maps", str(maps), "--output_dir", str(out),
            "--model", "mae_vit_tiny_patch16", "--input_size", "64", "--device", "cpu",
            "--num_workers", "0", "--epochs", "2", "--warmup_epochs", "1", "--blr", "1e-3",
            "--accum_iter", "1", "--tau", "0.7", "--print_freq", "100", "--save_every", "1"]


def test_two_gloo_processes_match_one_process(torchrun, data, tmp_path):
    root, maps = data
    one, two = tmp_path / "one", tmp_path / "two"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as torchrun gives each of its processes
    try:
        assert train_main(common(root, maps, one) + ["--batch_size", "8"]) == 0
    finally:
        torch.set_num_threads(threads)

    proc = torchrun("attgmae.cli.train", *common(root, maps, two), "--batch_size", "4")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "effective batch 8 = 4 x 1 accum x 2 proc" in proc.stdout

    log_one = [json.loads(x) for x in (one / "log.txt").read_text().splitlines()]
    log_two = [json.loads(x) for x in (two / "log.txt").read_text().splitlines()]
    assert len(log_one) == len(log_two) == 2
    for a, b in zip(log_one, log_two):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-5)
        assert b["train_lr"] == pytest.approx(a["train_lr"], rel=1e-12)
    for epoch in (0, 1):
        a = load_checkpoint(one / f"checkpoint-{epoch}.pth")
        b = load_checkpoint(two / f"checkpoint-{epoch}.pth")
        assert b["args"].world_size == 2 and a["args"].world_size == 1
        for key, value in a["model"].items():
            torch.testing.assert_close(b["model"][key], value, rtol=1e-4, atol=1e-6, msg=key)
    # a rank-dependent sample order would have given other batches, other losses
    assert log_one[0]["train_loss"] != log_one[1]["train_loss"]
