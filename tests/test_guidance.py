"""Loss weights, the tau and lr schedules, and the optimizer's weight-decay groups."""

import math

import numpy as np
import pytest
import torch

from attgmae.guidance import fresh_random_map, loss_weights, tau_at
from attgmae.models import MaskedAutoencoderViT
from attgmae.optim import lr_at, make_adamw, param_groups_weight_decay, set_lr


@pytest.mark.parametrize("tau, top", [(0.75, 3.79), (0.7, 4.17)])
def test_weights_match_the_papers_figures(tau, top):
    maps = torch.zeros(2, 14, 14)
    maps[0, 3, 5] = 1.0
    w = loss_weights(maps, tau)
    assert w.shape == (2, 196) and w.dtype == torch.float32
    assert round(float(w[0, 3 * 14 + 5]), 2) == top
    assert torch.all(w[1] == 1.0)  # background weight gamma = 1
    assert torch.allclose(loss_weights(maps, tau, gamma=2.0), 2 * w)


def test_weights_formula_and_order_follow_patchify():
    gen = torch.Generator().manual_seed(0)
    maps = torch.rand(3, 14, 14, generator=gen)
    w = loss_weights(maps, 0.6, gamma=1.5)
    torch.testing.assert_close(w, 1.5 * torch.exp(maps.reshape(3, -1) / 0.6))
    # a bright patch at (row 2, col 9) of an image is patchify index 2 * 14 + 9: same as the map
    model = MaskedAutoencoderViT(embed_dim=64, depth=1, num_heads=4, decoder_embed_dim=32,
                                 decoder_depth=1, decoder_num_heads=4)
    img = torch.zeros(1, 3, 224, 224)
    img[:, :, 2 * 16:3 * 16, 9 * 16:10 * 16] = 1
    bright = model.patchify(img).sum(-1).argmax().item()
    one_hot = torch.zeros(1, 14, 14)
    one_hot[0, 2, 9] = 1
    assert loss_weights(one_hot, 0.75).argmax().item() == bright == 2 * 14 + 9
    with pytest.raises(ValueError):
        loss_weights(maps, 0.0)


def test_tau_schedule_half_cycle_cosine():
    assert tau_at(0.0, 100, 0.75) == tau_at(73.2, 100, 0.75) == 0.75  # constant without tau_end
    assert tau_at(0.0, 100, 0.9, 0.6) == pytest.approx(0.9)
    assert tau_at(100.0, 100, 0.9, 0.6) == pytest.approx(0.6)
    assert tau_at(50.0, 100, 0.9, 0.6) == pytest.approx(0.75)
    quarter = 0.6 + 0.3 * 0.5 * (1 + math.cos(math.pi / 4))
    assert tau_at(25.0, 100, 0.9, 0.6) == pytest.approx(quarter)
    steps = [tau_at(e / 10, 10, 0.9, 0.6) for e in range(101)]
    assert all(a >= b for a, b in zip(steps, steps[1:]))  # monotone, moves every iteration


def official_lr(epoch, lr, min_lr, warmup, epochs):
    """util/lr_sched.adjust_learning_rate re-derived."""
    if epoch < warmup:
        return lr * epoch / warmup
    cosine = math.cos(math.pi * (epoch - warmup) / (epochs - warmup))
    return min_lr + (lr - min_lr) * 0.5 * (1.0 + cosine)


@pytest.mark.parametrize("epoch", [0.0, 0.5, 13.37, 40.0, 41.2, 400.0, 799.99, 800.0])
def test_lr_schedule_matches_official(epoch):
    got = lr_at(epoch, 2.4e-3, 1e-6, 40, 800)
    assert got == pytest.approx(official_lr(epoch, 2.4e-3, 1e-6, 40, 800), rel=1e-12, abs=1e-15)


def test_set_lr_honours_lr_scale():
    p1, p2 = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(2))
    opt = torch.optim.AdamW([{"params": [p1]}, {"params": [p2], "lr_scale": 0.5}], lr=1.0)
    set_lr(opt, 0.1)
    assert [g["lr"] for g in opt.param_groups] == [0.1, 0.05]


def test_no_weight_decay_on_biases_and_norms():
    model = MaskedAutoencoderViT(img_size=32, embed_dim=32, depth=1, num_heads=2,
                                 decoder_embed_dim=16, decoder_depth=1, decoder_num_heads=2)
    no_decay, decay = param_groups_weight_decay(model, 0.05)
    assert no_decay["weight_decay"] == 0.0 and decay["weight_decay"] == 0.05
    names = {id(p): n for n, p in model.named_parameters()}
    no_decay_names = {names[id(p)] for p in no_decay["params"]}
    decay_names = {names[id(p)] for p in decay["params"]}
    assert "blocks.0.norm1.weight" in no_decay_names and "norm.bias" in no_decay_names
    assert "blocks.0.attn.qkv.bias" in no_decay_names
    assert {"cls_token", "mask_token", "blocks.0.attn.qkv.weight"} <= decay_names
    assert "pos_embed" not in decay_names | no_decay_names  # frozen: not optimized
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert decay_names | no_decay_names == trainable and not decay_names & no_decay_names
    opt = make_adamw(model, 1e-3, 0.05)
    assert opt.param_groups[0]["betas"] == (0.9, 0.95)


def test_random_map_is_normalized_noise():
    m = fresh_random_map(np.random.default_rng(0))
    assert m.shape == (14, 14) and m.dtype == np.float32
    assert m.min() == 0.0 and m.max() == pytest.approx(1.0)
    assert not np.array_equal(m, fresh_random_map(np.random.default_rng(1)))


def test_default_recipe_is_the_scheduled_main_method():
    from attgmae.pipelines.train_config import TrainConfig, tau_schedule

    scheduled = tau_schedule(TrainConfig("data", epochs=800))
    # from mild guidance (Fig. 1's range is reached late) to Fig. 2's sharpest, over the whole run
    assert scheduled.at(0.0) == 1.0 and scheduled.at(800.0) == pytest.approx(0.7)
    assert scheduled.at(20.0) < 1.0  # tau already moves during the 40 warmup epochs
    assert scheduled.as_dict()["kind"] == "cosine"
    # one flag away: the Sec. G ablation's constant 0.75
    ablation = tau_schedule(TrainConfig("data", epochs=800, tau_schedule="constant"))
    assert ablation.at(0.0) == ablation.at(800.0) == 0.75
    assert tau_schedule(TrainConfig("data", tau_schedule="constant", tau=0.5)).at(3.0) == 0.5
    other = tau_schedule(TrainConfig("data", epochs=10, tau=0.9, tau_end=0.6))
    assert other.at(10.0) == pytest.approx(0.6)
