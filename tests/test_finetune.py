"""`attg-eval finetune` end to end on the built-in example set, with a tiny MAE checkpoint of
random weights: it learns, resumes mid-epoch to identical weights, honours presets and subsets,
and evaluates a fine-tuned checkpoint as it is."""

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from attgmae.checkpoint import load_checkpoint
from attgmae.cli.eval import build_parser, finetune_config, main
from attgmae.core.errors import InputError
from attgmae.eval.transforms import finetune_train_transform, posterize_zero_bits_black
from attgmae.pipelines.finetune_config import FinetuneConfig, batch_arithmetic, by_model


@pytest.fixture(scope="module")
def tiny_checkpoint(tiny_mae_checkpoints):
    return tiny_mae_checkpoints[0]


def common(ckpt, data, out):
    return [
        "finetune",
        "--checkpoint",
        str(ckpt),
        "--data_path",
        str(data),
        "--output_dir",
        str(out),
        "--device",
        "cpu",
        "--num_workers",
        "0",
        "--input_size",
        "32",
        "--print_freq",
        "100",
    ]


@pytest.fixture(scope="module")
def learned(tiny_checkpoint, example_root, tmp_path_factory):
    """A short run whose validation images are its training images (val/ -> train/): random
    weights carry nothing to generalize from, so what the run can show is that it learns."""
    base = tmp_path_factory.mktemp("learn")
    data = base / "data"
    data.mkdir()
    os.symlink(example_root / "train", data / "train")
    os.symlink(example_root / "train", data / "val")
    out = base / "out"
    argv = common(tiny_checkpoint, data, out) + [
        "--batch_size",
        "8",
        "--epochs",
        "12",
        "--warmup_epochs",
        "1",
        "--lr",
        "3e-3",
        "--aa",
        "none",
        "--reprob",
        "0",
        "--smoothing",
        "0",
        "--drop_path",
        "0",
        "--save_every",
        "4",
    ]
    assert main(argv) == 0
    return data, out


def test_a_cpu_run_learns_and_writes_mae_style_outputs(learned):
    _, out = learned
    log = [json.loads(line) for line in (out / "log.txt").read_text().splitlines()]
    assert [x["epoch"] for x in log] == list(range(12))
    assert log[-1]["train_loss"] < log[0]["train_loss"] - 0.05
    assert log[-1]["test_acc1"] >= 45.0 > 25.0  # chance: 4 classes
    assert log[-1]["test_loss"] < np.log(4) - 0.15 < log[0]["test_loss"]
    result = json.loads((out / "finetune.json").read_text())
    assert result["final"]["acc1"] == log[-1]["test_acc1"]
    assert result["history"] == log and result["num_classes"] == 4
    assert result["protocol_details"]["effective_batch"] == 8
    assert result["protocol_details"]["loss"] == "CrossEntropyLoss"
    assert result["encoder"]["new_parts"] == [
        "fc_norm.weight",
        "fc_norm.bias",
        "head.weight",
        "head.bias",
    ]
    assert (out / "finetune.png").stat().st_size > 0
    ckpt = load_checkpoint(out / "checkpoint-11.pth")
    assert {"model", "optimizer", "epoch", "scaler", "args"} <= set(ckpt) and ckpt["epoch"] == 11
    assert ckpt["args"].model == "mae_vit_tiny_patch16" and ckpt["args"].lr == 3e-3
    assert (out / "checkpoint-3.pth").is_file() and not (out / "checkpoint-2.pth").exists()


def test_held_out_images_are_learned_when_their_classes_can_be_told_apart(
    tiny_checkpoint, tmp_path
):
    """Random weights carry nothing to generalize from on the example set's shapes; on classes
    a few epochs can learn from scratch (noise tinted by class), validation on images the run
    never trained on rises from chance (25%) to all correct."""
    rng = np.random.default_rng(0)
    tints = {
        "blue": (0.5, 0.5, 1.0),
        "green": (0.5, 1.0, 0.5),
        "grey": (0.75, 0.75, 0.75),
        "red": (1.0, 0.5, 0.5),
    }
    for split, count in (("train", 8), ("val", 5)):
        for name, tint in tints.items():
            folder = tmp_path / "tinted" / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                noise = rng.uniform(0, 255, (48, 48, 3)) * np.array(tint)
                Image.fromarray(noise.astype(np.uint8)).save(folder / f"{split}_{i}.JPEG")
    out = tmp_path / "out"
    argv = common(tiny_checkpoint, tmp_path / "tinted", out) + [
        "--batch_size", "8", "--epochs", "6", "--warmup_epochs", "1", "--lr", "3e-3",
        "--aa", "none", "--reprob", "0", "--smoothing", "0", "--drop_path", "0",
    ]  # fmt: skip
    assert main(argv) == 0
    log = [json.loads(line) for line in (out / "log.txt").read_text().splitlines()]
    assert log[-1]["test_acc1"] == 100.0 and log[-1]["test_loss"] < 0.5 * np.log(4)
    assert json.loads((out / "finetune.json").read_text())["num_val"] == 20


def test_eval_only_reads_the_fine_tuned_checkpoint_as_it_is(learned, tmp_path, capsys):
    data, out = learned
    argv = common(out / "checkpoint-11.pth", data, tmp_path) + ["--eval_only", "--batch_size", "8"]
    assert main(argv) == 0
    assert "* Acc@1" in capsys.readouterr().out
    result = json.loads((tmp_path / "finetune_eval.json").read_text())
    final = json.loads((out / "finetune.json").read_text())["final"]
    assert (
        result["encoder"]["source_format"] == "mae-finetuned"
        and result["encoder"]["new_parts"] == []
    )
    assert result["metrics"]["acc1"] == pytest.approx(final["acc1"])
    assert result["metrics"]["loss"] == pytest.approx(final["loss"], rel=1e-5)
    # MAE's --eval loads strictly: a part the checkpoint lacks (here a head for 3 classes: it
    # was fine-tuned on 4) would score a random head, and is an error
    three = tmp_path / "three"
    for split in ("train", "val"):
        for folder in sorted((data / split).iterdir())[:3]:
            (three / split).mkdir(parents=True, exist_ok=True)
            os.symlink(folder, three / split / folder.name)
    argv = common(out / "checkpoint-11.pth", three, tmp_path / "o3") + ["--eval_only"]
    assert main(argv) == 2
    assert "--eval_only" in capsys.readouterr().err and not (tmp_path / "o3").exists()


def test_killed_mid_epoch_resumes_to_identical_weights_with_the_full_recipe(
    tiny_checkpoint, example_root, tmp_path
):
    """RandAugment, random erasing, mixup/cutmix, drop path, label smoothing, accumulation: the
    run killed in epoch 1 ends with the uninterrupted run's weights and log."""
    recipe = [
        "--batch_size",
        "4",
        "--accum_iter",
        "2",
        "--epochs",
        "2",
        "--warmup_epochs",
        "1",
        "--mixup",
        "0.8",
        "--cutmix",
        "1.0",
        "--drop_path",
        "0.1",
        "--ckpt_every_steps",
        "1",
    ]
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    assert main(common(tiny_checkpoint, example_root, straight) + recipe) == 0
    # 6 iterations per epoch: stop after iteration 9 (the checkpoint after iteration 8 is the
    # newest; iteration 9 is drawn again after the resume).
    assert (
        main(common(tiny_checkpoint, example_root, killed) + recipe + ["--stop_after_iters", "9"])
        == 0
    )
    assert load_checkpoint(killed / "checkpoint-last.pth")["resume"]["samples_seen"] == 8
    assert main(common(tiny_checkpoint, example_root, killed) + recipe) == 0
    a = load_checkpoint(straight / "checkpoint-1.pth")["model"]
    b = load_checkpoint(killed / "checkpoint-1.pth")["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (killed / "log.txt").read_text() == (straight / "log.txt").read_text()
    details = json.loads((straight / "finetune.json").read_text())["protocol_details"]
    assert details["loss"] == "SoftTargetCrossEntropy" and details["accum_iter"] == 2


def test_presets_apply_and_explicit_flags_override_them():
    parse = build_parser().parse_args
    base = ["finetune", "--checkpoint", "c.pth", "--data_path", "d"]
    plain = finetune_config(parse(base))
    assert plain == FinetuneConfig(checkpoint="c.pth", data_path="d")
    cfg = finetune_config(
        parse(
            [
                *base,
                "--preset",
                "in1k-vit-l",
                "--epochs",
                "3",
                "--drop-path",
                "0.5",
                "--mixup",
                "0",
                "--cls_token",
            ]
        )
    )
    assert (cfg.epochs, cfg.drop_path, cfg.mixup) == (3, 0.5, 0.0)  # given: over the preset
    assert (cfg.blr, cfg.layer_decay, cfg.cutmix, cfg.eff_batch_size) == (1e-3, 0.75, 1.0, 1024)
    assert (cfg.preset, cfg.global_pool, cfg.min_lr) == ("in1k-vit-l", "token", 1e-6)
    base_cfg = finetune_config(parse([*base, "--preset", "in1k-vit-b"]))
    assert (base_cfg.epochs, base_cfg.blr, base_cfg.layer_decay) == (100, 5e-4, 0.65)
    # MAE's ViT-L recipe on one node of 8 GPUs: 32 x 4 accumulation x 8 = 1024, lr 4e-3.
    assert batch_arithmetic(cfg, world_size=8) == (4, 1024, pytest.approx(4e-3))
    with pytest.raises(InputError, match="--eff_batch_size 1024 is not --batch_size 32 x 3"):
        batch_arithmetic(cfg, world_size=3)


def test_lowshot_presets_follow_sec_a6():
    parse = build_parser().parse_args
    base = ["finetune", "--checkpoint", "c.pth", "--data_path", "d"]
    one = finetune_config(parse([*base, "--preset", "lowshot-1pct"]))
    assert (one.epochs, one.warmup_epochs, one.lr, one.weight_decay) == (50, 5, 1e-3, 0.05)
    assert one.percent == 1.0 and one.layer_decay is None  # None: by the encoder (below)
    # crop and flip only
    assert (one.aa, one.reprob, one.mixup, one.cutmix) == ("none", 0.0, 0.0, 0.0)
    blr = finetune_config(parse([*base, "--preset", "lowshot-1pct", "--blr", "5e-4"]))
    assert (blr.lr, blr.blr) == (None, 5e-4)  # a --blr given replaces the preset's absolute lr
    ten = finetune_config(parse([*base, "--preset", "lowshot-10pct"]))
    assert ten.percent == 10.0 and ten.lr == 1e-3 and ten.epochs == 50
    assert (ten.aa, ten.reprob, ten.mixup, ten.cutmix) == ("rand-m9-mstd0.5-inc1", 0.25, 0.8, 1.0)
    # the peak lr is absolute: the same whatever the batch
    assert batch_arithmetic(one, world_size=8)[2] == batch_arithmetic(one, world_size=1)[2]
    # layer decay 0.75 for ViT-L (24 blocks), 0.65 for ViT-B (12); an explicit value wins
    assert (by_model(None, 24), by_model(None, 12), by_model(0.9, 24)) == (0.75, 0.65, 0.9)
    # the standard 1% list replaces the preset's seeded 1% sampling
    listed = finetune_config(parse([*base, "--preset", "lowshot-1pct", "--subset_file", "1p.txt"]))
    assert listed.subset_file == "1p.txt" and listed.percent is None


def test_subsets_and_bad_flags(tiny_checkpoint, example_root, tmp_path, capsys):
    keys = sorted(p.name for p in (example_root / "train").glob("*/*.JPEG"))[::3]
    listed = tmp_path / "1percent.txt"
    listed.write_text("\n".join(keys) + "\n")
    out = tmp_path / "subset"
    argv = common(tiny_checkpoint, example_root, out)
    argv += ["--batch_size", "4", "--warmup_epochs", "0", "--epochs", "1"]
    assert main([*argv, "--subset_file", str(listed)]) == 0
    result = json.loads((out / "finetune.json").read_text())
    assert result["num_train_used"] == len(keys) == 8 and result["num_train"] == 24
    # The run's checkpoint belongs to that subset: resuming it with another is refused.
    assert main([*argv, "--shots", "3", "--epochs", "2"]) == 2
    assert "belongs to another run (different subset_sha256)" in capsys.readouterr().err
    assert main([*argv, "--shots", "3", "--percent", "10"]) == 2
    assert "at most one of --subset_file, --percent and --shots" in capsys.readouterr().err
    assert main([*argv, "--mixup", "0.8", "--batch_size", "3"]) == 2
    assert "even --batch_size" in capsys.readouterr().err


def test_randaugment_posterize_keeps_working_with_zero_bits():
    """timm's PosterizeIncreasing keeps 0 bits at high magnitudes; Pillow 13 refuses 0 bits."""
    img = Image.fromarray(np.full((8, 8, 3), 200, dtype=np.uint8))
    assert np.asarray(posterize_zero_bits_black(img, 0)).max() == 0
    assert np.asarray(posterize_zero_bits_black(img, 1)).max() == 128
    augment = finetune_train_transform(32, auto_augment="rand-m9-mstd0.5-inc1")
    randaugment = augment.transforms[2]
    posterize = [op for op in randaugment.ops if op.name == "PosterizeIncreasing"]
    assert [op.aug_fn for op in posterize] == [posterize_zero_bits_black]
    randaugment.ops, randaugment.num_layers = posterize, 1
    posterize[0].magnitude, posterize[0].prob, posterize[0].magnitude_std = 10, 1.0, 0
    assert augment(img).shape == (3, 32, 32)  # 0 bits kept: a black image, no error
