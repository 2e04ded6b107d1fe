"""SIGTERM and SIGUSR1 (what SLURM sends before preempting a job or at its time limit): every
command that resumes saves a resumable state at its next iteration boundary, all ranks at the
same one, and exits 75; the rerun ends where an uninterrupted run ends, bit for bit.

The signals are real (``os.kill`` to this process, whose handler the run installs as in the
command); tests/test_fault_injection.py sends them to subprocesses at seeded random moments.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from attgmae.checkpoint import load_checkpoint
from attgmae.cli.eval import main as eval_main
from attgmae.cli.maps import main as maps_main
from attgmae.cli.train import main as train_main
from attgmae.core import signals
from attgmae.core.errors import EXIT_PREEMPTED
from attgmae.engine import RunConfig, SupervisedRun, distributed_session
from attgmae.pipelines.linprobe import LinprobeConfig, run_linprobe
from attgmae.store import MapStoreWriter

# 16 training images at 64 px, batch 4: 4 iterations an epoch of the tiny model.
FAST = ["--model", "mae_vit_tiny_patch16", "--input_size", "64", "--device", "cpu",
        "--num_workers", "0", "--print_freq", "1", "--accum_iter", "1", "--batch_size", "4",
        "--epochs", "2", "--warmup_epochs", "1", "--blr", "1e-3"]  # fmt: skip


@pytest.fixture(autouse=True)
def no_request_left():
    yield
    signals._received.clear()  # (a signal that landed after a run's last boundary)


def weights(path) -> dict:
    return load_checkpoint(path)["model"]


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


def log_records(out: Path, drop=("train_img_per_s",)) -> list[dict]:
    """log.txt's lines without the timing."""
    lines = (out / "log.txt").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k not in drop} for line in lines]


# ---------------------------------------------------------------- attg-train


def test_attg_train_saves_mid_epoch_on_sigusr1_exits_75_and_resumes_bit_identically(
    make_truth_example, tmp_path, monkeypatch, capsys
):
    from attgmae.pipelines.train import PretrainRun

    root, maps = make_truth_example(tmp_path, 4, 2)
    args = ["--data_path", str(root), "--maps", str(maps), *FAST]
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    assert train_main([*args, "--output_dir", str(straight)]) == 0
    weigh, calls = PretrainRun.batch_weights, [0]

    def weigh_then_signal(run, batch, tau):
        calls[0] += 1
        if calls[0] == 6:  # epoch 1, iteration 2 of 4
            os.kill(os.getpid(), signal.SIGUSR1)
        return weigh(run, batch, tau)

    monkeypatch.setattr(PretrainRun, "batch_weights", weigh_then_signal)
    capsys.readouterr()
    assert train_main([*args, "--output_dir", str(stopped)]) == EXIT_PREEMPTED
    monkeypatch.undo()
    err = capsys.readouterr().err
    assert "SIGUSR1 received" in err and "run the same command again" in err
    state = load_checkpoint(stopped / "checkpoint-last.pth")["resume"]
    assert state["epoch"] == 1 and state["samples_seen"] == 8  # saved after that iteration
    assert train_main([*args, "--output_dir", str(stopped)]) == 0  # the same command again
    assert_same_weights(
        weights(straight / "checkpoint-1.pth"), weights(stopped / "checkpoint-1.pth")
    )
    assert log_records(stopped) == log_records(straight)


# ---------------------------------------------------------------- the engine (finetune, dense)


class Blobs(Dataset):
    """Class means plus noise from torch, numpy and Python's random (as augmentations draw)."""

    def __init__(self, size: int = 24):
        self.means = 2.0 * torch.randn(3, 8, generator=torch.Generator().manual_seed(0))
        self.labels = torch.arange(size) % 3

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, index):
        noise = torch.randn(8) + float(np.random.uniform(-0.1, 0.1))
        return self.means[self.labels[index]] + noise, int(self.labels[index])


def engine_run(out, loss_fn=None, info=None, device=None, **overrides) -> SupervisedRun:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 3))
    cfg = RunConfig(**{**dict(epochs=3, lr=0.05, warmup_epochs=1, batch_size=4, num_workers=0,
                              seed=3, output_dir=str(out), save_every=1), **overrides})  # fmt: skip

    def cross_entropy(net, batch, step):
        x, y = batch
        return F.cross_entropy(net(x), y)

    return SupervisedRun(cfg, model, [{"params": list(model.parameters())}], Blobs(),
                         loss_fn or cross_entropy, info=info, device=device,
                         log=lambda message: None)  # fmt: skip


def signal_at(iterations: set[int], signum=signal.SIGTERM):
    """A loss that sends this process ``signum`` during the given (global) iterations."""
    count = [0]

    def loss(net, batch, step):
        if count[0] in iterations:
            os.kill(os.getpid(), signum)
        count[0] += 1
        x, y = batch
        return F.cross_entropy(net(x), y)

    return loss


def test_a_supervised_run_stopped_by_sigterm_at_random_steps_resumes_bit_identically(tmp_path):
    straight = tmp_path / "straight"
    engine_run(straight).fit()
    rng = np.random.default_rng(7)
    # 6 iterations an epoch, 18 in all: seeded moments, and the last of epoch 0 (its end)
    moments = sorted({5, *rng.choice(17, size=2, replace=False).tolist()})
    for moment in moments:
        out = tmp_path / f"stopped_{moment}"
        with pytest.raises(signals.Preempted) as stop:
            engine_run(out, loss_fn=signal_at({moment})).fit()
        assert stop.value.exit_code == EXIT_PREEMPTED and "SIGTERM received" in str(stop.value)
        state = load_checkpoint(out / "checkpoint-last.pth")["resume"]
        assert state["global_step"] == moment + 1  # the step the signal landed in, no further
        engine_run(out).fit()
        assert_same_weights(
            weights(straight / "checkpoint-2.pth"), weights(out / "checkpoint-2.pth")
        )
        assert (out / "log.txt").read_text() == (straight / "log.txt").read_text(), moment


def test_attg_eval_finetune_on_sigterm_exits_75_and_resumes_to_the_same_weights(
    tiny_mae_checkpoints, example_root, tmp_path, monkeypatch
):
    def argv(out):
        return ["finetune", "--checkpoint", str(tiny_mae_checkpoints[0]), "--data_path",
                str(example_root), "--output_dir", str(out), "--device", "cpu", "--num_workers",
                "0", "--input_size", "32", "--batch_size", "4", "--epochs", "2",
                "--warmup_epochs", "1", "--mixup", "0.8", "--print_freq", "100"]  # fmt: skip

    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    assert eval_main(argv(straight)) == 0
    step = SupervisedRun._optimizer_step

    def step_then_signal(run):
        step(run)
        if run.global_step == 8:  # epoch 1, iteration 2 of 6
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(SupervisedRun, "_optimizer_step", step_then_signal)
    assert eval_main(argv(stopped)) == EXIT_PREEMPTED
    monkeypatch.undo()
    assert load_checkpoint(stopped / "checkpoint-last.pth")["resume"]["global_step"] == 8
    assert not (stopped / "finetune.json").exists()
    assert eval_main(argv(stopped)) == 0
    assert_same_weights(
        weights(straight / "checkpoint-1.pth"), weights(stopped / "checkpoint-1.pth")
    )
    assert log_records(stopped) == log_records(straight)


def _rank(rank: int, port: int, out: Path) -> None:
    """One of two gloo ranks: rank 1 alone is signalled, in step 3 of 6 of epoch 0."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE="2", LOCAL_RANK=str(rank))  # fmt: skip
    code = -1
    try:
        with distributed_session("cpu") as (info, device):
            loss = signal_at({2} if rank == 1 else set())  # 24 samples, 2 ranks x batch 2
            run = engine_run(out, loss_fn=loss, info=info, device=device, batch_size=2,
                             print_freq=4)  # (ranks agree at log lines)
            try:
                run.fit()
                code = 0
            except signals.Preempted as stop:
                code = stop.exit_code
        record = {"exit_code": code, "global_step": run.global_step}
        (out / f"rank{rank}.json").write_text(json.dumps(record))
    finally:
        os._exit(0)  # a forked child: no pytest teardown


def test_the_ranks_agree_on_where_to_stop(tmp_path):
    """Only rank 1 gets the signal (at its iteration 2); both ranks agree at the next log line
    (iteration 4) and stop after that step, rank 0 saves it. (Two forked gloo processes: no
    second start-up.)"""
    import multiprocessing
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    context = multiprocessing.get_context("fork")
    ranks = [context.Process(target=_rank, args=(r, port, tmp_path)) for r in (0, 1)]
    for process in ranks:
        process.start()
    for process in ranks:
        process.join(timeout=240)
    outcome = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert all(o["exit_code"] == EXIT_PREEMPTED for o in outcome), outcome
    assert outcome[0]["global_step"] == outcome[1]["global_step"] == 4
    assert load_checkpoint(tmp_path / "checkpoint-last.pth")["resume"]["global_step"] == 4


# ---------------------------------------------------------------- linprobe and generate


def test_a_linear_probe_stopped_inside_an_epoch_resumes_to_the_same_head(
    tiny_mae_checkpoints, example_root, tmp_path
):
    common = dict(checkpoint=str(tiny_mae_checkpoints[0]), data_path=str(example_root),
                  epochs=2, warmup_epochs=1, batch_size=4, eff_batch_size=8,
                  cached_features=True, device="cpu", num_workers=0, input_size=32,
                  features_dir=str(tmp_path / "features"), log_every=1)  # fmt: skip
    quiet = lambda message: None  # noqa: E731
    run_linprobe(LinprobeConfig(output_dir=str(tmp_path / "straight"), **common), log=quiet)

    def signal_in_epoch_1(message):
        if message.startswith("epoch 1 [3/6]"):  # 3 steps of 2 micro-batches an epoch
            os.kill(os.getpid(), signal.SIGTERM)

    stopped = LinprobeConfig(output_dir=str(tmp_path / "stopped"), **common)
    with pytest.raises(signals.Preempted, match="micro-batch 4"):
        run_linprobe(stopped, log=signal_in_epoch_1)
    run_linprobe(stopped, log=quiet)
    a = torch.load(tmp_path / "straight" / "checkpoint-1.pth")
    b = torch.load(tmp_path / "stopped" / "checkpoint-1.pth")
    for name in a["head"]:
        assert torch.equal(a["head"][name], b["head"][name]), name
    drop = ("train_img_per_s",)
    assert log_records(tmp_path / "stopped", drop) == log_records(tmp_path / "straight", drop)


def store_content(path) -> dict:
    from attgmae.store import open_store

    store = open_store(path)
    return {"keys": list(store.keys), "maps": store.read_all(), "status": store.status,
            "attrs": {k: v for k, v in store.attrs.items() if k != "created"}}  # fmt: skip


def test_generate_on_sigterm_keeps_its_whole_chunks_and_the_rerun_equals_a_fresh_run(
    example_root, tmp_path, monkeypatch, capsys
):
    args = ["generate", str(example_root / "train"), "--methods", "random", "--random_weights",
            "--device", "cpu", "--batch_size", "2", "--num_workers", "0", "--chunk_rows", "4",
            "--shard_rows", "8", "--no_progress"]  # fmt: skip
    write_chunk = MapStoreWriter.write_chunk

    def write_then_signal(writer, chunk, *rest, **kwargs):
        write_chunk(writer, chunk, *rest, **kwargs)
        if chunk == 1:  # a signal as the second chunk is staged
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(MapStoreWriter, "write_chunk", write_then_signal)
    stopped = tmp_path / "stopped"
    assert maps_main([*args, "--out", str(stopped)]) == EXIT_PREEMPTED
    monkeypatch.undo()
    assert "SIGTERM received" in capsys.readouterr().err
    assert (stopped / "random.zarr.partial").is_dir() and not (stopped / "random.zarr").exists()
    assert maps_main([*args, "--out", str(stopped)]) == 0
    assert "resuming: 8 of 24 images already done" in capsys.readouterr().err
    fresh = tmp_path / "fresh"
    assert maps_main([*args, "--out", str(fresh)]) == 0
    got, want = store_content(stopped / "random.zarr"), store_content(fresh / "random.zarr")
    assert got["keys"] == want["keys"] and got["attrs"] == want["attrs"]
    np.testing.assert_array_equal(got["maps"], want["maps"])
    np.testing.assert_array_equal(got["status"], want["status"])
