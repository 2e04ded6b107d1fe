"""Every weights format the issue lists loads into the right network, or fails naming the file."""

from __future__ import annotations

import argparse
import hashlib
import warnings

import pytest
import timm
import torch
from safetensors.torch import save_file

from attgmae.models import backbones
from attgmae.models.backbones import (
    RandomWeightsWarning,
    WeightsError,
    load_dino_vit,
    load_resnet50,
)


def _tiny_vit():
    # Same parameter names as ViT-B/16, 20x fewer weights: keeps the format tests fast.
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0)


@pytest.fixture
def tiny_dino(monkeypatch):
    monkeypatch.setattr(backbones, "build_dino_vit", _tiny_vit)
    torch.manual_seed(1)
    return _tiny_vit().state_dict()


def _assert_same_weights(model, state):
    loaded = model.state_dict()
    assert set(loaded) == set(state)
    for name, tensor in state.items():
        assert torch.equal(loaded[name], tensor), name


def _sha256(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_official_dino_backbone_file_full_size(tmp_path):
    """dino_vitbase16_pretrain.pth layout: a plain ViT-B/16 state dict, no head."""
    torch.manual_seed(2)
    state = backbones.build_dino_vit().state_dict()
    path = tmp_path / "dino_vitbase16_pretrain.pth"
    torch.save(state, path)
    model, identity = load_dino_vit(path)
    _assert_same_weights(model, state)
    assert not model.training
    assert identity == {"architecture": "vit_base_patch16_224", "weights_file": str(path),
                        "sha256": _sha256(path), "source": "file:state-dict"}


def test_full_dino_checkpoint_uses_teacher(tmp_path, tiny_dino):
    torch.manual_seed(3)
    student = _tiny_vit().state_dict()
    checkpoint = {
        "teacher": {**{f"backbone.{k}": v for k, v in tiny_dino.items()},
                    "head.mlp.0.weight": torch.zeros(8, 192),
                    "head.last_layer.weight_g": torch.ones(65536, 1)},
        "student": {f"module.backbone.{k}": v for k, v in student.items()},
        "optimizer": {"state": {}, "param_groups": []},
        "epoch": 100,
        "args": argparse.Namespace(arch="vit_base", patch_size=16),
    }
    path = tmp_path / "checkpoint.pth"
    torch.save(checkpoint, path)
    model, identity = load_dino_vit(path)
    _assert_same_weights(model, tiny_dino)
    assert identity["source"] == "file:dino-checkpoint"


def test_dino_checkpoint_with_ddp_prefix(tmp_path, tiny_dino):
    path = tmp_path / "ddp_checkpoint.pth"
    torch.save({"teacher": {f"module.backbone.{k}": v for k, v in tiny_dino.items()}}, path)
    _assert_same_weights(load_dino_vit(path)[0], tiny_dino)


def test_timm_pth_with_head_and_safetensors(tmp_path, tiny_dino):
    with_head = {**tiny_dino, "head.weight": torch.zeros(1000, 192), "head.bias": torch.zeros(1000)}
    pth = tmp_path / "vit.pth"
    torch.save(with_head, pth)
    _assert_same_weights(load_dino_vit(pth)[0], tiny_dino)
    st = tmp_path / "model.safetensors"
    save_file(tiny_dino, str(st))
    model, identity = load_dino_vit(st)
    _assert_same_weights(model, tiny_dino)
    assert identity["source"] == "file:safetensors" and identity["sha256"] == _sha256(st)


@pytest.fixture(scope="module")
def resnet_state():
    torch.manual_seed(4)
    return backbones.build_resnet50().state_dict()


def test_torchvision_resnet_files(tmp_path, resnet_state):
    path = tmp_path / "resnet50-0676ba61.pth"
    torch.save(resnet_state, path)
    model, identity = load_resnet50(path)
    _assert_same_weights(model, resnet_state)
    assert identity["architecture"] == "resnet50" and identity["sha256"] == _sha256(path)
    # Old torchvision files predate num_batches_tracked.
    old = {k: v for k, v in resnet_state.items() if not k.endswith("num_batches_tracked")}
    old_path = tmp_path / "resnet50-19c8e357.pth"
    torch.save(old, old_path)
    model, _ = load_resnet50(old_path)
    for name, tensor in old.items():
        assert torch.equal(model.state_dict()[name], tensor), name


def test_timm_resnet_safetensors(tmp_path, resnet_state):
    timm_state = timm.create_model("resnet50", pretrained=False).state_dict()
    assert set(timm_state) == set(resnet_state)  # timm and torchvision share the names
    path = tmp_path / "model.safetensors"
    save_file(timm_state, str(path))
    _assert_same_weights(load_resnet50(path)[0], timm_state)


def test_mismatched_file_names_it(tmp_path, resnet_state):
    path = tmp_path / "resnet_given_as_dino.pth"
    torch.save(resnet_state, path)
    with pytest.raises(WeightsError, match="resnet_given_as_dino.pth.*DINO ViT-B/16.*missing"):
        load_dino_vit(path)


def test_wrong_shapes_name_the_file(tmp_path, resnet_state):
    """A 10-class fine-tuned ResNet-50 is not the ImageNet-1k network Grad-CAM needs."""
    path = tmp_path / "resnet50_10class.pth"
    torch.save({**resnet_state, "fc.weight": torch.zeros(10, 2048), "fc.bias": torch.zeros(10)},
               path)
    with pytest.raises(WeightsError, match=r"resnet50_10class.pth.*wrong shape.*fc.weight"):
        load_resnet50(path)


def test_unreadable_and_missing_files(tmp_path):
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"this is not a checkpoint")
    with pytest.raises(WeightsError, match="garbage.pth: not a readable weights file"):
        load_dino_vit(garbage)
    with pytest.raises(WeightsError, match="nope.safetensors: weights file not found"):
        load_resnet50(tmp_path / "nope.safetensors")
    bad_st = tmp_path / "bad.safetensors"
    bad_st.write_bytes(b"\x00" * 20)
    with pytest.raises(WeightsError, match="bad.safetensors"):
        load_resnet50(bad_st)


def test_offline_pretrained_names_the_file_to_pass(monkeypatch):
    def no_network(tag):
        raise OSError("Temporary failure in name resolution")

    monkeypatch.setattr(backbones, "_download_pretrained", no_network)
    with pytest.raises(WeightsError, match="vit_base_patch16_224.dino.*"
                                           "dino_vitbase16_pretrain.pth.*--dino_weights"):
        load_dino_vit()
    with pytest.raises(WeightsError, match="resnet50.tv_in1k.*resnet50-0676ba61.pth.*"
                                           "--resnet_weights"):
        load_resnet50()


def test_pretrained_download_path_is_loaded_and_hashed(monkeypatch, tmp_path, tiny_dino):
    cached = tmp_path / "hub" / "model.safetensors"
    cached.parent.mkdir()
    save_file(tiny_dino, str(cached))
    monkeypatch.setattr(backbones, "_download_pretrained", lambda tag: cached)
    model, identity = load_dino_vit()
    _assert_same_weights(model, tiny_dino)
    assert identity["source"] == "timm:vit_base_patch16_224.dino"
    assert identity["sha256"] == _sha256(cached)


def test_random_weights_are_seeded_and_warned():
    with pytest.warns(RandomWeightsWarning):
        first, identity = load_resnet50(random_weights=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RandomWeightsWarning)
        second, _ = load_resnet50(random_weights=True)
    _assert_same_weights(second, first.state_dict())
    assert identity["source"].startswith("random") and identity["sha256"] is None
    with pytest.raises(WeightsError, match="pick one"):
        load_resnet50("x.pth", random_weights=True)
