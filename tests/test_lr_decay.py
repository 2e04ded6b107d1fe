"""param_groups_lrd gives MAE's layer-decay groups on ViT-B/16 and ViT-L/16 (built on the meta
device: no memory, no init cost), checked against the definition written out independently."""

import re

import pytest
import torch
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from attgmae.core.errors import InputError
from attgmae.eval import param_groups_lrd
from attgmae.models.dense_model import DenseModel


def vit(depth: int, width: int, heads: int, **kwargs) -> VisionTransformer:
    with torch.device("meta"):
        return VisionTransformer(
            patch_size=16, embed_dim=width, depth=depth, num_heads=heads, num_classes=1000, **kwargs
        )


def reference_groups(model, weight_decay, no_decay_names, layer_decay):
    """The definition, parameter by parameter: the embeddings are layer 0, block i is layer
    i + 1, the rest (norms, head) layer depth + 1; lr scale = layer_decay ** (depth + 1 - layer);
    no weight decay on vectors and the listed names. Groups: one per (layer, decay), in order of
    first appearance -> [(names, lr_scale, weight_decay)]."""
    depth = len(model.blocks)
    groups = {}
    for name, param in model.named_parameters():
        block = re.fullmatch(r"blocks\.(\d+)\..+", name)
        if name in ("cls_token", "pos_embed") or re.match(r"patch_embed\.", name):
            layer = 0
        elif block:
            layer = int(block.group(1)) + 1
        else:
            layer = depth + 1
        decay = 0.0 if param.dim() < 2 or name in no_decay_names else weight_decay
        key = (layer, decay)
        groups.setdefault(key, ([], layer_decay ** (depth + 1 - layer), decay))[0].append(name)
    return list(groups.values())


@pytest.mark.parametrize(
    "depth, width, heads, layer_decay, pool",
    [(12, 768, 12, 0.65, "avg"), (24, 1024, 16, 0.75, "avg"), (12, 768, 12, 0.75, "token")],
)
def test_groups_equal_maes_definition(depth, width, heads, layer_decay, pool):
    model = vit(depth, width, heads, global_pool=pool)
    names = {id(p): n for n, p in model.named_parameters()}
    no_decay = model.no_weight_decay()
    groups = param_groups_lrd(model, 0.05, no_weight_decay_list=no_decay, layer_decay=layer_decay)
    got = [([names[id(p)] for p in g["params"]], g["lr_scale"], g["weight_decay"]) for g in groups]
    assert got == reference_groups(model, 0.05, no_decay, layer_decay)
    assert len(groups) == 2 * (depth + 2)  # decayed and not, per layer
    by_name = {names[id(p)]: g for g in groups for p in g["params"]}
    assert by_name["head.weight"]["lr_scale"] == 1.0
    assert by_name[f"blocks.{depth - 1}.attn.qkv.weight"]["lr_scale"] == layer_decay
    assert by_name["patch_embed.proj.weight"]["lr_scale"] == layer_decay ** (depth + 1)
    assert by_name["pos_embed"]["weight_decay"] == 0.0  # listed by timm's no_weight_decay
    assert by_name["blocks.0.mlp.fc1.weight"]["weight_decay"] == 0.05


def test_frozen_parameters_are_left_out_and_models_without_blocks_need_no_decay():
    model = vit(2, 192, 3)
    model.pos_embed.requires_grad_(False)
    groups = param_groups_lrd(model)
    assert all(p is not model.pos_embed for g in groups for p in g["params"])
    mlp = nn.Sequential(nn.Linear(4, 4))
    assert [g["lr_scale"] for g in param_groups_lrd(mlp, layer_decay=1.0)] == [1.0, 1.0]
    with pytest.raises(InputError, match="layer decay 0.75 needs a ViT"):
        param_groups_lrd(mlp)


def test_a_model_with_its_own_layer_ids_is_cut_by_them():
    """DenseModel (encoder under a dense head) numbers its layers as MultiMAE: embeddings 0,
    encoder block i -> i + 1, the head depth + 1. Blocks the head never reads are gone but still
    counted (MultiMAE keeps them); the position embedding is frozen, as MultiMAE's."""
    head = nn.Conv2d(768, 5, 1)
    head.block_indices = (5,)  # the head reads block 5: blocks 6..11 are pruned
    model = DenseModel(vit(12, 768, 12), head)
    assert len(model.encoder.blocks) == 6 and model.num_layers == 12
    no_decay = {f"encoder.{n}" for n in model.encoder.no_weight_decay()}
    groups = param_groups_lrd(model, 0.05, no_decay, layer_decay=0.5)
    names = {id(p): n for n, p in model.named_parameters() if p.requires_grad}
    by_name = {names[id(p)]: g for g in groups for p in g["params"]}
    assert set(by_name) == set(names.values())
    for name, group in by_name.items():
        block = re.match(r"encoder\.blocks\.(\d+)\.", name)
        if name.startswith(("encoder.cls_token", "encoder.pos_embed", "encoder.patch_embed")):
            layer = 0
        elif block:
            layer = int(block.group(1)) + 1
        else:
            layer = 13
        assert group["lr_scale"] == 0.5 ** (13 - layer), name
        vector = name in no_decay or name.endswith("bias") or "norm" in name
        assert group["weight_decay"] == (0.0 if vector else 0.05), name
    assert by_name["head.weight"]["lr_scale"] == 1.0
    assert by_name["encoder.blocks.5.mlp.fc2.weight"]["lr_scale"] == 0.5**7
    assert by_name["encoder.patch_embed.proj.weight"]["lr_scale"] == 0.5**13
    assert "encoder.pos_embed" not in by_name and not model.encoder.pos_embed.requires_grad
    assert len(groups) == 2 * 8  # embeddings, blocks 0-5 and the head, each decayed and not
