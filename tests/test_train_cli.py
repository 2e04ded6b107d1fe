"""`attg-train` end to end on the tiny example (in a temporary folder, as a user runs it)."""

import argparse
import hashlib
import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from attgmae.checkpoint import load_checkpoint
from attgmae.cli.train import main as train_main
from attgmae.core.listing import list_images
from attgmae.models import create_mae
from attgmae.optim import lr_at
from attgmae.store import open_store, write_store

# Small and fast: 16 training images, 64 px inputs (a 4 x 4 patch grid), the tiny model.
FAST = ["--model", "mae_vit_tiny_patch16", "--input_size", "64", "--device", "cpu",
        "--num_workers", "0", "--print_freq", "100", "--accum_iter", "1"]


@pytest.fixture(scope="module")
def data(tmp_path_factory, make_truth_example):
    return make_truth_example(tmp_path_factory.mktemp("train_cli"), 4, 2)


def run(argv, capsys=None):
    code = train_main([str(a) for a in argv])
    err = capsys.readouterr().err if capsys is not None else ""
    return code, err


def read_log(out):
    return [json.loads(line) for line in (out / "log.txt").read_text().splitlines()]


def test_guided_run_writes_official_checkpoints_log_and_png(data, tmp_path):
    root, maps = data
    out = tmp_path / "out"
    code, _ = run(["--data_path", root, "--maps", maps, "--output_dir", out, "--epochs", 2,
                   "--warmup_epochs", 1, "--batch_size", 8, "--blr", 1e-3, "--save_every", 1,
                   "--vis_every", 1, "--vis_count", 2, *FAST])
    assert code == 0
    assert {p.name for p in out.glob("checkpoint-*.pth")} == {
        "checkpoint-0.pth", "checkpoint-1.pth", "checkpoint-last.pth"}
    ckpt = load_checkpoint(out / "checkpoint-1.pth")
    assert {"model", "optimizer", "epoch", "scaler", "args"} <= set(ckpt)
    assert ckpt["epoch"] == 1 and isinstance(ckpt["args"], argparse.Namespace)
    assert ckpt["args"].model == "mae_vit_tiny_patch16" and ckpt["args"].norm_pix_loss is True
    assert ckpt["args"].maps_method == "imported"  # provenance of the guidance
    # official load_model resumes into an enabled fp16 scaler: the (fp32) run's state must fit
    torch.amp.GradScaler("cpu").load_state_dict(ckpt["scaler"])
    model = create_mae(ckpt["args"].model, img_size=64)
    model.load_state_dict(ckpt["model"], strict=True)  # official keys, loads as is
    first = torch.load(out / "checkpoint-0.pth", weights_only=False)["model"]
    qkv = "blocks.0.attn.qkv.weight"
    assert not torch.equal(first[qkv], ckpt["model"][qkv])  # it trained

    log = read_log(out)
    assert [e["epoch"] for e in log] == [0, 1]
    assert all(np.isfinite(e["train_loss"]) for e in log)
    # 2 iterations per epoch; as official MAE, the lr logged is the epoch's mean over iterations
    lr = 1e-3 * 8 / 256
    for e in log:
        per_iter = [lr_at(e["epoch"] + i / 2, lr, 0.0, 1, 2) for i in (0, 1)]
        assert e["train_lr"] == pytest.approx(np.mean(per_iter))
    png = Image.open(log[-1]["vis"])
    # title strip, original | masked | recon | weights, then the weights' colour key strip
    assert png.size == (4 * 64, 18 + 2 * 64 + 32)
    assert json.loads((out / "config.json").read_text())["guidance"] == "store"
    # TensorBoard (the test extra installs it): loss, lr and tau at every metric line
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out)).Reload()
    assert {"train_loss", "lr", "tau"} <= set(events.Tags()["scalars"])
    taus = [e.value for e in events.Scalars("tau")]
    assert len(taus) == 2 and taus[0] > taus[1]  # one line per epoch here; the cosine falls


def test_without_tensorboard_training_logs_to_log_txt_only(monkeypatch, tmp_path):
    import sys

    from attgmae.core.tensorboard import open_tensorboard

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if not installed
    assert open_tensorboard(tmp_path) is None
    assert not list(tmp_path.iterdir())


def test_missing_maps_stop_before_training_or_train_uniform(data, tmp_path, capsys):
    root, maps = data
    keys = list_images(root / "train")
    store = open_store(maps)
    partial = tmp_path / "partial.zarr"
    write_store(partial, keys[3:], store.get_batch(keys[3:]), method="test")
    base = ["--data_path", root, "--maps", partial, "--epochs", 1, "--batch_size", 8, *FAST]
    code, err = run([*base, "--output_dir", tmp_path / "a"], capsys)
    assert code == 2
    assert "3 of 16 training images have no map" in err and keys[0] in err
    assert not (tmp_path / "a" / "checkpoint-last.pth").exists()
    code, _ = run([*base, "--output_dir", tmp_path / "b", "--missing_maps", "uniform"])
    assert code == 0 and (tmp_path / "b" / "checkpoint-0.pth").exists()


def test_corrupt_image_stops_with_its_path_or_is_skipped(data, tmp_path, capsys):
    root, _ = data
    copy = tmp_path / "data"
    shutil.copytree(root / "train", copy / "train")
    bad = copy / "train" / "cross" / "cross_0001.JPEG"
    bad.write_bytes(b"not a jpeg at all")
    base = ["--data_path", copy, "--guidance", "none", "--epochs", 1, "--batch_size", 8, *FAST]
    code, err = run([*base, "--output_dir", tmp_path / "a", "--num_workers", 1], capsys)
    assert code == 2 and str(bad) in err and "--skip_bad_images" in err
    out = tmp_path / "b"
    code, _ = run([*base, "--output_dir", out, "--skip_bad_images"])
    assert code == 0
    assert read_log(out)[0]["train_bad_images"] == 1
    assert (out / "bad_images.txt").read_text().split() == ["cross/cross_0001.JPEG"]


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(data, tmp_path, capsys):
    root, maps = data
    out = tmp_path / "out"
    base = ["--data_path", root, "--maps", maps, "--output_dir", out, "--batch_size", 8, *FAST]
    assert run([*base, "--epochs", 1])[0] == 0
    last = out / "checkpoint-last.pth"
    digest = hashlib.sha256(last.read_bytes()).hexdigest()
    # tau 1e-3 makes exp(M / tau) overflow on the object patches: the loss becomes inf (the
    # resume must be told that the temperature changes)
    code, err = run([*base, "--epochs", 3, "--auto_resume", "--tau", "0.001",
                     "--tau_schedule", "constant", "--accept_changed", "tau,tau_schedule"],
                    capsys)
    assert code == 1
    assert "loss is" in err and "last good checkpoint" in err and str(last) in err
    assert hashlib.sha256(last.read_bytes()).hexdigest() == digest
    assert len(read_log(out)) == 1


def test_killed_mid_epoch_resumes_on_the_same_schedules(data, tmp_path, capsys):
    root, maps = data
    base = ["--data_path", root, "--maps", maps, "--epochs", 2, "--warmup_epochs", 1,
            "--batch_size", 4, "--blr", 1e-3, "--tau", 0.9, "--tau_end", 0.5, *FAST]
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    assert run([*base, "--output_dir", straight])[0] == 0
    # 4 iterations per epoch; checkpoint-last every 2; "killed" after 7 iterations, i.e. one
    # iteration after the mid-epoch save at epoch 1, iteration 2: that iteration is lost.
    code, _ = run([*base, "--output_dir", killed, "--ckpt_every_steps", 2,
                   "--stop_after_iters", 7])
    assert code == 0
    mid = load_checkpoint(killed / "checkpoint-last.pth")
    assert mid["resume"]["epoch"] == 1 and mid["resume"]["samples_seen"] == 8
    assert mid["epoch"] == 0  # official meaning: last completed epoch
    assert mid["resume"]["tau"] == pytest.approx(0.5 + 0.4 * 0.5 * (1 + np.cos(np.pi * 1.25 / 2)))
    code, _ = run([*base, "--output_dir", killed, "--auto_resume"], capsys)
    assert code == 0
    a = load_checkpoint(straight / "checkpoint-last.pth")
    b = load_checkpoint(killed / "checkpoint-last.pth")
    assert a["resume"]["global_step"] == b["resume"]["global_step"] == 8
    assert a["resume"]["lr"] == b["resume"]["lr"] and a["resume"]["tau"] == b["resume"]["tau"]
    for key, value in a["model"].items():
        torch.testing.assert_close(b["model"][key], value, rtol=1e-5, atol=1e-6, msg=key)
    assert read_log(straight)[1]["train_loss"] != read_log(straight)[0]["train_loss"]
    # the resumed epoch's log line covers all of its iterations, as the uninterrupted run's
    a_log, b_log = read_log(straight), read_log(killed)
    assert [e["epoch"] for e in b_log] == [0, 1]
    for a_line, b_line in zip(a_log, b_log):
        assert b_line["train_lr"] == a_line["train_lr"]
        assert b_line["train_tau"] == a_line["train_tau"]
        assert b_line["train_loss"] == pytest.approx(a_line["train_loss"], rel=1e-6)


def test_one_log_line_per_epoch_and_fewer_checkpoints_kept(data, tmp_path, capsys):
    root, maps = data
    out = tmp_path / "out"
    base = ["--data_path", root, "--maps", maps, "--output_dir", out, "--batch_size", 8,
            "--save_every", 1, *FAST]
    assert run([*base, "--epochs", 3, "--keep_checkpoints", 2], capsys)[0] == 0
    # the two newest numbered checkpoints stay, and checkpoint-last
    assert sorted(p.name for p in out.glob("checkpoint-*.pth")) == [
        "checkpoint-1.pth", "checkpoint-2.pth", "checkpoint-last.pth"]
    # resumed from an older checkpoint, the epochs it redoes replace their lines
    assert run([*base, "--epochs", 3, "--resume", out / "checkpoint-1.pth"], capsys)[0] == 0
    assert [e["epoch"] for e in read_log(out)] == [0, 1, 2]


def test_resume_inside_an_accumulation_group_keeps_the_schedules(data, tmp_path, capsys):
    # Saved after 8 samples (batch 4, accumulation 2); resumed with batch 8 the run starts at
    # iteration 1, inside an accumulation group: lr and tau must still be set (not NaN).
    root, maps = data
    out = tmp_path / "out"
    base = ["--data_path", root, "--maps", maps, "--output_dir", out, "--epochs", 2,
            "--warmup_epochs", 1, "--blr", 1e-3, "--tau", 0.9, "--tau_end", 0.5, *FAST,
            "--accum_iter", 2]
    code, _ = run([*base, "--batch_size", 4, "--ckpt_every_steps", 2, "--stop_after_iters", 3])
    assert code == 0
    assert load_checkpoint(out / "checkpoint-last.pth")["resume"]["samples_seen"] == 8
    code, err = run([*base, "--batch_size", 8, "--auto_resume", "--accept_changed",
                     "batch_size"], capsys)
    assert code == 0, err
    log = read_log(out)
    assert [e["epoch"] for e in log] == [0, 1] and all(np.isfinite(e["train_loss"]) for e in log)
    # epoch 0 ran only its iteration 1, whose group started at iteration 0: tau at epoch 0
    assert log[0]["train_tau"] == pytest.approx(0.9)


@pytest.mark.parametrize("guidance", ["none", "random"])
def test_vanilla_and_random_guidance_run(data, tmp_path, guidance):
    root, _ = data
    out = tmp_path / guidance
    code, _ = run(["--data_path", root, "--guidance", guidance, "--output_dir", out,
                   "--epochs", 1, "--batch_size", 8, "--aug", "resize", "--no_norm_pix_loss",
                   *FAST])
    assert code == 0
    ckpt = load_checkpoint(out / "checkpoint-last.pth")
    assert ckpt["args"].guidance == guidance and ckpt["args"].norm_pix_loss is False


def test_bad_flags_are_clear_errors(data, tmp_path, capsys):
    root, _ = data
    code, err = run(["--data_path", root, "--output_dir", tmp_path, *FAST], capsys)
    assert code == 2 and "--maps" in err
    out = ["--output_dir", tmp_path / "out"]  # (a run that stops early may leave its lock file)
    code, err = run(["--data_path", root, "--guidance", "none", "--mask_ratio", 0, *FAST, *out],
                    capsys)
    assert code == 2 and "--mask_ratio" in err  # nothing masked: the loss would be 0 / 0
    code, err = run(["--data_path", root, "--guidance", "none", *FAST, "--input_size", 72, *out],
                    capsys)
    assert code == 2 and "--input_size 72 is not a multiple" in err and "e.g. 64" in err
    code, err = run(["--data_path", root, "--guidance", "none", "--save_every", 0, *FAST, *out],
                    capsys)
    assert code == 2 and "--save_every" in err
    code, err = run(["--data-path", tmp_path / "nowhere", "--guidance", "none",  # kebab too
                     "--output-dir", tmp_path, *FAST], capsys)
    assert code == 2 and "train/" in err
    if not torch.cuda.is_available():
        argv = ["--data_path", root, "--guidance", "none", "--output_dir", tmp_path,
                "--model", "mae_vit_tiny_patch16", "--device", "cuda"]
        code, err = run(argv, capsys)
        assert code == 2 and "--device cpu" in err


def test_knn_every_logs_knn_top1(data, tmp_path):
    root, maps = data
    out = tmp_path / "out"
    fast_224 = [a if a != "64" else "224" for a in FAST]  # the monitor feeds 224 px crops
    code, _ = run(["--data_path", root, "--maps", maps, "--output_dir", out, "--epochs", 2,
                   "--batch_size", 8, "--knn_every", 2, "--knn_data", root, *fast_224])
    assert code == 0
    log = read_log(out)
    assert "knn_top1" not in log[0]  # every 2 epochs: epoch index 1 only
    assert 0.0 <= log[1]["knn_top1"] <= 100.0


def test_resume_from_an_official_style_checkpoint(data, tmp_path, capsys):
    root, maps = data
    out = tmp_path / "out"
    base = ["--data_path", root, "--maps", maps, "--output_dir", out, "--batch_size", 8, *FAST]
    assert run([*base, "--epochs", 1])[0] == 0
    ckpt = load_checkpoint(out / "checkpoint-0.pth")
    official = {k: ckpt[k] for k in ("model", "optimizer", "epoch", "scaler", "args")}
    torch.save(official, tmp_path / "official.pth")  # what official MAE writes: no 'resume'
    code, err = run([*base, "--epochs", 2, "--resume", tmp_path / "official.pth"], capsys)
    assert code == 0
    assert [e["epoch"] for e in read_log(out)] == [0, 1]  # continued at epoch + 1
    code, err = run([*base, "--epochs", 2, "--model", "mae_vit_base_patch16",
                     "--resume", tmp_path / "official.pth"], capsys)
    assert code == 2 and "mae_vit_tiny_patch16" in err
