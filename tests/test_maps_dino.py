"""DINO attention maps and the shared preprocessing, against the definitions computed by hand."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from attgmae.data import map_inputs as preprocess
from attgmae.maps import dino
from attgmae.models.backbones import RandomWeightsWarning, load_dino_vit


@pytest.fixture(scope="module")
def vit():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RandomWeightsWarning)
        model, _ = load_dino_vit(random_weights=True)
    # Random init gives near-uniform attention; sharpen the last block so the maps have contrast.
    with torch.no_grad():
        model.blocks[-1].attn.qkv.weight.mul_(4.0)
    return model


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    out = []
    for height, width in ((120, 160), (224, 224), (200, 90)):
        image = rng.integers(0, 60, (height, width, 3), dtype=np.uint8)
        image[height // 4 : height // 2, width // 3 : 2 * width // 3] = (230, 40, 20)  # an "object"
        out.append(image)
    return out


def _last_block_input(vit, x):
    """Tokens entering the last block, from the model's own (fused) forward."""
    captured = {}
    hook = vit.blocks[-1].register_forward_hook(lambda m, inp, out: captured.update(t=inp[0]))
    with torch.no_grad():
        vit.forward_features(x)
    hook.remove()
    return captured["t"]


@torch.no_grad()
def _explicit_attention(vit, x):
    """softmax(q k^T * d^-0.5) of the last block, fp64, computed from its qkv weights."""
    block = vit.blocks[-1]
    tokens = _last_block_input(vit, x).double()  # [B, 197, 768]
    normed = torch.nn.functional.layer_norm(
        tokens, (768,), block.norm1.weight.double(), block.norm1.bias.double(), block.norm1.eps)
    qkv = normed @ block.attn.qkv.weight.double().T + block.attn.qkv.bias.double()
    q, k, _ = qkv.reshape(len(x), 197, 3, 12, 64).permute(2, 0, 3, 1, 4)  # [B, 12, 197, 64]
    attn = torch.softmax(q @ k.transpose(-2, -1) / 8.0, dim=-1)  # [B, 12, 197, 197]
    return attn, qkv


def _minmax(values):
    values = values.reshape(len(values), -1)
    low, high = values.min(1, keepdims=True), values.max(1, keepdims=True)
    return ((values - low) / (high - low)).reshape(-1, 14, 14)


@pytest.fixture(scope="module")
def computed(vit, images):
    """One fast forward and one explicit computation, shared by the tests below."""
    x = preprocess.to_model_input(images)
    cls_attn, patch_keys = dino.dino_outputs(vit, x)
    attn, qkv = _explicit_attention(vit, x)
    return x, cls_attn, patch_keys, attn, qkv


def test_cls_attention_and_keys_equal_explicit_computation(computed):
    _, cls_attn, patch_keys, attn, qkv = computed
    assert cls_attn.shape == (3, 12, 196) and cls_attn.dtype == torch.float32
    assert patch_keys.shape == (3, 196, 768) and patch_keys.dtype == torch.float32
    np.testing.assert_allclose(cls_attn.numpy(), attn[:, :, 0, 1:].numpy(), atol=1e-6, rtol=1e-4)
    # The softmax runs over all 197 tokens (CLS included), not over the 196 patches only.
    np.testing.assert_allclose(cls_attn.sum(-1) + attn[:, :, 0, 0].float(), 1.0, atol=1e-5)
    assert (attn[:, :, 0, 0] > 1e-3).any()
    np.testing.assert_allclose(patch_keys.numpy(), qkv[:, 1:, 768:1536].numpy(), atol=2e-4)


def test_patch_keys_equal_tokencut_qkv_hook(vit, images):
    """TokenCut's features: hook on the last qkv, reshape(B,T,3,H,-1).permute, k, heads concat."""
    x = preprocess.to_model_input(images[:2])
    captured = {}
    hook = vit.blocks[-1].attn.qkv.register_forward_hook(
        lambda m, inp, out: captured.update(qkv=out))
    with torch.no_grad():
        vit.forward_features(x)
    hook.remove()
    qkv = captured["qkv"].reshape(2, 197, 3, 12, 64).permute(2, 0, 3, 1, 4)
    keys = qkv[1].transpose(1, 2).reshape(2, 197, -1)[:, 1:, :]
    _, patch_keys = dino.dino_outputs(vit, x)
    np.testing.assert_allclose(patch_keys.numpy(), keys.numpy(), atol=1e-5)


@pytest.mark.parametrize("heads", ["mean", "max", 0, 11, -1])
def test_dino_maps_head_choices(computed, heads):
    _, cls_attn, _, attn, _ = computed
    maps = dino.dino_maps(cls_attn, heads).numpy()
    patch_attn = attn[:, :, 0, 1:].numpy()  # [B, 12, 196]
    if heads == "mean":
        expected = patch_attn.mean(1)
    elif heads == "max":
        expected = patch_attn.max(1)
    else:
        expected = patch_attn[:, heads]
    assert maps.shape == (3, 14, 14)
    np.testing.assert_allclose(maps, _minmax(expected), atol=1e-4)
    assert maps.reshape(3, -1).min(1).tolist() == [0, 0, 0]
    assert maps.reshape(3, -1).max(1).tolist() == [1, 1, 1]


def test_patch_order_is_row_major(vit):
    """Patch (r, c) of the 14x14 grid is token 1 + 14 r + c: an object in the top-left image
    corner must light up the top-left of the map, not a transposed corner."""
    cls_attn = torch.zeros(1, 12, 196)
    cls_attn[0, :, 14 * 2 + 5] = 1.0  # row 2, column 5
    assert dino.dino_maps(cls_attn)[0, 2, 5] == 1.0


def test_reference_path_equals_fast_path(vit, computed):
    x, cls_attn = computed[0][:1], computed[1][:1]
    fast = dino.dino_maps(cls_attn)
    np.testing.assert_allclose(fast.numpy(), dino.dino_maps_reference(vit, x).numpy(), atol=1e-4)
    assert all(block.attn.fused_attn == vit.blocks[0].attn.fused_attn for block in vit.blocks)


def test_bf16_autocast_path_runs_and_agrees(vit, computed):
    x = computed[0][:1]
    maps_bf16 = dino.dino_maps(dino.dino_outputs(vit, x, amp=True)[0])
    maps_fp32 = dino.dino_maps(computed[1][:1])
    assert maps_bf16.dtype == torch.float32
    corr = np.corrcoef(maps_bf16.numpy().ravel(), maps_fp32.numpy().ravel())[0, 1]
    assert corr > 0.95


def test_constant_attention_gives_zero_map():
    maps = dino.dino_maps(torch.full((2, 12, 196), 0.25))
    assert torch.equal(maps, torch.zeros(2, 14, 14))


def test_bad_head_choice_raises():
    with pytest.raises(ValueError, match="head"):
        dino.dino_maps(torch.rand(1, 12, 196), "median")
    with pytest.raises(ValueError, match="out of range"):
        dino.dino_maps(torch.rand(1, 12, 196), 12)


# ---- preprocessing (shared by every method) ----

def test_to_model_input_resizes_whole_image_and_normalizes():
    image = np.zeros((60, 200, 3), dtype=np.uint8)
    image[:, :100] = (255, 0, 0)  # left half red, right half blue: no crop keeps the split
    image[:, 100:] = (0, 0, 255)
    x = preprocess.to_model_input([image])
    assert x.shape == (1, 3, 224, 224) and x.dtype == torch.float32
    mean = torch.tensor(preprocess.IMAGENET_MEAN).view(3, 1)
    std = torch.tensor(preprocess.IMAGENET_STD).view(3, 1)
    pixels = x[0] * std.view(3, 1, 1) + mean.view(3, 1, 1)  # back to [0, 1]
    assert torch.allclose(pixels[:, :, :110], torch.tensor([1.0, 0, 0]).view(3, 1, 1), atol=1e-5)
    assert torch.allclose(pixels[:, :, 114:], torch.tensor([0, 0, 1.0]).view(3, 1, 1), atol=1e-5)


def test_resize_is_pil_bilinear():
    """PIL's antialiased bilinear filter (torchvision's uint8 kernel): within 1 grey level of
    PIL's own pixels, shrinking and enlarging, and almost everywhere equal."""
    rng = np.random.default_rng(1)
    for shape in ((97, 301, 3), (390, 400, 3), (150, 180, 3)):
        image = rng.integers(0, 255, shape, dtype=np.uint8)
        expected = np.asarray(Image.fromarray(image).resize((224, 224), Image.BILINEAR))
        got = preprocess.resize_uint8(image)
        diff = np.abs(got.astype(int) - expected)
        assert got.shape == (224, 224, 3) and diff.max() <= 1 and diff.mean() < 0.05, shape
    x = preprocess.to_model_input([image])
    manual = (got / 255.0 - np.array(preprocess.IMAGENET_MEAN)) / np.array(
        preprocess.IMAGENET_STD)
    np.testing.assert_allclose(x[0].permute(1, 2, 0).numpy(), manual, atol=1e-5)


def test_to_model_input_rejects_non_rgb():
    with pytest.raises(ValueError, match="uint8 RGB"):
        preprocess.to_model_input([np.zeros((10, 10), np.uint8)])
    with pytest.raises(ValueError, match="uint8 RGB"):
        preprocess.to_model_input([np.zeros((10, 10, 3), np.float32)])


# ---- timm's vit_base_patch16_224 computes DINO's own ViT-B/16 (vision_transformer.py) ----

DINO_DEPTH, DINO_DIM, DINO_HEADS, DINO_MLP = 12, 768, 12, 3072


def _dino_named_state(seed: int) -> dict:
    """Random weights under the parameter names of DINO's ``vit_base`` (cls_token, pos_embed,
    patch_embed.proj, blocks.i.{norm1, attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2}, norm; no
    head), written from DINO's architecture, not taken from timm. The patch embedding is small so
    the first LayerNorm sees a variance near its eps (1e-6 vs torch's default 1e-5 shows)."""
    generator = torch.Generator().manual_seed(seed)

    def rand(*shape, std=0.02, mean=0.0):
        return mean + std * torch.randn(*shape, generator=generator)

    d = DINO_DIM
    state = {"cls_token": rand(1, 1, d, std=0.002), "pos_embed": rand(1, 197, d, std=0.002),
             "patch_embed.proj.weight": rand(d, 3, 16, 16, std=2e-4),
             "patch_embed.proj.bias": rand(d, std=2e-4)}
    for i in range(DINO_DEPTH):
        shapes = {"norm1": (d,), "attn.qkv": (3 * d, d), "attn.proj": (d, d), "norm2": (d,),
                  "mlp.fc1": (DINO_MLP, d), "mlp.fc2": (d, DINO_MLP)}
        for name, shape in shapes.items():
            norm = name.startswith("norm")
            state[f"blocks.{i}.{name}.weight"] = rand(*shape, std=0.1 if norm else 0.04,
                                                      mean=1.0 if norm else 0.0)
            state[f"blocks.{i}.{name}.bias"] = rand(shape[0])
    state["norm.weight"], state["norm.bias"] = rand(d, std=0.1, mean=1.0), rand(d)
    return state


@torch.no_grad()
def _dino_last_selfattention(state: dict, x: torch.Tensor, eps: float = 1e-6):
    """DINO's prepare_tokens + blocks + get_last_selfattention, fp64, from the state dict alone.
    -> (attention [B, H, 197, 197] of the last block, its qkv output [B, 197, 3 D])."""
    s = {name: value.double() for name, value in state.items()}
    batch, d, heads = len(x), DINO_DIM, DINO_HEADS

    def layer_norm(tokens, name):
        return torch.nn.functional.layer_norm(tokens, (d,), s[f"{name}.weight"],
                                              s[f"{name}.bias"], eps=eps)

    def linear(tokens, name):
        return tokens @ s[f"{name}.weight"].T + s[f"{name}.bias"]

    patches = torch.nn.functional.conv2d(x.double(), s["patch_embed.proj.weight"],
                                         s["patch_embed.proj.bias"], stride=16)  # [B, D, 14, 14]
    tokens = torch.cat([s["cls_token"].expand(batch, 1, d), patches.flatten(2).transpose(1, 2)],
                       dim=1) + s["pos_embed"]  # [B, 197, D]: 224 px needs no interpolation
    for i in range(DINO_DEPTH):
        qkv = linear(layer_norm(tokens, f"blocks.{i}.norm1"), f"blocks.{i}.attn.qkv")
        q, k, v = qkv.reshape(batch, 197, 3, heads, d // heads).permute(2, 0, 3, 1, 4)
        attn = torch.softmax(q @ k.transpose(-2, -1) * (d // heads) ** -0.5, dim=-1)
        if i == DINO_DEPTH - 1:
            return attn, qkv
        tokens = tokens + linear((attn @ v).transpose(1, 2).reshape(batch, 197, d),
                                 f"blocks.{i}.attn.proj")
        hidden = torch.nn.functional.gelu(linear(layer_norm(tokens, f"blocks.{i}.norm2"),
                                                 f"blocks.{i}.mlp.fc1"))
        tokens = tokens + linear(hidden, f"blocks.{i}.mlp.fc2")


def test_official_dino_file_gives_dinos_own_attention_and_keys(images, tmp_path):
    """A file laid out like dino_vitbase16_pretrain.pth loads strictly (every tensor used, none
    missing) and the loaded timm model's CLS attention and keys equal DINO's ViT computed from
    the file alone: same tokens (CLS first, position embedding added), LayerNorm eps 1e-6, qkv
    bias, no pre-norm, scale d^-0.5."""
    state = _dino_named_state(seed=5)
    path = tmp_path / "dino_vitbase16_pretrain.pth"
    torch.save(state, path)
    vit, _ = load_dino_vit(path)
    loaded = vit.state_dict()
    assert set(loaded) == set(state)
    assert all(torch.equal(loaded[name], value) for name, value in state.items())

    x = preprocess.to_model_input(images[:2])
    cls_attn, patch_keys = dino.dino_outputs(vit, x)
    attn, qkv = _dino_last_selfattention(state, x)
    expected = attn[:, :, 0, 1:]  # CLS query, patch columns: [B, 12, 196]
    assert expected.std() > 1e-4  # a non-uniform attention, so the comparison means something
    np.testing.assert_allclose(cls_attn.numpy(), expected.numpy(), atol=1e-6, rtol=1e-4)
    np.testing.assert_allclose(patch_keys.numpy(), qkv[:, 1:, DINO_DIM : 2 * DINO_DIM].numpy(),
                               atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(dino.dino_maps(cls_attn).numpy(),
                               _minmax(expected.mean(1).numpy()), atol=1e-4)
    # The check can fail: torch's default LayerNorm eps (1e-5) gives another attention.
    other_eps = _dino_last_selfattention(state, x, eps=1e-5)[0][:, :, 0, 1:]
    assert np.abs(other_eps.numpy() - expected.numpy()).max() > 1e-4
