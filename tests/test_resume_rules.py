"""One resume rule for every command (attgmae.engine.resume): a checkpoint refused for trust is
never skipped, a resume with settings other than the checkpoint's is refused naming each (old ->
new) unless accepted (and then recorded), --epochs may change, every command resumes by default
and a fresh start over a previous run's checkpoints must be told; TensorBoard has one x axis and
attg-train names its outputs and the next command."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from fractions import Fraction

import pytest
import torch

from attgmae.checkpoint import load_checkpoint, load_latest_checkpoint
from attgmae.cli.eval import main as eval_main
from attgmae.cli.train import main as train_main
from attgmae.core.errors import InputError
from attgmae.core.torchfile import CheckpointUnreadable, CheckpointUntrusted, load_torch_file
from attgmae.engine.resume import find_checkpoint
from attgmae.pipelines.finetune_config import FinetuneConfig
from attgmae.pipelines.linprobe import LinprobeConfig
from attgmae.pipelines.linprobe_state import read_probe_checkpoint
from attgmae.pipelines.segment_config import SegmentConfig
from attgmae.pipelines.taskonomy_config import TaskonomyConfig
from attgmae.pipelines.train_config import TrainConfig
from attgmae.store import open_store, write_store

# 16 training images at 64 px, batch 8: 2 iterations an epoch of the tiny model.
FAST = ["--model", "mae_vit_tiny_patch16", "--input_size", "64", "--device", "cpu",
        "--num_workers", "0", "--print_freq", "100", "--accum_iter", "1", "--batch_size", "8",
        "--warmup_epochs", "0"]  # fmt: skip


def digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def data(tmp_path_factory, make_truth_example):
    return make_truth_example(tmp_path_factory.mktemp("resume_rules"), 4, 2)


def train_args(data, out, *more):
    root, maps = data
    return ["--data_path", str(root), "--maps", str(maps), "--output_dir", str(out), *FAST,
            *map(str, more)]  # fmt: skip


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory):
    """A finished guided run of one epoch, to resume in copies."""
    out = tmp_path_factory.mktemp("trained") / "out"
    assert train_main(train_args(data, out, "--epochs", 1)) == 0
    return out


def copy_of(run, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(run, out)
    return out


# ---------------------------------------------------------------- refused for trust (22.2)


def test_the_reader_tells_damaged_from_refused_for_trust(tmp_path):
    whole = tmp_path / "whole.pth"
    torch.save({"model": {}, "note": Fraction(1, 3)}, whole)
    with pytest.raises(CheckpointUntrusted, match="fractions.Fraction.*--trust_checkpoint"):
        load_torch_file(whole)
    assert load_torch_file(whole, trusted=True)["note"] == Fraction(1, 3)
    cut = tmp_path / "cut.pth"
    cut.write_bytes(whole.read_bytes()[:-40])
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"cut short")  # decodes as a pickle GLOBAL opcode naming no class
    for damaged in (cut, garbage):
        with pytest.raises(CheckpointUnreadable):
            load_torch_file(damaged, trusted=True)


@pytest.mark.parametrize("reader", ["mae", "probe"])
def test_resuming_never_skips_a_checkpoint_refused_for_trust(tmp_path, reader):
    """The one reader of a run's newest checkpoint (every command: attg-train, the engine's
    runs, the probe): damaged falls back to an older one, refused for trust stops."""
    read = {"mae": load_checkpoint, "probe": read_probe_checkpoint}[reader]
    state = {"model": {}, "head": {}, "epoch": 0, "history": []}
    torch.save(state, tmp_path / "checkpoint-0.pth")
    last = tmp_path / "checkpoint-last.pth"
    torch.save({**state, "epoch": 1, "note": Fraction(1, 3)}, last)
    with pytest.raises(InputError) as refused:
        load_latest_checkpoint(tmp_path, read=read)
    assert str(last) in str(refused.value) and "--trust_checkpoint" in str(refused.value)
    with pytest.raises(InputError, match="--trust_checkpoint"):
        find_checkpoint(tmp_path, read=read, log=lambda m: None)
    path, ckpt = load_latest_checkpoint(tmp_path, trusted=True, read=read)
    assert path == last and ckpt["epoch"] == 1
    last.write_bytes(last.read_bytes()[:100])  # damaged: the older one, with a warning
    warned = []
    path, ckpt = load_latest_checkpoint(tmp_path, read=read, warn=warned.append)
    assert path.name == "checkpoint-0.pth" and "unreadable" in warned[0]


def test_attg_train_stops_at_its_checkpoint_refused_for_trust_and_keeps_it(
    data, trained, tmp_path, capsys
):
    out = copy_of(trained, tmp_path)
    last = out / "checkpoint-last.pth"
    ckpt = torch.load(last, weights_only=False)
    ckpt["note"] = Fraction(1, 3)  # an object beyond tensors (a whole, unharmed file)
    torch.save(ckpt, last)
    before = {p.name: digest(p) for p in out.glob("checkpoint-*.pth")}
    log = (out / "log.txt").read_text()
    assert train_main(train_args(data, out, "--epochs", 2)) == 2
    err = capsys.readouterr().err
    assert str(last) in err and "--trust_checkpoint" in err
    assert {p.name: digest(p) for p in out.glob("checkpoint-*.pth")} == before
    assert (out / "log.txt").read_text() == log
    assert train_main(train_args(data, out, "--epochs", 2, "--trust_checkpoint")) == 0
    assert f"resumed from {last}" in capsys.readouterr().out


# ---------------------------------------------------------------- settings (22.4)


def test_a_resume_with_other_settings_is_refused_naming_each(data, trained, tmp_path, capsys):
    out = copy_of(trained, tmp_path)
    root, maps = data
    store = open_store(maps)
    other = tmp_path / "other.zarr"  # the same keys, one map changed
    values = store.read_all().astype("float32")
    values[0] = 1.0 - values[0]
    write_store(other, list(store.keys), values, method=store.method, labels=store.labels)
    kept = {name: digest(out / name) for name in ("config.json", "checkpoint-last.pth")}
    cases = [
        (["--mask_ratio", 0.6], ["mask_ratio 0.75 -> 0.6"]),
        (["--guidance", "none"], ["guidance 'store' -> 'none'"]),  # no half-guided run
        (
            ["--seed", 1, "--blr", 3e-3],
            ["seed 0 -> 1", "blr 0.00015 -> 0.003", "--accept_changed blr,seed"],
        ),  # (lr follows blr)
        (["--tau", 0.5], ["tau 1.0 -> 0.5"]),
        (["--no_norm_pix_loss", "--aug", "resize"], ["norm_pix_loss", "aug 'rrc' -> 'resize'"]),
        (["--batch_size", 4], ["batch_size 8 -> 4", "eff_batch_size 8 -> 4"]),
    ]
    for flags, named in cases:
        assert train_main(train_args(data, out, "--epochs", 2, *flags)) == 2, flags
        err = capsys.readouterr().err
        assert "belongs to another run" in err and all(n in err for n in named), (flags, err)
    args = train_args(data, out, "--epochs", 2)
    args[args.index("--maps") + 1] = str(other)
    assert train_main(args) == 2
    assert "different maps" in capsys.readouterr().err
    assert {name: digest(out / name) for name in kept} == kept  # config.json not rewritten


def test_a_moved_store_and_more_epochs_resume_and_accepted_changes_are_recorded(
    data, trained, tmp_path, capsys
):
    out = copy_of(trained, tmp_path)
    moved = tmp_path / "moved" / "maps.zarr"  # the same store elsewhere: the same run
    shutil.copytree(data[1], moved)
    args = train_args(data, out, "--epochs", 2)
    args[args.index("--maps") + 1] = str(moved)
    assert train_main(args) == 0
    said = capsys.readouterr().out
    assert "resuming with --epochs 2 instead of 1: the lr cosine and the tau cosine now end at " \
           "epoch 2" in said  # fmt: skip
    assert train_main(train_args(data, out, "--epochs", 3, "--blr", 3e-3,
                                 "--accept_changed", "blr")) == 0  # fmt: skip
    config = json.loads((out / "config.json").read_text())
    assert config["blr"] == 3e-3 and config["tau_plan"]["to_epoch"] == 3
    changes = [(h["setting"], h["old"], h["new"]) for h in config["history"]]
    assert changes == [("epochs", 1, 2), ("epochs", 2, 3), ("blr", 1.5e-4, 3e-3),
                       ("lr", 1.5e-4 * 8 / 256, 3e-3 * 8 / 256)]  # fmt: skip
    assert all(h["when"] for h in config["history"])
    assert load_checkpoint(out / "checkpoint-last.pth")["resume"]["history"] == config["history"]
    assert [json.loads(line)["epoch"] for line in (out / "log.txt").read_text().splitlines()] \
        == [0, 1, 2]  # fmt: skip
    assert train_main(train_args(data, out, "--epochs", 3, "--accept_changed", "bogus")) == 2
    assert "bogus: not a setting of this run" in capsys.readouterr().err


@pytest.fixture(scope="module")
def finetuned(tiny_mae_checkpoints, example_root, tmp_path_factory):
    """One optimizer step of a fine-tuning run (and its checkpoint)."""
    out = tmp_path_factory.mktemp("finetuned") / "out"
    assert eval_main(finetune_args(tiny_mae_checkpoints[0], example_root, out,
                                   "--stop_after_iters", 1)) == 0  # fmt: skip
    return out


def finetune_args(checkpoint, root, out, *more):
    return ["finetune", "--checkpoint", str(checkpoint), "--data_path", str(root),
            "--output_dir", str(out), "--device", "cpu", "--num_workers", "0", "--input_size",
            "32", "--batch_size", "4", "--epochs", "2", "--warmup_epochs", "0",
            "--ckpt_every_steps", "1", "--print_freq", "100", *map(str, more)]  # fmt: skip


def test_finetune_resume_refuses_other_settings_and_a_silent_fresh_start(
    tiny_mae_checkpoints, example_root, finetuned, tmp_path, capsys
):
    out = copy_of(finetuned, tmp_path)
    args = finetune_args(tiny_mae_checkpoints[0], example_root, out)
    cases = [
        (["--mixup", 0.8], "mixup 0.0 -> 0.8"),
        (["--blr", 2e-3], "blr 0.001 -> 0.002"),
        (["--drop_path", 0.3], "drop_path 0.1 -> 0.3"),
        (["--preset", "lowshot-1pct"], "preset None -> 'lowshot-1pct'"),
        (["--cls_token"], "global_pool 'avg' -> 'token'"),
        (["--layer_decay", 0.5], "layer_decay 0.75 -> 0.5"),
        (["--seed", 2], "seed 0 -> 2"),
    ]
    for flags, named in cases:
        assert eval_main([*args, *map(str, flags)]) == 2, flags
        err = capsys.readouterr().err
        assert "belongs to another run" in err and named in err, (flags, err)
    before = digest(out / "checkpoint-last.pth")
    assert eval_main([*args, "--no_auto_resume"]) == 2
    err = capsys.readouterr().err
    assert str(out) in err and "--overwrite" in err
    assert digest(out / "checkpoint-last.pth") == before


def test_linprobe_follows_the_same_rule(tiny_mae_checkpoints, example_root, tmp_path, capsys):
    out = tmp_path / "probe"
    args = ["linprobe", "--checkpoint", str(tiny_mae_checkpoints[0]), "--data_path",
            str(example_root), "--output_dir", str(out), "--device", "cpu", "--num_workers", "0",
            "--batch_size", "8", "--eff_batch_size", "16", "--input_size", "32",
            "--cached_features", "--warmup_epochs", "0", "--log_every", "0"]  # fmt: skip
    assert eval_main([*args, "--epochs", "1"]) == 0
    assert eval_main([*args, "--epochs", "1", "--blr", "0.2"]) == 2
    assert "blr 0.1 -> 0.2" in capsys.readouterr().err
    assert eval_main([*args, "--epochs", "1", "--no_auto_resume"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert eval_main([*args, "--epochs", "2", "--blr", "0.2", "--accept_changed", "blr"]) == 0
    result = json.loads((out / "linprobe.json").read_text())
    assert [(c["setting"], c["new"]) for c in result["changes"]] == [
        ("epochs", 2),
        ("blr", 0.2),
        ("lr", 0.2 * 16 / 256),
    ]
    assert [h["epoch"] for h in result["history"]] == [0, 1]


# Every config field either defines the run (DEFINES_RUN) or is listed here: resolved into a
# recorded value under another name, or outside what the run computes. A new field must choose.
NOT_IN_DEFINES_RUN = {
    TrainConfig: {
        # resolved (run_settings): tau, tau_end, accum_iter, lr, amp, the maps' and images' identity
        "tau",
        "tau_end",
        "accum_iter",
        "lr",
        "amp",
        "maps",
        "data_path",
        "epochs",
        "output_dir",
        "log_dir",
        "resume",
        "trust_checkpoint",
        "auto_resume",
        "overwrite",
        "accept_changed",
        "start_epoch",
        "num_workers",
        "pin_mem",
        "device",
        "compile",
        "dist_url",
        "dist_timeout_min",
        "world_size",
        "local_rank",
        "save_every",
        "keep_checkpoints",
        "ckpt_every_min",
        "ckpt_every_steps",
        "stop_after_iters",
        "print_freq",
        "vis_every",
        "vis_count",
        "knn_every",
        "knn_data",
        "skip_bad_images",
        "table_dir",
        "shuffle_buffer",  # (with tar shards: the run's "streams", resolved)
    },
    FinetuneConfig: {
        # the engine's schedule, the checkpoint's and the subset's digests
        "epochs",
        "warmup_epochs",
        "batch_size",
        "accum_iter",
        "eff_batch_size",
        "lr",
        "min_lr",
        "checkpoint",
        "subset_file",
        "percent",
        "shots",
        "data_path",
        "output_dir",
        "device",
        "num_workers",
        "pin_mem",
        "compile",
        "resume",
        "auto_resume",
        "overwrite",
        "accept_changed",
        "trust_checkpoint",
        "save_every",
        "ckpt_every_steps",
        "print_freq",
        "stop_after_iters",
        "eval_only",
        "nb_classes",  # (checked against the class folders, which decide)
        "log_dir",
        "seed",  # (these three: the engine's, as it resolves them)
        "amp",
        "clip_grad",
    },
    LinprobeConfig: {
        "epochs",
        "accum_iter",
        "eff_batch_size",
        "lr",
        "precision",
        "checkpoint",
        "subset_file",
        "percent",
        "shots",
        "data_path",
        "output_dir",
        "features_dir",
        "device",
        "num_workers",
        "resume",
        "auto_resume",
        "overwrite",
        "accept_changed",
        "trust_checkpoint",
        "log_every",
        "nb_classes",
        "log_dir",
    },
}
_DENSE_OUTSIDE = {
    # the engine's schedule, the resolved recipe, the checkpoint's digest, evaluation only
    "epochs", "warmup_epochs", "batch_size", "accum_iter", "eff_batch_size", "lr", "warmup_lr",
    "min_lr", "input_size", "drop_path", "weight_decay", "layer_decay", "eval_every", "num_vis",
    "checkpoint", "data_path", "output_dir", "device", "num_workers", "pin_mem", "compile",
    "resume", "auto_resume", "overwrite", "accept_changed", "trust_checkpoint", "save_every",
    "ckpt_every_steps", "print_freq", "stop_after_iters", "seed", "amp", "clip_grad", "log_dir",
}  # fmt: skip
NOT_IN_DEFINES_RUN[SegmentConfig] = _DENSE_OUTSIDE | {"num_classes", "inference", "slide_stride"}
NOT_IN_DEFINES_RUN[TaskonomyConfig] = _DENSE_OUTSIDE | {
    "tasks",
    "max_train_images",
    "max_val_images",
    "max_test_images",
}


@pytest.mark.parametrize("config", list(NOT_IN_DEFINES_RUN), ids=lambda c: c.__name__)
def test_every_setting_is_declared_defining_or_not(config):
    names = {f.name for f in dataclasses.fields(config)}
    assert set(config.DEFINES_RUN) <= names
    assert names - set(config.DEFINES_RUN) == NOT_IN_DEFINES_RUN[config]


# ---------------------------------------------------------------- one behaviour (23.5)


def test_attg_train_resumes_by_default_and_a_fresh_start_must_be_told(
    data, trained, tmp_path, capsys
):
    out = copy_of(trained, tmp_path)
    shutil.copyfile(out / "checkpoint-0.pth", out / "checkpoint-7.pth")  # an older run's
    assert train_main(train_args(data, out, "--epochs", 1)) == 0  # no flag: it resumes
    said = capsys.readouterr().out
    assert f"resumed from {out / 'checkpoint-last.pth'}" in said
    before = {p.name: digest(p) for p in out.glob("checkpoint-*.pth")}
    assert train_main(train_args(data, out, "--epochs", 1, "--no_auto_resume")) == 2
    err = capsys.readouterr().err
    assert str(out) in err and "--overwrite" in err
    assert {p.name: digest(p) for p in out.glob("checkpoint-*.pth")} == before
    assert train_main(train_args(data, out, "--epochs", 1, "--no_auto_resume", "--overwrite")) == 0
    assert "removed the previous run's 3 checkpoints" in capsys.readouterr().out
    assert sorted(p.name for p in out.glob("checkpoint-*.pth")) == [
        "checkpoint-0.pth",
        "checkpoint-last.pth",
    ]


def test_one_tensorboard_axis_no_tau_for_vanilla_and_the_next_command(
    data, tmp_path, capsys, monkeypatch
):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    root = data[0]
    monkeypatch.setattr("attgmae.pipelines.train.knn_top1", lambda *args, **kwargs: 42.0)
    out = tmp_path / "guided"
    argv = train_args(data, out, "--epochs", 2, "--print_freq", 1, "--knn_every", 1,
                      "--knn_data", root)  # fmt: skip
    assert train_main(argv) == 0
    said = capsys.readouterr().out
    events = EventAccumulator(str(out)).Reload()
    assert [e.step for e in events.Scalars("knn_top1")] == [1000, 2000]  # after each epoch
    assert [e.step for e in events.Scalars("train_loss")] == [0, 500, 1000, 1500]  # epoch_1000x
    final = out / "checkpoint-1.pth"
    assert f"checkpoint {final}, log {out / 'log.txt'}" in said
    assert f"attg-eval knn --checkpoint {final} --data_path {root}" in said
    assert f"attg-eval linprobe --checkpoint {final} --data_path {root}" in said

    vanilla = tmp_path / "vanilla"
    argv = train_args(data, vanilla, "--epochs", 1, "--print_freq", 1, "--guidance", "none")
    assert train_main(argv) == 0
    said = capsys.readouterr().out
    assert "Epoch [0] [2/2]" in said and "tau" not in said and "gamma" not in said
    assert "tau" not in EventAccumulator(str(vanilla)).Reload().Tags()["scalars"]
