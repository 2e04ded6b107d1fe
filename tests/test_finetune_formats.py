"""Every checkpoint format of the other methods loads for fine-tuning (and as a frozen encoder):
random weights saved the way MAE, DINO, iBOT, BEiT, SimMIM and timm save theirs."""

import argparse

import pytest
import timm
import torch
from safetensors.torch import save_file
from timm.models.beit import Beit
from timm.models.vision_transformer import VisionTransformer

from attgmae.core.torchfile import CheckpointError
from attgmae.eval.finetune_model import finetune_model
from attgmae.models import mae_vit_tiny_patch16
from attgmae.models.encoder import load_encoder
from attgmae.models.rel_pos import resize_rel_pos_table, source_offsets
from attgmae.models.tokens import encode_tokens


def vit(**kwargs) -> VisionTransformer:
    torch.manual_seed(1)
    shape = dict(img_size=32, patch_size=16, embed_dim=192, depth=2, num_heads=3)
    return VisionTransformer(**{**shape, "num_classes": 0, **kwargs}).eval()


def beit(**kwargs) -> Beit:
    """A BEiT as pretrained: no absolute positions, one relative position table shared by the
    blocks, layer scale, q/v biases, the final norm (token pooling, no head)."""
    torch.manual_seed(2)
    shape = dict(img_size=64, patch_size=16, embed_dim=64, depth=2, num_heads=2)
    return Beit(
        **{
            **shape,
            "use_abs_pos_emb": False,
            "use_shared_rel_pos_bias": True,
            "init_values": 0.1,
            "num_classes": 0,
            "global_pool": "token",
            **kwargs,
        }
    ).eval()


@pytest.fixture(scope="module")
def images():
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def prefixed(state: dict, prefix: str) -> dict:
    return {prefix + k: v for k, v in state.items()}


def same_tokens(path, reference, imgs, **kwargs):
    """The frozen encoder loaded from ``path`` gives ``reference``'s tokens."""
    encoder, info = load_encoder(path, img_size=imgs.shape[-1], **kwargs)
    with torch.no_grad():
        torch.testing.assert_close(encode_tokens(encoder, imgs), reference.forward_features(imgs))
    return info


def test_dino_and_ibot_backbones_and_training_checkpoints(tmp_path, images):
    backbone = vit()
    state = backbone.state_dict()
    dino_head = {
        "head.mlp.0.weight": torch.zeros(8, 192),
        "head.last_layer.weight_g": torch.ones(8, 1),
    }
    files = {
        "dino_backbone.pth": state,  # dino_vitsmall16_pretrain.pth: a bare state dict
        "ibot_teacher.pth": {"state_dict": {**state, "masked_embed": torch.zeros(192)}},
        "dino_training.pth": {
            "teacher": {**prefixed(state, "backbone."), **dino_head},
            "student": {**prefixed(prefixed(state, "backbone."), "module."), **dino_head},
            "epoch": 100,
            "args": argparse.Namespace(arch="vit_tiny", patch_size=16),
        },
    }
    sources = {}
    for name, obj in files.items():
        torch.save(obj, tmp_path / name)
        sources[name] = same_tokens(tmp_path / name, backbone, images).source_format
        model, info = finetune_model(tmp_path / name, 5, img_size=32, drop_path_rate=0.1)
        assert torch.equal(model.blocks[1].mlp.fc2.weight, backbone.blocks[1].mlp.fc2.weight)
        assert info.new_parts == ("fc_norm.weight", "fc_norm.bias", "head.weight", "head.bias")
        assert model(images).shape == (2, 5)
    assert sources == {
        "dino_backbone.pth": "timm",
        "ibot_teacher.pth": "state-dict",
        "dino_training.pth": "training-teacher",
    }
    _, student = finetune_model(
        tmp_path / "dino_training.pth", 5, img_size=32, checkpoint_key="student"
    )
    assert student.source_format == "training-student" and student.model_name == "vit_tiny_patch16"
    with pytest.raises(CheckpointError, match="no 'ema' entry"):
        finetune_model(tmp_path / "dino_training.pth", 5, checkpoint_key="ema")


def test_ibot_and_dino_vits_with_layer_scale(tmp_path, images):
    """iBOT's / DINO's ViT with ``init_values``: per-block gamma_1 / gamma_2 beside a plain qkv
    bias (not BEiT's layout), and DeepSpeed's ``module`` wrapper."""
    backbone = vit(init_values=0.5)
    with torch.no_grad():
        for block in backbone.blocks:
            block.ls1.gamma.uniform_(0.1, 1.0)
            block.ls2.gamma.uniform_(0.1, 1.0)
    state = {k.replace(".ls1.gamma", ".gamma_1").replace(".ls2.gamma", ".gamma_2"): v
             for k, v in backbone.state_dict().items()}  # fmt: skip
    assert "blocks.0.gamma_1" in state and "blocks.0.attn.qkv.bias" in state
    for name, obj in {"ibot.pth": {"state_dict": state}, "ds.pth": {"module": state}}.items():
        torch.save(obj, tmp_path / name)
        info = same_tokens(tmp_path / name, backbone, images)
        assert info.spec.family == "vit" and info.spec.layer_scale


@pytest.mark.parametrize("layout", ["beit", "simmim"])
# timm's resampling of relative position tables (96 px below) warns about torch's indexing.
@pytest.mark.filterwarnings("ignore:.*(non-tuple sequence|searchsorted).*:UserWarning")
def test_beit_and_simmim_vits_with_relative_position_bias(tmp_path, layout):
    pretrained = beit()
    state = pretrained.state_dict()
    if layout == "beit":  # unilm's BEiT pretraining checkpoint: {"model": ...} with its lm_head
        state = {**state, "mask_token": torch.zeros(1, 1, 64), "lm_head.weight": torch.zeros(9, 64)}
    else:  # SimMIM: the ViT under "encoder.", a conv decoder beside it
        state = {**prefixed(state, "encoder."), "decoder.0.weight": torch.zeros(768, 64, 1, 1)}
    path = tmp_path / f"{layout}.pth"
    torch.save({"model": state, "epoch": 799}, path)
    imgs = torch.randn(2, 3, 64, 64)
    info = same_tokens(path, pretrained, imgs)  # the shared table, copied into every block
    assert (info.source_format, info.spec.family, info.spec.num_heads) == ("beit", "beit", 2)
    assert info.spec.rel_pos_bias and info.spec.layer_scale and not info.spec.abs_pos_embed
    model, _ = finetune_model(path, 3, img_size=64, drop_path_rate=0.1)
    shared = pretrained.rel_pos_bias.relative_position_bias_table
    assert torch.equal(model.blocks[1].attn.relative_position_bias_table, shared)
    assert torch.equal(model.blocks[0].gamma_1, pretrained.blocks[0].gamma_1)
    assert model(imgs).shape == (2, 3)
    bigger, _ = finetune_model(path, 3, img_size=96)  # tables resampled to the 6 x 6 grid
    table = bigger.blocks[0].attn.relative_position_bias_table
    assert torch.equal(table, resize_rel_pos_table(shared, 6))  # BEiT's spline, not timm's


def test_relative_position_tables_resize_as_beits_code():
    """BEiT fits a bicubic spline through the source offsets spread on a geometric progression
    whose half-width reaches the target's: a cubic in (row, column) offset is reproduced exactly
    at the target's integer offsets (linear interpolation, timm's, would not)."""
    src, grid = 7, 5  # a 4 x 4 grid's table (7 x 7 offsets) to a 5 x 5 grid's (9 x 9)
    offsets = source_offsets(src, 2 * grid - 1)
    # the progression: 1, 1 + q, 1 + q + q^2 with 1 + q + q^2 = 4 (the target's half-width)
    q = (offsets[5] - 1).item()
    assert (offsets[3], offsets[4]) == (0, 1) and offsets[6] == pytest.approx(4, abs=1e-5)
    assert q == pytest.approx((13**0.5 - 1) / 2, abs=1e-5)
    assert torch.equal(torch.from_numpy(offsets[:3]), -torch.from_numpy(offsets[4:]).flip(0))

    def cubic(rows, cols):  # rows: the first axis of the square, as the table is laid out
        return 0.02 * rows**3 - 0.1 * rows * cols + 0.3 * cols + 1.0

    rows, cols = torch.meshgrid(*[torch.from_numpy(offsets)] * 2, indexing="ij")
    extra = torch.tensor([[5.0, 6.0], [7.0, 8.0], [9.0, 10.0]])
    heads = torch.stack([cubic(rows, cols), -cubic(rows, cols)], -1).reshape(-1, 2)
    table = torch.cat([heads, extra])
    resized = resize_rel_pos_table(table.float(), grid)
    target = torch.arange(-4.0, 5.0, dtype=torch.float64)
    rows, cols = torch.meshgrid(target, target, indexing="ij")
    want = torch.stack([cubic(rows, cols), -cubic(rows, cols)], -1).reshape(-1, 2)
    torch.testing.assert_close(resized[:-3].double(), want, rtol=0, atol=2e-5)
    assert torch.equal(resized[-3:], extra.float()) and resized.dtype == torch.float32
    assert resize_rel_pos_table(table, 4) is table  # the same grid: unchanged


def test_ours_and_maes_pretrained_and_fine_tuned_checkpoints(tmp_path, images):
    torch.manual_seed(0)
    mae = mae_vit_tiny_patch16()
    encoder_only = {
        k: v for k, v in mae.state_dict().items() if not k.startswith(("decoder_", "mask_token"))
    }
    torch.save(
        {"model": mae.state_dict(), "args": {"model": "mae_vit_tiny_patch16"}},
        tmp_path / "ours.pth",
    )
    torch.save({"model": encoder_only}, tmp_path / "mae_pretrain_vit_tiny.pth")
    for name, source in (
        ("ours.pth", "attgmae-mae"),
        ("mae_pretrain_vit_tiny.pth", "mae-pretrain"),
    ):
        model, info = finetune_model(tmp_path / name, 4, img_size=32)
        assert info.source_format == source
        assert torch.equal(model.blocks[3].attn.qkv.weight, mae.blocks[3].attn.qkv.weight)
    # A fine-tuned classifier (global pooling: fc_norm, no final norm): its head and fc_norm
    # are kept when the classes match (MAE's --eval of mae_finetuned_vit_*.pth), the head
    # alone is new otherwise.
    tuned = vit(num_classes=4, global_pool="avg")
    torch.save({"model": tuned.state_dict(), "epoch": 49}, tmp_path / "finetuned.pth")
    model, info = finetune_model(tmp_path / "finetuned.pth", 4, img_size=32)
    assert info.source_format == "mae-finetuned" and info.new_parts == ()
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(images), tuned(images))
    _, info = finetune_model(tmp_path / "finetuned.pth", 7, img_size=32)
    assert info.new_parts == ("head.weight", "head.bias")
    with pytest.raises(CheckpointError, match="fc_norm, no final norm"):
        load_encoder(tmp_path / "finetuned.pth")  # a frozen CLS encoder needs the final norm


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_any_timm_model_by_name_with_a_local_weights_file(tmp_path, suffix):
    torch.manual_seed(3)
    source = timm.create_model("test_convnext", num_classes=10).eval()
    state = {k: v.contiguous() for k, v in source.state_dict().items()}
    path = tmp_path / f"convnext{suffix}"
    save_file(state, str(path)) if suffix == ".safetensors" else torch.save(state, path)
    model, info = finetune_model(path, 4, timm_model="test_convnext", img_size=64)
    assert info.source_format == "timm:test_convnext" and info.spec is None
    assert info.new_parts == ("head.fc.weight", "head.fc.bias")
    assert torch.equal(model.stem[0].weight, source.stem[0].weight)
    assert 0 < model.get_classifier().weight.std() < 1e-4  # MAE's head init
    same, info = finetune_model(path, 10, timm_model="test_convnext")
    assert info.new_parts == () and torch.equal(same.head.fc.weight, source.head.fc.weight)
    with pytest.raises(ValueError, match="not a timm model name"):
        finetune_model(path, 4, timm_model="no_such_model")
