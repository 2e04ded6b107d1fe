"""Each accepted checkpoint format loads into the frozen encoder and gives the right features."""

import argparse

import pytest
import torch
from safetensors.torch import save_file
from timm.models.vision_transformer import VisionTransformer

from attgmae.models import mae_vit_tiny_patch16
from attgmae.models.encoder import (
    CheckpointError,
    infer_spec,
    load_encoder,
    load_vit,
    read_checkpoint,
)
from attgmae.models.tokens import features


@pytest.fixture(scope="module")
def mae():
    torch.manual_seed(0)
    model = mae_vit_tiny_patch16().eval()
    # Non-trivial final norm so a skipped or misplaced norm shows.
    with torch.no_grad():
        model.norm.weight.normal_(1.0, 0.3)
        model.norm.bias.normal_(0.0, 0.3)
    return model


@pytest.fixture(scope="module")
def imgs():
    return torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))


def mae_cls_unmasked(model, imgs):
    """The MAE's own encoder with nothing masked (noise in increasing order keeps all patches
    in place), CLS token after the final norm."""
    num_patches = model.patch_embed.num_patches
    noise = torch.arange(num_patches, dtype=torch.float32).expand(imgs.shape[0], -1)
    with torch.no_grad():
        latent, _, _ = model.forward_encoder(imgs, 0.0, noise=noise)
    return latent


def test_our_checkpoint_format(tmp_path, mae, imgs):
    path = tmp_path / "checkpoint-2.pth"
    torch.save(
        {
            "model": mae.state_dict(),
            "optimizer": {},
            "epoch": 2,
            "scaler": {},
            "args": argparse.Namespace(model="mae_vit_tiny_patch16", epochs=3),
        },
        path,
    )
    encoder, info = load_encoder(path)
    assert info.source_format == "attgmae-mae"
    assert info.model_name == "mae_vit_tiny_patch16"
    assert (info.spec.embed_dim, info.spec.depth, info.spec.num_heads) == (192, 4, 3)
    assert (info.spec.patch_size, info.spec.img_size) == (16, 224)
    assert len(info.sha256) == 64
    latent = mae_cls_unmasked(mae, imgs)
    with torch.no_grad():
        assert torch.allclose(features(encoder, imgs, "cls"), latent[:, 0], atol=1e-5)
        # --pool avg is MAE's linear probe with --global_pool: the patch tokens before the norm,
        # averaged, through the new fc_norm (a LayerNorm at its initial weights, frozen there)
        mae_global_pool, _ = load_vit(path, num_classes=0, global_pool="avg")
        mae_global_pool.eval()
        pooled = mae_global_pool.forward_head(
            mae_global_pool.forward_features(imgs), pre_logits=True
        )
        assert torch.allclose(features(encoder, imgs, "avg"), pooled, atol=1e-5)
        assert not torch.allclose(features(encoder, imgs, "avg"), latent[:, 1:].mean(1), atol=1e-2)
    assert not any(p.requires_grad for p in encoder.parameters())


def test_args_as_dict_and_features_of_the_mae_itself(tmp_path, mae, imgs):
    path = tmp_path / "ckpt.pth"
    torch.save({"model": mae.state_dict(), "args": {"model": "mae_vit_tiny_patch16"}}, path)
    _, source, name = read_checkpoint(path)
    assert (source, name) == ("attgmae-mae", "mae_vit_tiny_patch16")
    # features() also runs directly on the MaskedAutoencoderViT (used by the training monitor).
    with torch.no_grad():
        assert torch.allclose(features(mae, imgs), mae_cls_unmasked(mae, imgs)[:, 0], atol=1e-5)


def test_official_mae_pretrain_format_encoder_only(tmp_path, mae, imgs):
    encoder_only = {
        k: v for k, v in mae.state_dict().items() if not k.startswith(("decoder_", "mask_token"))
    }
    path = tmp_path / "mae_pretrain_vit_tiny.pth"
    torch.save({"model": encoder_only}, path)
    encoder, info = load_encoder(path)  # no args: heads from the width table (192 -> 3)
    assert info.source_format == "mae-pretrain" and info.model_name is None
    assert info.spec.num_heads == 3
    with torch.no_grad():
        assert torch.allclose(features(encoder, imgs), mae_cls_unmasked(mae, imgs)[:, 0], atol=1e-5)


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_timm_weights(tmp_path, imgs, suffix):
    torch.manual_seed(3)
    vit = VisionTransformer(
        img_size=224,
        patch_size=16,
        embed_dim=128,
        depth=2,
        num_heads=2,
        qkv_bias=True,
        num_classes=10,
    ).eval()
    path = tmp_path / f"vit{suffix}"
    state = {k: v.contiguous() for k, v in vit.state_dict().items()}
    if suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save(state, path)
    # 128 is not a standard width: heads given as --model would be ambiguous, so pass them.
    encoder, info = load_encoder(path, num_heads=2)
    assert info.source_format == "timm"
    with torch.no_grad():
        want = vit.forward_features(imgs)[:, 0]  # timm's own forward: CLS after final norm
        assert torch.allclose(features(encoder, imgs), want, atol=1e-5)


def test_heads_from_model_name_and_width():
    state = mae_vit_tiny_patch16().state_dict()
    assert infer_spec(state, "vit_small_patch16").num_heads == 6  # --model overrides the table
    assert infer_spec(state).num_heads == 3
    assert infer_spec(state, num_heads=4).num_heads == 4


def test_other_input_size_resamples_positions(tmp_path, mae):
    path = tmp_path / "ckpt.pth"
    torch.save({"model": mae.state_dict()}, path)
    encoder, _ = load_encoder(path, img_size=160)
    with torch.no_grad():
        out = features(encoder, torch.randn(1, 3, 160, 160))
    assert out.shape == (1, 192) and torch.isfinite(out).all()


def test_bad_checkpoints_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        load_encoder(tmp_path / "missing.pth")
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="junk.pth"):
        load_encoder(junk)
    resnet = tmp_path / "resnet.pth"
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7)}, resnet)
    with pytest.raises(CheckpointError, match="no ViT encoder weights"):
        load_encoder(resnet)


def test_bf16_autocast_is_selectable_on_cpu(mae, imgs):
    from attgmae.eval.features import autocast_for

    with torch.no_grad():
        full = features(mae, imgs)
        with autocast_for("cpu", "bf16"):
            half = features(mae, imgs)
        with autocast_for("cpu", "auto"):  # auto = fp32 off CUDA
            auto = features(mae, imgs)
    assert torch.equal(auto, full)
    assert not torch.equal(half.float(), full)  # the matmuls ran in bf16
    cos = torch.nn.functional.cosine_similarity(half.float(), full, dim=1)
    assert (cos > 0.99).all()


def test_load_vit_for_fine_tuning_adds_a_head_and_fc_norm(tmp_path, mae):
    """MAE's fine-tuning model: the pretrained blocks, a new head (trunc-normal 2e-5) and, with
    global pooling, a new fc_norm in place of the final norm; trainable, in train mode."""
    from attgmae.models.encoder import load_vit

    path = tmp_path / "checkpoint-2.pth"
    torch.save({"model": mae.state_dict(), "args": {"model": "mae_vit_tiny_patch16"}}, path)
    model, info = load_vit(path, num_classes=10, global_pool="avg", drop_path_rate=0.1)
    assert model.training and all(p.requires_grad for p in model.parameters())
    assert isinstance(model.norm, torch.nn.Identity) and model.head.out_features == 10
    assert torch.equal(model.blocks[2].mlp.fc1.weight, mae.blocks[2].mlp.fc1.weight)
    assert torch.equal(model.fc_norm.weight, torch.ones(192)) and model.head.bias.abs().sum() == 0
    assert 0 < model.head.weight.std() < 1e-4
    token, _ = load_vit(path, num_classes=10)  # CLS pooling keeps the pretrained final norm
    assert torch.equal(token.norm.weight, mae.norm.weight)


def test_a_model_name_that_contradicts_the_checkpoint_is_an_error(tmp_path, mae):
    """--model used to set the heads silently (12 for a base name on a tiny checkpoint)."""
    from attgmae.models.encoder import ArchitectureError

    ours = tmp_path / "checkpoint-1.pth"
    torch.save({"model": mae.state_dict(), "args": {"model": "mae_vit_tiny_patch16"}}, ours)
    with pytest.raises(ArchitectureError) as err:
        load_encoder(ours, "mae_vit_base_patch16")
    message = str(err.value)
    assert "--model mae_vit_base_patch16 contradicts" in message
    assert "records the model mae_vit_tiny_patch16" in message and "192 wide" in message
    assert "--force_model" in message
    forced, info = load_encoder(ours, "mae_vit_base_patch16", force_model=True)
    assert info.spec.num_heads == forced.blocks[0].attn.num_heads == 12
    _, info = load_encoder(ours, "vit_tiny_patch16")  # the same size under another name
    assert info.spec.num_heads == 3
    bare = tmp_path / "vit.pth"
    torch.save(mae.state_dict(), bare)  # nothing recorded: the weights' shape decides
    with pytest.raises(ArchitectureError, match="192 wide .a large ViT: 1024"):
        load_encoder(bare, "vit_large_patch16")
    with pytest.raises(ArchitectureError, match="its patches are 16 px"):
        load_encoder(bare, "vit_tiny_patch8")


def test_impossible_architecture_numbers_are_clear_errors(tmp_path, mae):
    from attgmae.models.encoder import ArchitectureError

    path = tmp_path / "ckpt.pth"
    torch.save({"model": mae.state_dict()}, path)
    with pytest.raises(ArchitectureError, match=r"5 attention heads \(from --num_heads 5\) do not"):
        load_encoder(path, num_heads=5)
    with pytest.raises(ArchitectureError, match="0 attention heads"):
        load_encoder(path, num_heads=0)
    with pytest.raises(ArchitectureError, match="input size 100 is not a multiple of the patch"):
        load_encoder(path, img_size=100)
