"""The method registry: backbones each method needs, parameter defaults and checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch.nn.functional as F

from attgmae.core.minmax import minmax_torch
from attgmae.maps import registry


def test_registry_declares_backbones_and_issue_defaults():
    assert registry.backbones_needed(["dino", "tokencut", "random"]) == [registry.BACKBONE_DINO]
    assert registry.backbones_needed(["random"]) == []
    assert registry.resolve_params("tokencut") == {"tau": 0.2, "eps": 1e-5, "map": "fg-eigvec"}
    assert registry.resolve_params("dino") == {"heads": "mean"}
    assert registry.resolve_params("dino", {"heads": "3"}) == {"heads": 3}
    assert registry.resolve_params("gradcam", {"layer": "layer3", "method": None})["layer"] == \
        "layer3"


def test_registry_rejects_bad_names_and_values():
    with pytest.raises(ValueError, match="unknown map method"):
        registry.parse_methods("dino,lost")
    assert registry.parse_methods("dino, tokencut,dino") == ["dino", "tokencut"]
    with pytest.raises(ValueError, match="map must be one of"):
        registry.resolve_params("tokencut", {"map": "bbox"})
    with pytest.raises(ValueError, match="no parameter"):
        registry.resolve_params("random", {"tau": 1})
    with pytest.raises(ValueError, match="gradcam method"):
        registry.resolve_params("gradcam", {"method": "magiccam"})
    assert registry.resolve_params("dino", {"heads": "-12"}) == {"heads": -12}
    with pytest.raises(ValueError, match="out of range.*12 heads"):
        registry.resolve_params("dino", {"heads": "12"})


# ---- adding a method: one function plus one registry entry ----


def patch_brightness(batch, params):
    """A toy method: each 16x16 patch's mean brightness, raised to ``power``, min-max."""
    gray = batch.images.mean(dim=1, keepdim=True)  # [B, 1, 224, 224]
    return minmax_torch(F.avg_pool2d(gray, 16)[:, 0] ** params["power"])  # [B, 14, 14]


@pytest.fixture
def toy_method():
    toy = registry.MapMethod(
        name="toy",
        backbone=None,
        compute=patch_brightness,
        params=(registry.Param("power", 1.0, "toy_power", "exponent of the brightness", float),),
        summary="patch brightness (a test of the registry)",
    )
    registry.register(toy)
    yield toy
    registry.METHODS.pop("toy")


def test_a_registered_method_gets_its_flag_and_its_store(toy_method, example_root, tmp_path,
                                                         capsys):
    from attgmae.cli.maps import build_parser, main
    from attgmae.core.listing import list_images
    from attgmae.data.images import decode_rgb
    from attgmae.data.map_inputs import to_model_input
    from attgmae.store import open_store

    root = example_root / "train"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["generate", "--help"])
    assert "--toy_power POWER" in capsys.readouterr().out
    out = tmp_path / "maps"
    argv = ["generate", str(root), "--out", str(out), "--methods", "toy", "--toy_power", "2",
            "--device", "cpu", "--num_workers", "0", "--no_progress"]
    assert main(argv) == 0
    store = open_store(out / "toy.zarr")
    assert store.attrs["params"] == {"power": 2.0} and store.attrs["model"] is None
    keys = list_images(root)
    images = to_model_input([decode_rgb(root / key) for key in keys])
    gray = images.mean(dim=1, keepdim=True)
    expected = minmax_torch(F.avg_pool2d(gray, 16)[:, 0] ** 2).numpy()
    np.testing.assert_allclose(store.get_batch(keys), expected, atol=1e-3)  # float16 storage


def test_tokencut_threshold_has_its_own_flag_and_the_old_spelling(tmp_path):
    from attgmae.cli.maps import build_parser
    from attgmae.cli.maps_generate import generate_config

    parser = build_parser()
    for flag in ("--tokencut_threshold", "--tokencut-threshold", "--tokencut_tau"):
        args = parser.parse_args(["generate", "imgs", "--out", "o", "--methods", "tokencut",
                                  flag, "0.3"])
        assert generate_config(args).params == {
            "tokencut": {"tau": 0.3, "eps": 1e-5, "map": "fg-eigvec"}
        }
