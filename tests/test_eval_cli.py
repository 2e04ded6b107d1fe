"""End-to-end `attg-eval knn` and `attg-eval linprobe` on the built-in example set."""

import argparse
import hashlib
import json
import shutil
from dataclasses import asdict

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from attgmae.cli.eval import main
from attgmae.core.constants import IMAGENET_MEAN, IMAGENET_STD
from attgmae.core.errors import InputError
from attgmae.data.transforms import normalize_images
from attgmae.eval.features import LabelledImages, image_split, l2_normalize
from attgmae.eval.knn import knn_classifier
from attgmae.eval.monitor import knn_top1
from attgmae.eval.transforms import DeviceEvalPixels, EvalPixels, eval_transform
from attgmae.models import mae_vit_tiny_patch16
from attgmae.models.encoder import load_encoder
from attgmae.models.tokens import features
from attgmae.pipelines.linprobe import LinprobeConfig, run_linprobe


def _tiny_checkpoint(path, seed):
    torch.manual_seed(seed)
    model = mae_vit_tiny_patch16()
    torch.save(
        {
            "model": model.state_dict(),
            "optimizer": {},
            "epoch": 0,
            "scaler": {},
            "args": argparse.Namespace(model="mae_vit_tiny_patch16"),
        },
        path,
    )
    return model


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt")
    guided, vanilla = root / "guided.pth", root / "vanilla.pth"
    return {
        "guided": (guided, _tiny_checkpoint(guided, 0)),
        "vanilla": (vanilla, _tiny_checkpoint(vanilla, 1)),
    }


def test_knn_end_to_end_with_cache(tmp_path, example_root, checkpoints, capsys):
    out = tmp_path / "knn"
    argv = [
        "knn",
        "--checkpoint",
        str(checkpoints["guided"][0]),
        str(checkpoints["vanilla"][0]),
        "--labels",
        "guided",
        "vanilla",
        "--data_path",
        str(example_root),
        "--output_dir",
        str(out),
        "--device",
        "cpu",
        "--num_workers",
        "0",
        "--batch-size",
        "16",
        "--nb_knn",
        "3",
        "5",
        "100",
        "--input_size",
        "112",
    ]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "skipping k=[100]" in printed
    for label in ("guided", "vanilla"):
        res = json.loads((out / f"knn_{label}.json").read_text())
        ckpt = checkpoints[label][0]
        assert res["checkpoint_sha256"] == hashlib.sha256(ckpt.read_bytes()).hexdigest()
        assert [r["k"] for r in res["results"]] == [3, 5]
        assert (res["num_train"], res["num_val"], res["num_classes"]) == (24, 12, 4)
        assert (out / f"knn_{label}.png").stat().st_size > 0
        assert f"{label:<24}    5" in printed
    compare = json.loads((out / "knn_compare.json").read_text())
    assert set(compare["compare"]) == {"guided", "vanilla"}

    # The reported numbers follow from the cached features by knn_classifier called as DINO's
    # eval_knn.py calls it: num_classes left at its default 1000 (not the 4 classes here; the
    # order of the zero-vote classes filling the top 5 depends on it) ...
    res = json.loads((out / "knn_guided.json").read_text())
    sha = res["checkpoint_sha256"]
    (train_file,) = (out / "features").glob(f"{sha[:16]}_train_*.pt")
    (val_file,) = (out / "features").glob(f"{sha[:16]}_val_*.pt")
    train, val = torch.load(train_file), torch.load(val_file)
    for row in res["results"]:
        top1, top5 = knn_classifier(
            l2_normalize(train["features"]),
            train["labels"],
            l2_normalize(val["features"]),
            val["labels"],
            row["k"],
            0.07,
        )
        assert row == {"k": row["k"], "top1": top1, "top5": top5}
    # ... and the cached features are the encoder's CLS on Resize + CenterCrop (256/224 scaled
    # to the 112 px input used here to keep the test fast): the uint8 pixels of the loader,
    # normalized on the device, within 1 grey level of the PIL protocol transform's (2 at a
    # few values in 10 million: tests/test_image_decoding.py).
    encoder, _ = load_encoder(checkpoints["guided"][0], img_size=112)
    key = val["keys"][-1]
    pil = Image.open(example_root / "val" / key).convert("RGB")
    protocol = eval_transform(112, 128)(pil)  # normalized float [3, 112, 112]
    pixels = EvalPixels(112, 128)(np.asarray(pil))  # uint8 [3, 112, 112]
    mean, std = (torch.tensor(v).view(3, 1, 1) for v in (IMAGENET_MEAN, IMAGENET_STD))
    assert ((protocol * std + mean) * 255 - pixels.float()).abs().max() <= 2.0 + 1e-3
    with torch.no_grad():
        direct = features(encoder, normalize_images(pixels[None]))[0]
        via_pil = features(encoder, protocol[None])[0]
    assert torch.allclose(val["features"][-1], direct, atol=1e-4)
    assert torch.allclose(val["features"][-1], via_pil, atol=1e-2)
    assert val["labels"][-1].item() == res["class_names"].index(key.split("/")[0])

    # A second run reuses the cache and reports the same numbers.
    mtime = val_file.stat().st_mtime_ns
    assert main(argv) == 0
    assert "cached features" in capsys.readouterr().out
    assert val_file.stat().st_mtime_ns == mtime
    assert json.loads((out / "knn_guided.json").read_text())["results"] == res["results"]


def test_eval_transform_is_the_protocol():
    names = [type(t).__name__ for t in eval_transform().transforms]
    assert names == ["Resize", "CenterCrop", "ToTensor", "Normalize"]
    resize, crop = eval_transform().transforms[:2]
    assert resize.size == 256 and resize.interpolation.value == "bicubic"
    assert crop.size == (224, 224)


def test_images_are_read_as_imagefolder_does_no_exif_rotation(tmp_path):
    # DINO's and MAE's evaluations read images with ImageFolder's loader (PIL open + convert):
    # a JPEG tagged "rotate 90" is used as stored, not turned upright.
    rng = np.random.default_rng(0)
    stored = Image.fromarray(rng.integers(0, 255, (60, 90, 3), dtype=np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    (tmp_path / "train" / "a").mkdir(parents=True)
    path = tmp_path / "train" / "a" / "phone.jpg"
    stored.save(path, format="JPEG", quality=95, exif=exif)
    transform = eval_transform(32, 40)
    ((img, label, row),) = list(LabelledImages(image_split(tmp_path, "train"), transform))
    want = transform(Image.open(path).convert("RGB"))  # 90 wide, 60 high, as stored
    assert (label, row) == (0, 0) and torch.equal(img, want)
    # The file really is tagged: turned upright it would give other pixels.
    upright = transform(ImageOps.exif_transpose(Image.open(path)).convert("RGB"))
    assert not torch.allclose(img, upright, atol=0.1)


def test_monitor_matches_the_command(tmp_path, example_root, checkpoints):
    out = tmp_path / "knn"
    ckpt, mae = checkpoints["vanilla"]
    assert (
        main(
            [
                "knn",
                "--checkpoint",
                str(ckpt),
                "--data_path",
                str(example_root),
                "--output_dir",
                str(out),
                "--device",
                "cpu",
                "--num_workers",
                "0",
                "--nb_knn",
                "5",
            ]
        )
        == 0
    )
    want = json.loads((out / "knn_vanilla.json").read_text())["results"][0]["top1"]
    mae.train()
    assert knn_top1(mae, example_root, "cpu", k=5, batch_size=16) == pytest.approx(want)
    assert mae.training  # mode restored


def test_linprobe_images_log_checkpoint_resume(tmp_path, example_root, checkpoints, capsys):
    out = tmp_path / "probe"
    argv = [
        "linprobe",
        "--checkpoint",
        str(checkpoints["guided"][0]),
        "--data_path",
        str(example_root),
        "--output_dir",
        str(out),
        "--device",
        "cpu",
        "--num_workers",
        "0",
        "--batch_size",
        "8",
        "--eff_batch_size",
        "16",
        "--input_size",
        "64",
        "--warmup_epochs",
        "1",
        "--log_every",
        "0",
    ]
    assert main([*argv, "--epochs", "2"]) == 0
    lines = (out / "log.txt").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [0, 1]
    assert (out / "checkpoint-1.pth").is_file() and (out / "linprobe.png").is_file()
    res = json.loads((out / "linprobe.json").read_text())
    assert res["protocol_details"]["effective_batch"] == 16
    assert res["protocol_details"]["lr"] == pytest.approx(0.1 * 16 / 256)
    assert res["num_train_used"] == 24 and len(res["history"]) == 2
    capsys.readouterr()
    # Asking for one more epoch resumes from checkpoint-last.pth.
    assert main([*argv, "--epochs", "3"]) == 0
    assert "resumed from" in capsys.readouterr().out
    lines = (out / "log.txt").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [0, 1, 2]
    res = json.loads((out / "linprobe.json").read_text())
    assert res["final"]["acc1"] == res["history"][-1]["test_acc1"]


def test_interrupted_probe_resumes_to_the_same_head(tmp_path, example_root, checkpoints):
    common = dict(
        checkpoint=str(checkpoints["guided"][0]),
        data_path=str(example_root),
        epochs=3,
        warmup_epochs=1,
        batch_size=6,
        eff_batch_size=12,
        cached_features=True,
        device="cpu",
        num_workers=0,
        input_size=64,
        features_dir=str(tmp_path / "features"),
        log_every=0,
    )
    run_linprobe(
        LinprobeConfig(output_dir=str(tmp_path / "straight"), **common), log=lambda msg: None
    )

    def crash_after_epoch_0(msg):
        if msg.startswith("epoch 1:"):
            raise KeyboardInterrupt  # killed before epoch 1 was saved

    with pytest.raises(KeyboardInterrupt):
        run_linprobe(
            LinprobeConfig(output_dir=str(tmp_path / "killed"), **common), log=crash_after_epoch_0
        )
    run_linprobe(
        LinprobeConfig(output_dir=str(tmp_path / "killed"), **common), log=lambda msg: None
    )
    a = torch.load(tmp_path / "straight" / "checkpoint-2.pth")["head"]
    b = torch.load(tmp_path / "killed" / "checkpoint-2.pth")["head"]
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_fewshot_seeds_report_mean_and_std(tmp_path, example_root, checkpoints):
    out = tmp_path / "fewshot"
    assert (
        main(
            [
                "linprobe",
                "--checkpoint",
                str(checkpoints["guided"][0]),
                "--data_path",
                str(example_root),
                "--output_dir",
                str(out),
                "--device",
                "cpu",
                "--num_workers",
                "0",
                "--batch_size",
                "8",
                "--input_size",
                "64",
                "--epochs",
                "2",
                "--warmup_epochs",
                "1",
                "--shots",
                "2",
                "--seeds",
                "0",
                "1",
                "--cached_features",
            ]
        )
        == 0
    )
    summary = json.loads((out / "fewshot_summary.json").read_text())
    runs = [json.loads((out / f"seed_{s}" / "linprobe.json").read_text()) for s in (0, 1)]
    finals = [r["final"]["acc1"] for r in runs]
    assert summary["acc1_mean"] == pytest.approx(np.mean(finals))
    assert summary["acc1_std"] == pytest.approx(np.std(finals, ddof=1))
    assert [r["num_train_used"] for r in runs] == [8, 8]
    # Full-batch lr although 8 images are used (the paper's A.8).
    assert runs[0]["protocol_details"]["lr"] == pytest.approx(0.1 * 4096 / 256)
    assert runs[0]["fewshot"]["subset_sha256"] != runs[1]["fewshot"]["subset_sha256"]
    assert (out / "fewshot.png").is_file()


def test_bad_input_is_a_clear_error(tmp_path, example_root, checkpoints, capsys):
    base = ["--data_path", str(example_root), "--output_dir", str(tmp_path), "--device", "cpu"]
    assert main(["knn", "--checkpoint", str(tmp_path / "nope.pth"), *base]) == 2
    assert "nope.pth not found" in capsys.readouterr().err
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"\x00garbage")
    assert main(["knn", "--checkpoint", str(junk), *base]) == 2
    assert "junk.pth" in capsys.readouterr().err
    (tmp_path / "noval" / "train" / "a").mkdir(parents=True)
    assert (
        main(
            [
                "knn",
                "--checkpoint",
                str(checkpoints["guided"][0]),
                "--data_path",
                str(tmp_path / "noval"),
                "--device",
                "cpu",
            ]
        )
        == 2
    )
    assert "val not found" in capsys.readouterr().err


def test_a_corrupt_image_is_named(tmp_path, example_root, checkpoints, capsys):
    root = tmp_path / "data"
    shutil.copytree(example_root / "val", root / "val")
    shutil.copytree(example_root / "val", root / "train")
    bad = root / "train" / "circle" / "aaa_truncated.JPEG"
    bad.write_bytes((root / "train" / "circle").glob("*.JPEG").__next__().read_bytes()[:300])
    assert (
        main(
            [
                "knn",
                "--checkpoint",
                str(checkpoints["guided"][0]),
                "--data_path",
                str(root),
                "--output_dir",
                str(tmp_path / "out"),
                "--device",
                "cpu",
                "--num_workers",
                "1",
                "--input_size",
                "64",
                "--nb_knn",
                "3",
            ]
        )
        == 2
    )
    assert "aaa_truncated.JPEG" in capsys.readouterr().err


def test_a_model_contradicting_the_checkpoint_stops_knn_unless_forced(
    tmp_path, example_root, checkpoints, capsys
):
    argv = [
        "knn",
        "--checkpoint",
        str(checkpoints["guided"][0]),
        "--data_path",
        str(example_root),
        "--output_dir",
        str(tmp_path),
        "--device",
        "cpu",
        "--num_workers",
        "0",
        "--input_size",
        "64",
        "--nb_knn",
        "3",
    ]
    assert main([*argv, "--model", "mae_vit_base_patch16"]) == 2
    err = capsys.readouterr().err
    assert "--model mae_vit_base_patch16 contradicts" in err and "mae_vit_tiny_patch16" in err
    assert main([*argv, "--num_heads", "5"]) == 2
    assert "5 attention heads (from --num_heads 5) do not divide the width 192" in (
        capsys.readouterr().err
    )
    assert main([*argv, "--model", "mae_vit_base_patch16", "--force_model"]) == 0
    assert (
        json.loads((tmp_path / "knn_guided.json").read_text())["encoder"]["spec"]["num_heads"] == 12
    )


def test_knn_extracts_in_fp32_by_default_as_dino():
    from attgmae.cli.eval import build_parser
    from attgmae.pipelines.knn import KnnConfig

    parse = build_parser().parse_args
    knn = parse(["knn", "--checkpoint", "c.pth", "--data_path", "d"])
    assert knn.precision == "fp32" == KnnConfig("c.pth", "d").precision
    assert parse(["knn", "--checkpoint", "c.pth", "--data_path", "d", "--precision", "bf16"]
                 ).precision == "bf16"  # fmt: skip
    # the linear probe keeps MAE's mixed precision on CUDA
    assert parse(["linprobe", "--checkpoint", "c.pth", "--data_path", "d"]).precision == "auto"


def test_a_cycled_fewshot_probe_resumes_to_the_same_head(tmp_path, example_root, checkpoints):
    # 2 shots x 4 classes = 8 images < effective batch 12: every epoch is one step on exactly
    # 12 samples cycled through the 8 (the paper's A.8), resumable from (seed, epoch) alone.
    common = dict(
        checkpoint=str(checkpoints["guided"][0]),
        data_path=str(example_root),
        shots=2,
        epochs=3,
        warmup_epochs=1,
        batch_size=4,
        eff_batch_size=12,
        cached_features=True,
        device="cpu",
        num_workers=0,
        input_size=64,
        features_dir=str(tmp_path / "features"),
        log_every=0,
    )
    quiet = lambda msg: None  # noqa: E731
    straight = run_linprobe(LinprobeConfig(output_dir=str(tmp_path / "straight"), **common), quiet)
    assert straight["protocol_details"]["sampling"] == "cycle"
    assert straight["protocol_details"]["lr"] == pytest.approx(0.1 * 12 / 256)
    assert [(h["train_steps"], h["train_samples"]) for h in straight["history"]] == [(1, 12)] * 3

    def crash_after_epoch_0(msg):
        if msg.startswith("epoch 1:"):
            raise KeyboardInterrupt  # killed before epoch 1 was saved

    killed = LinprobeConfig(output_dir=str(tmp_path / "killed"), **common)
    with pytest.raises(KeyboardInterrupt):
        run_linprobe(killed, log=crash_after_epoch_0)
    with pytest.raises(InputError, match="sampling"):  # another scheme does not continue it
        run_linprobe(LinprobeConfig(**{**asdict(killed), "small_subset": "partial"}), quiet)
    run_linprobe(killed, log=quiet)
    a = torch.load(tmp_path / "straight" / "checkpoint-2.pth")["head"]
    b = torch.load(tmp_path / "killed" / "checkpoint-2.pth")["head"]
    for name in a:
        assert torch.equal(a[name], b[name]), name
    # The former behaviour, kept by name: one step on the 8 images once per epoch.
    partial_run = LinprobeConfig(
        **{**common, "output_dir": str(tmp_path / "partial"), "small_subset": "partial"}
    )
    steps = [
        (h["train_steps"], h["train_samples"]) for h in run_linprobe(partial_run, quiet)["history"]
    ]
    assert steps == [(1, 8)] * 3


def test_linprobe_on_a_subset_file_with_seeds(tmp_path, example_root, checkpoints, capsys):
    keys = image_split(example_root, "train").keys
    listed = tmp_path / "1percent.txt"
    # SimCLR's format (a file name a line), plus a key and a comment.
    listed.write_text("\n".join([keys[0].split("/")[-1], keys[7].split("/")[-1], keys[13],
                                 "# comment", keys[20].split("/")[-1]]) + "\n")  # fmt: skip
    out = tmp_path / "listed"
    argv = [
        "linprobe",
        "--checkpoint",
        str(checkpoints["guided"][0]),
        "--data_path",
        str(example_root),
        "--output_dir",
        str(out),
        "--device",
        "cpu",
        "--num_workers",
        "0",
        "--batch_size",
        "4",
        "--eff_batch_size",
        "8",
        "--input_size",
        "64",
        "--epochs",
        "1",
        "--warmup_epochs",
        "0",
        "--cached_features",
        "--log_every",
        "0",
    ]
    assert main([*argv, "--subset-file", str(listed), "--seeds", "0", "1"]) == 0
    runs = [json.loads((out / f"seed_{s}" / "linprobe.json").read_text()) for s in (0, 1)]
    file_sha = hashlib.sha256(listed.read_bytes()).hexdigest()
    for run in runs:
        assert run["num_train_used"] == 4 and run["fewshot"]["subset_file"] == str(listed)
        assert run["fewshot"]["subset_file_sha256"] == file_sha
        assert run["protocol_details"]["sampling"] == "cycle"  # 4 images < 8
    assert runs[0]["fewshot"]["subset_sha256"] == runs[1]["fewshot"]["subset_sha256"]
    ckpt = torch.load(out / "seed_0" / "checkpoint-last.pth")
    assert ckpt["subset_file_sha256"] == file_sha
    summary = json.loads((out / "fewshot_summary.json").read_text())
    assert summary["seeds_vary"].startswith("head initialisation and training order")
    for png in (out / "fewshot.png", out / "seed_1" / "linprobe.png"):
        with Image.open(png) as image:
            assert image.format == "PNG"
    capsys.readouterr()
    listed.write_text(f"{keys[0].split('/')[-1]}\nn09999999_1.JPEG\n")
    assert main([*argv, "--subset_file", str(listed), "--output_dir", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert f"--subset_file {listed}" in err and "n09999999_1.JPEG" in err
    assert "not in the training set" in err
    with pytest.raises(SystemExit):  # argparse: not allowed with --shots
        main([*argv, "--subset_file", str(listed), "--shots", "2"])


def test_knn_linprobe_and_fewshot_results_are_those_of_the_pil_transform(
    tmp_path, example_root, checkpoints, monkeypatch
):
    """The extraction's uint8 paths (EvalPixels in the workers, and DeviceEvalPixels: the
    resize and crop on the device, CUDA's default, run here on the CPU) against today's PIL
    protocol transform (float32 out of the loader) on the example set: the same k-NN
    accuracies, linear-probe and few-shot probe results; the features within round-off (the
    device's pixels are PIL's exactly: only the normalization's rounding is left)."""
    from attgmae.data import pil_exact
    from attgmae.eval import features as features_module
    from attgmae.pipelines.knn import KnnConfig, run_knn

    quiet = lambda msg: None  # noqa: E731
    ckpt = str(checkpoints["guided"][0])

    def evaluate(tag):
        knn = run_knn(KnnConfig(ckpt, str(example_root), str(tmp_path / f"knn_{tag}"),
                                nb_knn=[3, 5, 10], device="cpu", batch_size=16, num_workers=0,
                                input_size=64), quiet)  # fmt: skip
        probes = {}
        for name, extra in (("linprobe", {}), ("fewshot", {"shots": 2})):
            cfg = LinprobeConfig(checkpoint=ckpt, data_path=str(example_root), epochs=2,
                                 warmup_epochs=1, batch_size=8, eff_batch_size=8,
                                 cached_features=True, device="cpu", num_workers=0, input_size=64,
                                 output_dir=str(tmp_path / f"{name}_{tag}"), log_every=0,
                                 **extra)  # fmt: skip
            probes[name] = run_linprobe(cfg, quiet)
        feats = torch.load(next((tmp_path / f"knn_{tag}" / "features").glob("*_val_*.pt")))
        return knn, probes, feats["features"]

    knn, probes, feats = evaluate("uint8")
    with monkeypatch.context() as patch:
        patch.setattr(pil_exact, "FAST_DEVICE_TYPES", ("cuda", "cpu"))
        assert isinstance(features_module.split_transform(64, "cpu"), DeviceEvalPixels)
        knn_device, probes_device, feats_device = evaluate("device")
    monkeypatch.setattr(features_module, "EvalPixels", eval_transform)  # today's transform
    knn_pil, probes_pil, feats_pil = evaluate("pil")
    for results, runs in ((knn, probes), (knn_device, probes_device)):
        assert results["results"] == knn_pil["results"]
        for name in runs:
            curve = [(h["test_acc1"], h["test_acc5"]) for h in runs[name]["history"]]
            assert curve == [(h["test_acc1"], h["test_acc5"]) for h in probes_pil[name]["history"]]
    assert 0 < (feats - feats_pil).abs().max() < 1e-2  # the 1-grey-level pixels, nothing more
    assert (feats_device - feats_pil).abs().max() < 1e-4  # PIL's pixels: round-off only
