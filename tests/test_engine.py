"""attgmae.engine on a tiny model and synthetic data: it learns, resumes exactly, accumulates as
a larger batch, scales lrs per group, stops on a NaN loss, and 2 gloo processes match one.

Run as a script (``python tests/test_engine.py OUT_DIR``) this file is the torchrun worker of
the two-process test.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from attgmae.checkpoint import load_checkpoint
from attgmae.core.errors import InputError
from attgmae.engine import (
    RunConfig,
    RunFailed,
    SeededSamples,
    SupervisedRun,
    distributed_session,
)

NUM_CLASSES, DIM = 3, 8


class NoisyBlobs(Dataset):
    """Class-dependent means plus noise drawn from torch, numpy and Python's ``random`` (as an
    augmentation pipeline would): x float32 [DIM], y int."""

    def __init__(self, size: int = 48):
        gen = torch.Generator().manual_seed(0)
        self.means = 2.0 * torch.randn(NUM_CLASSES, DIM, generator=gen)
        self.labels = torch.arange(size) % NUM_CLASSES

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, index):
        y = int(self.labels[index])
        noise = torch.randn(DIM) + float(np.random.uniform(-0.1, 0.1))
        sign = -1.0 if random.random() < 0.1 else 1.0
        return sign * (self.means[y] + noise), y


def tiny_model(dropout: float = 0.0) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(DIM, 16), nn.ReLU(), nn.Dropout(dropout), nn.Linear(16, 3))


def cross_entropy(model, batch, step):
    x, y = batch
    return F.cross_entropy(model(x), y)


def accuracy(data: NoisyBlobs):
    def evaluate(model) -> dict:
        model.eval()
        with torch.no_grad():
            logits = model(data.means[data.labels])
        return {"acc1": 100.0 * float((logits.argmax(1) == data.labels).float().mean())}

    return evaluate


def make_run(
    out,
    *,
    model=None,
    groups=None,
    loss_fn=cross_entropy,
    hook=None,
    info=None,
    device=None,
    fingerprint=None,
    log=None,
    **overrides,
) -> SupervisedRun:
    settings = dict(
        epochs=3,
        lr=0.05,
        warmup_epochs=1,
        batch_size=8,
        num_workers=0,
        seed=3,
        print_freq=100,
        output_dir=str(out) if out else None,
    )
    cfg = RunConfig(**{**settings, **overrides})
    model = model if model is not None else tiny_model()
    data = NoisyBlobs()
    groups = groups if groups is not None else [{"params": list(model.parameters())}]
    return SupervisedRun(
        cfg,
        model,
        groups,
        data,
        loss_fn,
        evaluate=accuracy(data),
        batch_hook=hook,
        fingerprint=fingerprint,
        info=info,
        device=device,
        log=log or (lambda msg: None),
    )


def log_lines(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "log.txt").read_text().splitlines()]


def noisy_hook(batch, step):
    """A random per-batch change (as mixup): reproducible only when seeded per step."""
    x, y = batch
    return x * float(np.random.uniform(0.9, 1.1)) + 0.01 * torch.randn_like(x), y


def test_the_loss_decreases_and_the_log_has_one_line_per_epoch(tmp_path):
    result = make_run(tmp_path, epochs=4).fit()
    lines = log_lines(tmp_path)
    assert (
        [line["epoch"] for line in lines] == [0, 1, 2, 3] == [r["epoch"] for r in result["history"]]
    )
    assert lines[-1]["train_loss"] < 0.5 * lines[0]["train_loss"]
    assert lines[-1]["test_acc1"] == 100.0
    assert set(lines[0]) == {"train_loss", "train_lr", "test_acc1", "epoch", "n_parameters"}
    ckpt = load_checkpoint(tmp_path / "checkpoint-last.pth")
    assert ckpt["epoch"] == 3 and ckpt["resume"]["epoch"] == 4  # official: last completed
    assert {"model", "optimizer", "epoch", "scaler", "args"} <= set(ckpt)
    assert (tmp_path / "checkpoint-3.pth").is_file()


def test_a_run_stopped_mid_epoch_resumes_bit_identically(tmp_path):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    common = dict(hook=noisy_hook, ckpt_every_steps=2, save_every=1)
    make_run(straight, model=tiny_model(0.2), **common).fit()
    # 6 iterations per epoch, a checkpoint every 2: killed in epoch 1 after its 3rd iteration,
    # it resumes from the checkpoint after the 2nd (and redoes the 3rd).
    stopped = make_run(killed, model=tiny_model(0.2), stop_after_iters=9, **common).fit()
    assert stopped["stopped"] and len(log_lines(killed)) == 1
    assert load_checkpoint(killed / "checkpoint-last.pth")["resume"]["samples_seen"] == 16
    make_run(killed, model=tiny_model(0.2), **common).fit()
    a = load_checkpoint(straight / "checkpoint-2.pth")["model"]
    b = load_checkpoint(killed / "checkpoint-2.pth")["model"]
    for name in a:
        assert torch.equal(a[name], b[name]), name
    # The train loss of the interrupted epoch is averaged over all its iterations, as in one go.
    assert (killed / "log.txt").read_text() == (straight / "log.txt").read_text()


def test_an_unreadable_last_checkpoint_falls_back_and_the_log_keeps_one_line_per_epoch(tmp_path):
    make_run(tmp_path, save_every=1, fingerprint={"data": "a"}).fit()
    first = (tmp_path / "log.txt").read_text()
    (tmp_path / "checkpoint-last.pth").write_bytes(b"cut short")
    (tmp_path / "checkpoint-2.pth").unlink()
    messages = []
    run = make_run(tmp_path, save_every=1, fingerprint={"data": "a"}, log=messages.append)
    assert any(
        "skipping unreadable checkpoint" in m and "checkpoint-last.pth" in m for m in messages
    )
    assert run.start_epoch == 2  # from checkpoint-1.pth: epochs 0 and 1 done
    run.fit()
    assert (tmp_path / "log.txt").read_text() == first  # epoch 2 redone and logged once
    with pytest.raises(InputError, match="another run .different data"):
        make_run(tmp_path, fingerprint={"data": "b"})


def test_accumulating_two_batches_of_4_is_one_batch_of_8(tmp_path):
    def first_step_gradients(**overrides):
        run = make_run(None, epochs=1, warmup_epochs=0, **overrides)
        grads = []
        step = run.optimizer.step

        def record_then_step(*args, **kwargs):
            grads.append([p.grad.clone() for p in run.model.parameters()])
            return step(*args, **kwargs)

        run.optimizer.step = record_then_step
        run.fit()
        return grads[0]

    whole = first_step_gradients(batch_size=8, accum_iter=1, stop_after_iters=1)
    accumulated = first_step_gradients(batch_size=4, accum_iter=2, stop_after_iters=2)
    for a, b in zip(whole, accumulated):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-7)
    assert any(g.abs().sum() > 0 for g in whole)


def test_each_group_gets_the_lr_times_its_lr_scale():
    model = tiny_model()
    first, second = list(model[0].parameters()), list(model[3].parameters())
    groups = [
        {"params": first, "lr_scale": 0.25, "weight_decay": 0.0},
        {"params": second, "lr_scale": 1.0, "weight_decay": 0.05},
    ]
    run = make_run(None, model=model, groups=groups, epochs=2, warmup_epochs=1, lr=0.08)
    result = run.fit()
    lrs = [group["lr"] for group in run.optimizer.param_groups]
    # The last step's lr: half-cycle cosine at epoch 1 + 5/6 of 2 epochs (1 warmup), to 0.
    peak = 0.5 * 0.08 * (1 + np.cos(np.pi * 5 / 6))
    assert lrs == pytest.approx([0.25 * peak, peak], rel=1e-12)
    assert run.optimizer.param_groups[1]["weight_decay"] == 0.05
    # train_lr (the unscaled lr, averaged over the epoch): warmup 0, 1/6, ..., 5/6 of 0.08.
    assert result["history"][0]["train_lr"] == pytest.approx(0.08 * 15 / 36)


def test_a_nan_loss_stops_naming_the_last_good_checkpoint(tmp_path):
    def nan_in_epoch_1(model, batch, step):
        loss = cross_entropy(model, batch, step)
        return loss * float("nan") if step.epoch == 1 and step.iteration == 2 else loss

    with pytest.raises(RunFailed, match="checkpoint-last.pth") as err:
        make_run(tmp_path, loss_fn=nan_in_epoch_1).fit()
    assert "loss is nan at epoch 1, iteration 2" in str(err.value)
    assert err.value.exit_code == 1
    assert load_checkpoint(tmp_path / "checkpoint-last.pth")["epoch"] == 0  # still readable


def test_seeded_samples_are_the_same_in_any_order_and_leave_the_global_rngs_alone():
    samples = SeededSamples(NoisyBlobs(), seed=5)
    forward = [samples[(i, 2)][0] for i in range(6)]
    state = torch.get_rng_state()
    backward = [samples[(i, 2)][0] for i in reversed(range(6))][::-1]
    assert all(torch.equal(a, b) for a, b in zip(forward, backward))
    assert torch.equal(torch.get_rng_state(), state)
    assert not torch.equal(samples[(0, 3)][0], forward[0])  # another epoch, another draw


def test_two_gloo_processes_match_one_process(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    make_run(one, batch_size=8, epochs=2).fit()
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["OMP_NUM_THREADS"] = "1"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        __file__,
        str(two),
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for a, b in zip(log_lines(one), log_lines(two), strict=True):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-5)
        assert b["train_lr"] == a["train_lr"] and b["test_acc1"] == a["test_acc1"]
    a = load_checkpoint(one / "checkpoint-1.pth")["model"]
    b = load_checkpoint(two / "checkpoint-1.pth")["model"]
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=1e-4, atol=1e-6)


def test_iteration_lines_show_time_per_iteration_and_the_etas():
    messages = []
    make_run(None, epochs=2, print_freq=2, log=messages.append).fit()
    lines = [m for m in messages if m.startswith("epoch 0 [")]
    assert lines and all(
        "img/s" in m and "s/iter" in m and "ETA epoch" in m and " run " in m for m in lines
    )


if __name__ == "__main__":  # one rank of test_two_gloo_processes_match_one_process
    torch.set_num_threads(1)
    with distributed_session("cpu") as (dist_info, dist_device):
        assert dist_info.world_size == 2
        make_run(
            Path(sys.argv[1]), batch_size=4, epochs=2, info=dist_info, device=dist_device
        ).fit()
