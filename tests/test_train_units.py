"""Small pieces of the training pipeline: accumulation, checkpoints,
the out-of-memory message and the reconstruction panel."""

import argparse

import numpy as np
import pytest
import torch

import attgmae.pipelines.train as train_pipeline
from attgmae.checkpoint import (
    CheckpointError,
    find_resume_checkpoint,
    load_checkpoint,
    save_atomic,
)
from attgmae.data.transforms import denormalize_images, normalize_images
from attgmae.models import MaskedAutoencoderViT
from attgmae.pipelines.train import TrainError, run_pretrain
from attgmae.pipelines.train_config import TrainConfig, resolve_accum
from attgmae.visualize import reconstruction_panels, with_titles


def test_accumulation_reaches_the_papers_effective_batch():
    assert resolve_accum(None, 64, 8, 1000) == 1  # 64 x 8 = 512
    assert resolve_accum(None, 64, 1, 1000) == 8
    assert resolve_accum(None, 96, 1, 1000) == 6  # 576: the smallest reaching 512
    assert resolve_accum(None, 16, 1, 6) == 6  # capped at one epoch of iterations
    assert resolve_accum(3, 64, 8, 1000) == 3  # explicit wins


def test_checkpoint_atomic_save_load_and_latest(tmp_path):
    state = {"model": {"w": torch.ones(2)}, "epoch": 4, "args": argparse.Namespace(model="m")}
    save_atomic(state, tmp_path / "checkpoint-4.pth")
    save_atomic(state, tmp_path / "checkpoint-12.pth")
    assert not list(tmp_path.glob(".*tmp*"))  # no temporary left behind
    assert find_resume_checkpoint(tmp_path).name == "checkpoint-12.pth"
    save_atomic(state, tmp_path / "checkpoint-last.pth")
    assert find_resume_checkpoint(tmp_path).name == "checkpoint-last.pth"
    assert load_checkpoint(tmp_path / "checkpoint-4.pth")["args"].model == "m"
    (tmp_path / "broken.pth").write_bytes(b"\x80\x02garbage")
    with pytest.raises(CheckpointError, match="broken.pth"):
        load_checkpoint(tmp_path / "broken.pth")
    assert find_resume_checkpoint(tmp_path / "none") is None


def test_out_of_memory_suggests_accumulation(monkeypatch, tmp_path):
    def oom(self, cfg, info, device):
        raise torch.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(train_pipeline.PretrainRun, "__init__", oom)
    cfg = TrainConfig(data_path=str(tmp_path), guidance="none", device="cpu", batch_size=64,
                      accum_iter=2, output_dir=str(tmp_path / "out"))
    with pytest.raises(TrainError, match="--batch_size 32 --accum_iter 4"):
        run_pretrain(cfg)
    cfg.accum_iter = None  # automatic: halving the batch doubles it (the effective batch stays)
    with pytest.raises(TrainError, match=r"--batch_size 32 \(--accum_iter then doubles"):
        run_pretrain(cfg)


def test_reconstruction_panel_pastes_visible_patches():
    torch.manual_seed(0)
    model = MaskedAutoencoderViT(img_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=2,
                                 decoder_embed_dim=16, decoder_depth=1, decoder_num_heads=2,
                                 norm_pix_loss=True)
    images = normalize_images(torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8))
    noise = torch.rand(2, 16)
    weights = torch.rand(2, 16) + 1
    panel = reconstruction_panels(model, images, noise, 0.75, weights)
    assert panel.shape == (2 * 32, 4 * 32, 3) and panel.dtype == np.uint8
    titled = with_titles(panel)
    assert titled.shape == (18 + 2 * 32, 4 * 32, 3)
    np.testing.assert_array_equal(titled[18:], panel)
    assert (titled[:18] < 128).any() and (titled[:18] == 255).mean() > 0.5  # dark text on white
    _, _, mask = model(images, 0.75, noise=noise)
    original = (denormalize_images(images).permute(0, 2, 3, 1).numpy() * 255).round()
    p0 = panel[:32]
    for patch in range(16):
        r, c = divmod(patch, 4)
        block = (slice(r * 8, r * 8 + 8), slice(c * 8, c * 8 + 8))
        orig = original[0][block]
        recon = p0[:, 64:96][block]
        masked = p0[:, 32:64][block]
        if mask[0, patch] == 0:  # visible: shown as is in the masked and pasted panels
            assert np.array_equal(recon, orig) and np.array_equal(masked, orig)
        else:  # masked: grey in the masked panel
            assert np.all(np.abs(masked.astype(int) - 128) <= 1)
    assert model.training  # mode restored
