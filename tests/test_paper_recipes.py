"""The paper's recipes as data: Sec. A.6's low-shot presets for every model it names, and the
numbers the docs state about the random-map control (Table 8)."""

from __future__ import annotations

import numpy as np
import pytest

from attgmae.cli.eval import finetune_config, parse
from attgmae.pipelines.finetune_config import PRESETS, batch_arithmetic


def preset(name: str, *extra: str):
    return finetune_config(parse(["finetune", "--checkpoint", "c", "--data_path", "d",
                                  "--preset", name, *extra]))  # fmt: skip


@pytest.mark.parametrize(
    "model, lr, epochs, warmup, layer_decay",
    [("semmae", 5e-4, 90, 5, 0.65), ("beit", 5e-3, 50, 5, 0.75), ("simmim", 5e-3, 100, 20, 0.65)],
)
def test_sec_a6_presets_of_the_other_models(model, lr, epochs, warmup, layer_decay):
    one, ten = preset(f"lowshot-1pct-{model}"), preset(f"lowshot-10pct-{model}")
    for cfg in (one, ten):
        assert (cfg.lr, cfg.epochs, cfg.warmup_epochs) == (lr, epochs, warmup)
        assert (cfg.layer_decay, cfg.weight_decay) == (layer_decay, 0.05)
        assert batch_arithmetic(cfg, world_size=8)[2] == lr  # a peak lr, whatever the batch
    # 1%: crop and flip only; 10%: MAE's augmentations
    assert (one.percent, one.aa, one.reprob, one.mixup, one.cutmix) == (1.0, "none", 0, 0, 0)
    assert (ten.percent, ten.aa, ten.reprob, ten.mixup, ten.cutmix) == (
        10.0, "rand-m9-mstd0.5-inc1", 0.25, 0.8, 1.0)  # fmt: skip
    # a flag given still wins over the preset, a subset file over its sampled percent
    listed = preset(f"lowshot-1pct-{model}", "--subset_file", "1p.txt", "--epochs", "3")
    assert (listed.subset_file, listed.percent, listed.epochs) == ("1p.txt", None, 3)


def test_every_lowshot_preset_has_both_subsets():
    lowshot = {name for name in PRESETS if name.startswith("lowshot-")}
    assert lowshot == {f"lowshot-{p}{m}" for p in ("1pct", "10pct")
                       for m in ("", "-semmae", "-beit", "-simmim")}  # fmt: skip


def test_random_maps_weigh_2_1_on_average_at_tau_0_75():
    """docs/reproduce.md: a random map shares a real map's range (weights 1 .. exp(1/0.75) =
    3.79) but not its amount: its mean weight at tau 0.75 is about 2.1, where a TokenCut map's
    background (M_norm 0) weighs 1."""
    import torch

    from attgmae.guidance import fresh_random_map, loss_weights
    from attgmae.maps.random_map import keyed_random_maps

    fixed = keyed_random_maps([f"n0/{i}.JPEG" for i in range(1000)], seed=0)  # stage 1's
    fresh = np.stack([fresh_random_map(np.random.default_rng(i)) for i in range(1000)])
    for maps in (fixed, fresh):
        weights = loss_weights(torch.from_numpy(maps), tau=0.75).numpy()
        assert weights.min() == pytest.approx(1.0) and weights.max() == pytest.approx(3.7937, 1e-4)
        assert weights.mean() == pytest.approx(0.75 * (np.exp(1 / 0.75) - 1), abs=0.01)
        assert round(float(weights.mean()), 1) == 2.1
    background = loss_weights(torch.zeros(1, 14, 14), tau=0.75)
    assert torch.equal(background, torch.ones(1, 196))
