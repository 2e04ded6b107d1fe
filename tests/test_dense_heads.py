"""Dense heads (MultiMAE's ConvNeXt and DPT adapters), ViT feature maps and the dense model."""

from __future__ import annotations

import pytest
import torch

from attgmae.models.dense_heads import ConvNeXtHead, DPTHead, dpt_block_indices
from attgmae.models.dense_losses import MaskedL1Sum, average_rank, masked_l1_loss
from attgmae.models.dense_model import DenseModel, vit_feature_maps
from attgmae.models.encoder import EncoderSpec, build_encoder

# ViT-tiny/16 (the real width, depth and heads)
TINY = EncoderSpec(
    img_size=64, patch_size=16, embed_dim=192, depth=12, num_heads=3, mlp_ratio=4.0, qkv_bias=True
)


def tiny_vit(img_size: int, seed: int = 0):
    torch.manual_seed(seed)
    return build_encoder(TINY, img_size=img_size).eval()


def small_convnext(num_classes=5):
    return ConvNeXtHead(192, num_classes, hidden_dim=16 * 24, preds_per_patch=16, depth=1)


def small_dpt(channels=1, block_indices=(2, 5, 8, 11)):
    return DPTHead(192, channels, block_indices, layer_dims=(8, 16, 24, 32), feature_dim=16)


def count(module):
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("size", [64, 96])
def test_shapes_at_two_input_sizes(size):
    images = torch.randn(2, 3, size, size)
    maps = vit_feature_maps(tiny_vit(size), images, [2, 5, 8, 11])
    assert [m.shape for m in maps] == [(2, 192, size // 16, size // 16)] * 4
    with torch.no_grad():
        seg = DenseModel(tiny_vit(size), small_convnext(5))(images)
        reg = DenseModel(tiny_vit(size), small_dpt(1))(images)
    assert seg.shape == (2, 5, size, size)
    assert reg.shape == (2, 1, size, size)


def test_an_odd_token_grid_still_gives_the_input_size():
    with torch.no_grad():  # 112 / 16 = 7 tokens a side: DPT's 1/32 stage is 4, not 3.5
        out = DenseModel(tiny_vit(112), small_dpt())(torch.randn(1, 3, 112, 112))
    assert out.shape == (1, 1, 112, 112)


def test_feature_maps_are_the_blocks_raw_outputs_in_the_order_asked():
    encoder, images = tiny_vit(64), torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        tokens = encoder._pos_embed(encoder.patch_embed(images))  # [B, 1 + L, D]
        after = []
        for block in encoder.blocks:
            tokens = block(tokens)
            after.append(tokens[:, 1:].transpose(1, 2).reshape(2, 192, 4, 4))
        maps = vit_feature_maps(encoder, images, [-1, 3])
        normed = vit_feature_maps(encoder, images, [3], norm=True)
    assert torch.allclose(maps[0], after[11], atol=1e-5)
    assert torch.allclose(maps[1], after[3], atol=1e-5)
    assert not torch.allclose(normed[0], after[3], atol=1e-3)  # the final norm was applied


def test_a_wrong_input_size_names_the_fix():
    with pytest.raises(ValueError, match="img_size=96"):
        vit_feature_maps(tiny_vit(64), torch.randn(1, 3, 96, 96), [-1])
    with pytest.raises(ValueError, match="outside"):
        vit_feature_maps(tiny_vit(64), torch.randn(1, 3, 64, 64), [12])


def test_convnext_unfolds_each_token_as_multimae():
    """A token's projected vector is (row, column, channel) of its 4 x 4 patch of the map."""
    head = ConvNeXtHead(8, 1, hidden_dim=32, preds_per_patch=16, depth=0)  # 2 channels
    with torch.no_grad():
        head.proj.weight.zero_()
        head.proj.bias.copy_(torch.arange(32.0))
        head.classifier.weight.zero_()
        head.classifier.weight[0, 0] = 1.0  # output = channel 0 of the map
        head.classifier.bias.zero_()
        out = head([torch.zeros(1, 8, 2, 3)], (8, 12))  # same size: interpolation is identity
    patch = torch.arange(16.0).reshape(4, 4) * 2  # channel 0 of position (r, c) = 2 (4 r + c)
    assert torch.equal(out[0, 0], patch.repeat(2, 3))


def test_convnext_head_starts_from_multimaes_init():
    """MultiMAE re-initializes the whole model, adapters included, after building it: linear
    layers xavier-uniform with zero bias (not the adapter's own trunc-normal 0.02)."""
    torch.manual_seed(0)
    head = ConvNeXtHead(192, 5, hidden_dim=16 * 96, preds_per_patch=16, depth=1)
    linears = [m for m in head.modules() if isinstance(m, torch.nn.Linear)]
    assert len(linears) == 3  # proj, and the block's two MLP layers
    for layer in linears:
        fan_out, fan_in = layer.weight.shape
        bound = (6 / (fan_in + fan_out)) ** 0.5
        assert layer.weight.abs().max() <= bound
        assert layer.weight.std().item() == pytest.approx(bound / 3**0.5, rel=0.05)
        assert not layer.bias.any()
    norm = head.blocks[0].norm
    assert torch.equal(norm.weight, torch.ones_like(norm.weight)) and not norm.bias.any()


def test_gradients_reach_every_parameter():
    for head in (small_convnext(3), small_dpt(2, block_indices=(0, 1, 2, 3))):
        model = DenseModel(tiny_vit(64), head).train()
        model(torch.randn(2, 3, 64, 64)).square().mean().backward()
        no_grad = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
        assert not no_grad, no_grad
        assert model.encoder.patch_embed.proj.weight.grad.abs().sum() > 0
    # the DPT reads blocks 0-3 only: the rest of the encoder (and its final norm) is gone
    assert len(model.encoder.blocks) == 4 and model.num_layers == 12  # lr decay counts all 12
    assert isinstance(model.encoder.norm, torch.nn.Identity)


def test_layer_ids_for_layer_decay():
    model = DenseModel(tiny_vit(64), small_convnext())
    assert model.layer_id("encoder.pos_embed") == 0
    assert model.layer_id("module.encoder.patch_embed.proj.weight") == 0
    assert model.layer_id("encoder.blocks.0.attn.qkv.weight") == 1
    assert model.layer_id("encoder.blocks.11.mlp.fc2.bias") == 12
    assert model.layer_id("head.proj.weight") == 13


def test_dpt_reads_the_ends_of_each_quarter():
    assert dpt_block_indices(12) == (2, 5, 8, 11)  # MultiMAE's hooks for ViT-B
    assert dpt_block_indices(24) == (5, 11, 17, 23)


def conv(c_in, c_out, k, bias=True):
    return c_in * c_out * k * k + (c_out if bias else 0)


def test_convnext_parameter_count_for_vit_base():
    """From MultiMAE's ConvNeXtAdapter(num_classes=150, embed_dim=6144, preds_per_patch=16,
    depth=4) on ViT-B (768): proj_dec Linear(768, 6144); class_dim 6144 / 16 = 384; each
    ConvNeXtBlock(384): dwconv 7x7 (384 * 49 + 384), LayerNorm (2 * 384), pwconv1 Linear(384,
    1536), pwconv2 Linear(1536, 384), no layer scale; final_layer Conv2d(384, 150, 1)."""
    d = 384
    block = conv(1, d, 7) + 2 * d + (d * 4 * d + 4 * d) + (4 * d * d + d)
    multimae = (768 * 6144 + 6144) + 4 * block + conv(d, 150, 1)
    assert multimae == 9_588_630
    assert count(ConvNeXtHead(768, 150)) == multimae


def test_dpt_parameter_count_for_vit_base():
    """From MultiMAE's DPTOutputAdapter(num_classes=1, hooks [2, 5, 8, 11], layer_dims [96,
    192, 384, 768], feature_dim 256, head_type regression) on ViT-B (768)."""
    dims, feat = (96, 192, 384, 768), 256
    act_postprocess = (
        conv(768, 96, 1) + (96 * 96 * 16 + 96)  # 1x1, ConvTranspose 4x4 stride 4
        + conv(768, 192, 1) + (192 * 192 * 4 + 192)  # 1x1, ConvTranspose 2x2 stride 2
        + conv(768, 384, 1)
        + conv(768, 768, 1) + conv(768, 768, 3)  # 1x1, 3x3 stride 2
    )  # fmt: skip
    layer_rn = sum(conv(d, feat, 3, bias=False) for d in dims)
    residual_unit = 2 * conv(feat, feat, 3)
    refinenet = 2 * residual_unit + conv(feat, feat, 1)  # resConfUnit1, resConfUnit2, out_conv
    head = conv(feat, feat // 2, 3) + conv(feat // 2, 32, 3) + conv(32, 1, 1)
    multimae = act_postprocess + layer_rn + 4 * refinenet + head
    assert multimae == 20_065_921
    # refinenet4 never receives a skip input: its resConfUnit1 is left out here (module doc)
    assert count(DPTHead(768, 1)) == multimae - residual_unit


# ---- Taskonomy's loss and scores -------------------------------------------------------------


def test_masked_l1_counts_valid_pixels_only():
    pred = torch.tensor([[[[1.0, 5.0], [0.0, 2.0]]]])
    target = torch.tensor([[[[0.0, 0.0], [0.0, 0.0]]]])
    mask = torch.tensor([[[[True, False], [True, True]]]])
    assert masked_l1_loss(pred, target, mask).item() == pytest.approx(1.0)  # (1 + 0 + 2) / 3
    score = MaskedL1Sum()
    score.update(pred, target, mask)
    score.update(pred[..., :1], target[..., :1] + 1, mask[..., :1])  # |1-1| and |0-1|
    assert score.value() == pytest.approx((3 + 0 + 1) / 5)


def test_average_rank_with_ties():
    losses = {
        "mae": {"depth": 0.03, "edges": 0.02},
        "attg": {"depth": 0.02, "edges": 0.02},
        "other": {"depth": 0.04, "edges": 0.01},
    }
    # depth: attg 1, mae 2, other 3; edges: other 1, mae and attg tied for 2-3 -> 2.5
    assert average_rank(losses) == {"mae": 2.25, "attg": 1.75, "other": 2.0}
    with pytest.raises(ValueError, match="every task"):
        average_rank({"a": {"depth": 1.0}, "b": {"edges": 1.0}})
