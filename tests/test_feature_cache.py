"""The k-NN / linear-probe feature cache never serves stale features: its key is everything that
defines them (checkpoint and the entry read from it, architecture, pooling, precision, input
size, transform, images, code version), checked inside the file, and every image's identity
(size, mtime) is compared on load."""

import argparse
import os
import shutil

import pytest
import torch
from timm.models.vision_transformer import VisionTransformer

from attgmae.cli.eval import main
from attgmae.core.identity import changed_images, image_identities, image_identity
from attgmae.eval import features as feature_module
from attgmae.eval.features import (
    encoder_description,
    feature_description,
    image_split,
    split_features,
)
from attgmae.models.encoder import load_encoder

CPU = ["--device", "cpu", "--num_workers", "0", "--input_size", "32", "--nb_knn", "3"]


def dino_training_checkpoint(path):
    """A DINO training checkpoint (main_dino.py's layout) whose teacher and student are tiny
    ViTs with different random weights."""
    entries = {}
    for seed, key in ((0, "teacher"), (1, "student")):
        torch.manual_seed(seed)
        vit = VisionTransformer(img_size=32, patch_size=16, embed_dim=192, depth=2, num_heads=3,
                                num_classes=0)  # fmt: skip
        prefix = "module.backbone." if key == "student" else "backbone."
        entries[key] = {prefix + k: v for k, v in vit.state_dict().items()}
    args = argparse.Namespace(arch="vit_tiny", patch_size=16)
    torch.save({**entries, "epoch": 10, "args": args}, path)
    return path


def cache_files(folder):
    return {p.name: torch.load(p) for p in sorted(folder.glob("*.pt"))}


def test_teacher_then_student_of_one_dino_checkpoint_never_share_features(
    tmp_path, example_root, capsys
):
    ckpt = dino_training_checkpoint(tmp_path / "dino.pth")
    out = tmp_path / "knn"
    argv = ["knn", "--checkpoint", str(ckpt), "--data_path", str(example_root),
            "--output_dir", str(out), *CPU]  # fmt: skip
    assert main(argv) == 0  # the teacher, by default
    capsys.readouterr()
    assert main([*argv, "--checkpoint_key", "student"]) == 0
    printed = capsys.readouterr().out
    assert "cached features" not in printed and printed.count("images -> features") == 2
    files = cache_files(out / "features")
    assert len(files) == 4  # train and val, teacher and student
    by_key = {
        (f["description"]["encoder"]["checkpoint_key"], f["description"]["split"]): f
        for f in files.values()
    }
    teacher, student = by_key["teacher", "val"], by_key["student", "val"]
    assert not torch.allclose(teacher["features"], student["features"], atol=1e-3)
    encoder, _ = load_encoder(ckpt, img_size=32, checkpoint_key="student")
    dataset = feature_module.LabelledImages(
        image_split(example_root, "val", image_split(example_root, "train").class_names),
        feature_module.split_transform(32, "cpu"),
    )
    with torch.no_grad():
        pixels = feature_module.normalize_images(dataset[0][0][None])  # uint8 out of a worker
        direct = feature_module.encoder_features(encoder, pixels)[0]
    torch.testing.assert_close(student["features"][0], direct, atol=1e-4, rtol=1e-4)
    # Naming the default entry explicitly reads the same weights: the same cache.
    assert main([*argv, "--checkpoint_key", "teacher"]) == 0
    assert capsys.readouterr().out.count("cached features") == 2
    # Other heads (not visible in the weights) make other features.
    assert main([*argv, "--num_heads", "6"]) == 0
    assert "cached features" not in capsys.readouterr().out


@pytest.fixture
def tiny_encoder(tmp_path):
    torch.manual_seed(0)
    vit = VisionTransformer(img_size=32, patch_size=16, embed_dim=192, depth=2, num_heads=3,
                            num_classes=0)  # fmt: skip
    path = tmp_path / "vit.pth"
    torch.save(vit.state_dict(), path)
    return load_encoder(path, img_size=32)


def _config(**changes):
    return argparse.Namespace(**{"checkpoint_key": None, "force_model": False, **changes})


def test_every_defining_field_changed_alone_misses_the_cache(
    tmp_path, example_root, tiny_encoder, monkeypatch
):
    model, info = tiny_encoder
    val = image_split(example_root, "val", image_split(example_root, "train").class_names)
    messages = []
    base = dict(encoder=encoder_description(info, _config()), device="cpu", pool="cls",
                input_size=32, precision="fp32", features_dir=tmp_path / "f",
                log=messages.append)  # fmt: skip

    def run(split=val, encoder_model=model, **changes):
        messages.clear()
        feats, _ = split_features(encoder_model, split, "val", **{**base, **changes})
        return feats, any("cached features" in m for m in messages)

    first, _ = run()
    assert run()[1]  # unchanged: served from the cache

    def encoder(**fields):
        return {**base["encoder"], **fields}

    other_root = tmp_path / "copy"
    shutil.copytree(example_root / "val", other_root / "val", copy_function=shutil.copy2)
    variants = {
        "checkpoint sha256": dict(encoder=encoder(checkpoint_sha256="0" * 64)),
        "checkpoint key": dict(encoder=encoder_description(info, _config(checkpoint_key="ema"))),
        "force_model": dict(encoder=encoder_description(info, _config(force_model=True))),
        "heads": dict(encoder=encoder(spec={**base["encoder"]["spec"], "num_heads": 6})),
        "model name": dict(encoder=encoder(model_name="vit_small_patch16")),
        "source format": dict(encoder=encoder(source_format="training-student")),
        "positions": dict(encoder=encoder(positions="nearest")),
        "pool": dict(pool="avg"),
        "precision": dict(precision="bf16"),
        "input size": dict(
            input_size=48, encoder_model=load_encoder(info.checkpoint, img_size=48)[0]
        ),
        "image list": dict(
            split=feature_module.ImageSplit(
                val.root, val.keys[:-1], val.labels[:-1], val.class_names
            )
        ),
        "image root": dict(
            split=feature_module.ImageSplit(
                other_root / "val", val.keys, val.labels, val.class_names
            )
        ),
    }
    for name, changes in variants.items():
        assert not run(**changes)[1], name
    monkeypatch.setattr(feature_module, "CACHE_VERSION", feature_module.CACHE_VERSION + 1)
    assert not run()[1], "code version"
    monkeypatch.undo()
    assert run()[1]  # and the first file is still there, still right
    # A name collision (one file for two descriptions) is caught by the description inside.
    fixed = tmp_path / "f" / "collision.pt"
    monkeypatch.setattr(feature_module, "cache_file", lambda folder, description: fixed)
    run()
    feats, hit = run(pool="avg")
    assert not hit and any("other settings" in m for m in messages)
    assert not torch.allclose(feats, first)


def test_the_description_names_the_transform_and_device(example_root, tiny_encoder):
    _, info = tiny_encoder
    val = image_split(example_root, "val", image_split(example_root, "train").class_names)
    encoder = encoder_description(info, _config())
    desc = feature_description(
        val, "val", encoder=encoder, pool="avg", input_size=64, precision="auto", device="cpu"
    )
    assert desc["pool"] == "avgln" and desc["precision"] == "fp32" and desc["device_type"] == "cpu"
    assert "Resize(73, bicubic)" in desc["transform"] and "CenterCrop(64)" in desc["transform"]
    assert desc["encoder"]["spec"]["num_heads"] == 3 and desc["num_images"] == 12


def test_an_image_replaced_under_its_name_is_named_and_recomputed(tmp_path, example_root, capsys):
    root = tmp_path / "data"
    shutil.copytree(example_root, root, copy_function=shutil.copy2)
    ckpt = dino_training_checkpoint(tmp_path / "dino.pth")
    out = tmp_path / "knn"
    argv = ["knn", "--checkpoint", str(ckpt), "--data_path", str(root), "--output_dir", str(out),
            *CPU]  # fmt: skip
    assert main(argv) == 0
    val = image_split(root, "val", image_split(root, "train").class_names)
    replaced, source = val.keys[0], val.keys[-1]  # another class's image, same name
    before = os.stat(root / "val" / replaced)
    shutil.copyfile(root / "val" / source, root / "val" / replaced)
    os.utime(root / "val" / replaced, ns=(before.st_atime_ns, before.st_mtime_ns + 10**9))
    capsys.readouterr()
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "val: 1 image(s) changed since their features were cached" in printed
    assert replaced in printed
    assert "train: 24 cached features" in printed and "val: 12 images -> features" in printed
    (val_cache,) = [f for f in cache_files(out / "features").values()
                    if f["description"]["split"] == "val"]  # fmt: skip
    feats = val_cache["features"]
    torch.testing.assert_close(feats[0], feats[-1])  # the new image's features, not the old
    assert main(argv) == 0  # the cache now holds the new image
    assert capsys.readouterr().out.count("cached features") == 2


def test_image_identity_is_size_and_mtime(tmp_path):
    (tmp_path / "a").mkdir()
    for name in ("x.png", "y.png"):
        (tmp_path / "a" / name).write_bytes(b"12345")
    keys = ["a/x.png", "a/y.png"]
    recorded = image_identities(tmp_path, keys)
    assert tuple(recorded[0]) == image_identity(tmp_path / "a/x.png")
    assert changed_images(tmp_path, keys, recorded) == []
    (tmp_path / "a/y.png").write_bytes(b"123456")  # another size
    assert changed_images(tmp_path, keys, recorded) == ["a/y.png"]
    (tmp_path / "a/x.png").unlink()  # gone
    assert changed_images(tmp_path, keys, recorded) == ["a/x.png", "a/y.png"]
