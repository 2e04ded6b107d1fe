"""The MAE model: official state_dict layout, official masking/loss math, guided loss."""

import math

import numpy as np
import pytest
import torch

import attgmae.models as models
from attgmae.models import MaskedAutoencoderViT, mae_vit_tiny_patch16

# Official MAE sizes: (patch, embed, depth, heads, decoder embed, decoder depth, decoder heads).
OFFICIAL_SIZES = {
    "mae_vit_base_patch16": (16, 768, 12, 12, 512, 8, 16),
    "mae_vit_large_patch16": (16, 1024, 24, 16, 512, 8, 16),
    "mae_vit_huge_patch14": (14, 1280, 32, 16, 512, 8, 16),
    "mae_vit_tiny_patch16": (16, 192, 4, 3, 128, 2, 4),  # ours, fixed for tests and the demo
}


def official_shapes(patch, dim, depth, heads, ddim, ddepth, dheads, img=224, chans=3, mlp=4):
    """Every parameter name and shape of official models_mae.MaskedAutoencoderViT."""
    n = (img // patch) ** 2
    shapes = {
        "cls_token": (1, 1, dim),
        "pos_embed": (1, n + 1, dim),
        "patch_embed.proj.weight": (dim, chans, patch, patch),
        "patch_embed.proj.bias": (dim,),
        "norm.weight": (dim,),
        "norm.bias": (dim,),
        "decoder_embed.weight": (ddim, dim),
        "decoder_embed.bias": (ddim,),
        "mask_token": (1, 1, ddim),
        "decoder_pos_embed": (1, n + 1, ddim),
        "decoder_norm.weight": (ddim,),
        "decoder_norm.bias": (ddim,),
        "decoder_pred.weight": (patch * patch * chans, ddim),
        "decoder_pred.bias": (patch * patch * chans,),
    }
    for prefix, count, d in (("blocks", depth, dim), ("decoder_blocks", ddepth, ddim)):
        for i in range(count):
            b = f"{prefix}.{i}."
            shapes.update({
                b + "norm1.weight": (d,), b + "norm1.bias": (d,),
                b + "attn.qkv.weight": (3 * d, d), b + "attn.qkv.bias": (3 * d,),
                b + "attn.proj.weight": (d, d), b + "attn.proj.bias": (d,),
                b + "norm2.weight": (d,), b + "norm2.bias": (d,),
                b + "mlp.fc1.weight": (mlp * d, d), b + "mlp.fc1.bias": (mlp * d,),
                b + "mlp.fc2.weight": (d, mlp * d), b + "mlp.fc2.bias": (d,),
            })  # fmt: skip
    return shapes


@pytest.mark.parametrize("name", list(OFFICIAL_SIZES))
def test_state_dict_keys_and_shapes_are_official(name):
    with torch.device("meta"):  # shapes only: no memory for ViT-H
        model = getattr(models, name)()
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert got == official_shapes(*OFFICIAL_SIZES[name])
    p, dim, depth, heads, ddim, ddepth, dheads = OFFICIAL_SIZES[name]
    assert model.blocks[0].attn.num_heads == heads
    assert model.decoder_blocks[0].attn.num_heads == dheads
    assert model.norm.eps == 1e-6


def test_official_style_checkpoint_loads_strictly():
    shapes = official_shapes(*OFFICIAL_SIZES["mae_vit_tiny_patch16"])
    gen = torch.Generator().manual_seed(0)
    state = {k: torch.randn(s, generator=gen) for k, s in shapes.items()}
    model = mae_vit_tiny_patch16()
    model.load_state_dict(state, strict=True)
    assert torch.equal(model.blocks[1].mlp.fc2.weight, state["blocks.1.mlp.fc2.weight"])


def numpy_sincos_reference(dim, grid):
    """Official layout re-derived: first half encodes the column (x), second the row (y)."""
    def enc(d, pos):
        omega = 1.0 / 10000 ** (np.arange(d // 2) / (d / 2.0))
        out = np.outer(pos, omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    ys, xs = np.divmod(np.arange(grid * grid), grid)
    emb = np.concatenate([enc(dim // 2, xs), enc(dim // 2, ys)], axis=1)
    return np.concatenate([np.zeros((1, dim)), emb], axis=0)


def test_position_embeddings_fixed_sincos():
    model = mae_vit_tiny_patch16()
    assert not model.pos_embed.requires_grad and not model.decoder_pos_embed.requires_grad
    ref = numpy_sincos_reference(192, 14)
    np.testing.assert_allclose(model.pos_embed[0].numpy(), ref, atol=1e-6)
    ref_dec = numpy_sincos_reference(128, 14)
    np.testing.assert_allclose(model.decoder_pos_embed[0].numpy(), ref_dec, atol=1e-6)


def test_init_like_official():
    torch.manual_seed(0)
    model = MaskedAutoencoderViT(embed_dim=64, depth=1, num_heads=4, decoder_embed_dim=32,
                                 decoder_depth=1, decoder_num_heads=4)
    assert torch.all(model.blocks[0].attn.qkv.bias == 0)
    assert torch.all(model.norm.weight == 1) and torch.all(model.norm.bias == 0)
    # xavier uniform bound sqrt(6 / (fan_in + fan_out)) on the flattened patch projection
    w = model.patch_embed.proj.weight
    bound = math.sqrt(6 / (w[0].numel() + w.shape[0]))
    assert w.abs().max() <= bound and w.abs().max() > 0.9 * bound
    assert 0.005 < float(model.cls_token.detach().std()) < 0.04


def reference_patchify(imgs, p):
    """[N, C, H, W] -> [N, L, p*p*C], row-major patches, pixels (row, col, channel)."""
    n, c, h, w = imgs.shape
    out = []
    for i in range(h // p):
        for j in range(w // p):
            patch = imgs[:, :, i * p:(i + 1) * p, j * p:(j + 1) * p]
            out.append(patch.permute(0, 2, 3, 1).reshape(n, -1))
    return torch.stack(out, dim=1)


def reference_forward(model, imgs, mask_ratio, noise):
    """Official MAE forward written out step by step (argsort-shuffle masking, repeat+gather)."""
    n = imgs.shape[0]
    x = model.patch_embed(imgs) + model.pos_embed[:, 1:, :]
    length, dim = x.shape[1], x.shape[2]
    len_keep = int(length * (1 - mask_ratio))
    ids_shuffle = torch.argsort(noise, dim=1)
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    x = torch.gather(x, 1, ids_shuffle[:, :len_keep].unsqueeze(-1).repeat(1, 1, dim))
    mask = torch.ones(n, length)
    mask[:, :len_keep] = 0
    mask = torch.gather(mask, 1, ids_restore)
    cls = model.cls_token + model.pos_embed[:, :1, :]
    x = torch.cat([cls.expand(n, -1, -1), x], dim=1)
    for blk in model.blocks:
        x = blk(x)
    x = model.decoder_embed(model.norm(x))
    tokens = model.mask_token.repeat(n, length + 1 - x.shape[1], 1)
    x_ = torch.cat([x[:, 1:, :], tokens], dim=1)
    x_ = torch.gather(x_, 1, ids_restore.unsqueeze(-1).repeat(1, 1, x.shape[2]))
    x = torch.cat([x[:, :1, :], x_], dim=1) + model.decoder_pos_embed
    for blk in model.decoder_blocks:
        x = blk(x)
    pred = model.decoder_pred(model.decoder_norm(x))[:, 1:, :]
    return pred, mask


def reference_loss(imgs, pred, mask, p, norm_pix, weights=None):
    target = reference_patchify(imgs, p)
    if norm_pix:
        mu = target.mean(-1, keepdim=True)
        sd = torch.sqrt(((target - mu) ** 2).sum(-1, keepdim=True) / (target.shape[-1] - 1) + 1e-6)
        target = (target - mu) / sd
    mse = ((pred - target) ** 2).mean(-1)
    w = torch.ones_like(mse) if weights is None else weights
    return (mse * mask * w).sum() / mask.sum()


@pytest.fixture(scope="module")
def small_model():
    torch.manual_seed(0)
    return MaskedAutoencoderViT(img_size=64, patch_size=16, embed_dim=64, depth=2, num_heads=4,
                                decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=4)


@pytest.mark.parametrize("norm_pix", [False, True])
def test_loss_equals_official_formulation_with_same_noise(small_model, norm_pix):
    model = small_model
    model.norm_pix_loss = norm_pix
    gen = torch.Generator().manual_seed(1)
    imgs = torch.randn(3, 3, 64, 64, generator=gen)
    noise = torch.rand(3, 16, generator=gen)
    with torch.no_grad():
        loss, pred, mask = model(imgs, mask_ratio=0.75, noise=noise)
        ref_pred, ref_mask = reference_forward(model, imgs, 0.75, noise)
        ref = reference_loss(imgs, ref_pred, ref_mask, 16, norm_pix)
    assert torch.equal(mask, ref_mask)
    assert mask.sum(dim=1).tolist() == [12, 12, 12]  # 16 - int(16 * 0.25)
    torch.testing.assert_close(pred, ref_pred, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("norm_pix", [False, True])
def test_unweighted_loss_is_bit_identical_to_official_forward_loss(small_model, norm_pix):
    # official forward_loss, step by step: einsum patchify, unbiased var + 1e-6, masked mean
    model = small_model
    model.norm_pix_loss = norm_pix
    gen = torch.Generator().manual_seed(3)
    imgs = torch.randn(2, 3, 64, 64, generator=gen)
    pred = torch.randn(2, 16, 16 * 16 * 3, generator=gen)
    mask = (torch.rand(2, 16, generator=gen) > 0.5).float()
    target = torch.einsum("nchpwq->nhwpqc", imgs.reshape(2, 3, 4, 16, 4, 16)).reshape(2, 16, -1)
    if norm_pix:
        mean = target.mean(dim=-1, keepdim=True)
        var = target.var(dim=-1, keepdim=True)
        target = (target - mean) / (var + 1.0e-6) ** 0.5
    per_patch = ((pred - target) ** 2).mean(dim=-1)
    official = (per_patch * mask).sum() / mask.sum()
    assert torch.equal(model.forward_loss(imgs, pred, mask), official)
    assert torch.equal(model.forward_loss(imgs, pred, mask, torch.ones(2, 16)), official)


def test_weighted_loss_formula(small_model):
    model = small_model
    model.norm_pix_loss = True
    gen = torch.Generator().manual_seed(2)
    imgs = torch.randn(2, 3, 64, 64, generator=gen)
    noise = torch.rand(2, 16, generator=gen)
    weights = 1 + 3 * torch.rand(2, 16, generator=gen)
    with torch.no_grad():
        loss_w, pred, mask = model(imgs, 0.75, loss_weights=weights, noise=noise)
        loss_1, _, _ = model(imgs, 0.75, loss_weights=torch.ones(2, 16), noise=noise)
        loss_0, _, _ = model(imgs, 0.75, noise=noise)
    ref = reference_loss(imgs, pred, mask, 16, True, weights)
    torch.testing.assert_close(loss_w, ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(loss_1, loss_0)
    assert not torch.allclose(loss_w, loss_0)
    # weight on a visible patch changes nothing: only masked patches count
    bumped = weights.clone()
    bumped[mask == 0] *= 100
    with torch.no_grad():
        loss_b, _, _ = model(imgs, 0.75, loss_weights=bumped, noise=noise)
    torch.testing.assert_close(loss_b, loss_w)


def test_noise_makes_masks_reproducible(small_model):
    imgs = torch.randn(2, 3, 64, 64)
    noise = torch.rand(2, 16)
    with torch.no_grad():
        _, _, m1 = small_model(imgs, 0.75, noise=noise)
        _, _, m2 = small_model(imgs, 0.75, noise=noise)
        _, _, m3 = small_model(imgs, 0.75, noise=1 - noise)
    assert torch.equal(m1, m2)
    kept = torch.argsort(noise, dim=1)[:, :4]  # the 4 lowest-noise patches stay visible
    assert torch.all(m1.gather(1, kept) == 0)
    assert torch.all(m1[m3 == 0] == 1)  # reversed noise keeps patches that m1 masked


def test_patchify_order_and_roundtrip(small_model):
    imgs = torch.randn(2, 3, 64, 64)
    patches = small_model.patchify(imgs)
    torch.testing.assert_close(patches, reference_patchify(imgs, 16), rtol=0, atol=0)
    torch.testing.assert_close(small_model.unpatchify(patches), imgs, rtol=0, atol=0)


def test_gradients_flow_and_frozen_pos_embed(small_model):
    imgs = torch.randn(2, 3, 64, 64)
    loss, _, _ = small_model(imgs, 0.75, loss_weights=torch.rand(2, 16) + 1)
    loss.backward()
    assert small_model.cls_token.grad is not None and small_model.mask_token.grad is not None
    assert small_model.pos_embed.grad is None
    assert torch.isfinite(small_model.blocks[0].attn.qkv.weight.grad).all()
    small_model.zero_grad()


def test_bad_weight_shape_is_a_clear_error(small_model):
    with pytest.raises(ValueError, match="loss_weights must be"):
        small_model(torch.randn(1, 3, 64, 64), 0.75, loss_weights=torch.ones(1, 196))


def test_factories_importable_and_unknown_name():
    from attgmae.models import create_mae

    assert models.mae_vit_large_patch16 is models.MODEL_FACTORIES["mae_vit_large_patch16"]
    with pytest.raises(ValueError, match="unknown model"):
        create_mae("mae_vit_giant")
    tiny = create_mae("mae_vit_tiny_patch16", norm_pix_loss=True)
    with torch.device("meta"):
        default = MaskedAutoencoderViT()  # official constructor defaults: ViT-L, no norm_pix
    assert tiny.norm_pix_loss and default.norm_pix_loss is False and len(default.blocks) == 24
