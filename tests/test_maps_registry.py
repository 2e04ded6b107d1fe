"""The method registry and compute_maps: one batch, every method, the same maps as the parts."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from attgmae.maps import dino, gradcam, preprocess, random_map, registry, tokencut
from attgmae.models.backbones import RandomWeightsWarning


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def models():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RandomWeightsWarning)
        return {backbone: registry.load_backbone(backbone, random_weights=True)[0]
                for backbone in registry.backbones_needed(registry.method_names())}


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


def test_compute_maps_equals_each_method_alone(models):
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (90, 130, 3), dtype=np.uint8) for _ in range(2)]
    keys = ["a/1.png", "b/2.png"]
    x = preprocess.to_model_input(images)
    names = registry.method_names()
    params = {name: registry.resolve_params(name) for name in names}
    maps = registry.compute_maps(names, x, keys, models, params)
    assert list(maps) == names
    cls_attn, patch_keys = dino.dino_outputs(models[registry.BACKBONE_DINO], x)
    np.testing.assert_allclose(maps["dino"], dino.dino_maps(cls_attn).numpy(), atol=1e-6)
    np.testing.assert_allclose(maps["tokencut"], tokencut.tokencut_maps(patch_keys), atol=1e-6)
    np.testing.assert_allclose(
        maps["gradcam"], gradcam.gradcam_maps(models[registry.BACKBONE_RESNET], x).numpy(),
        atol=1e-6)
    np.testing.assert_array_equal(maps["random"], random_map.random_maps(keys, 0))
    for name in names:
        assert maps[name].shape == (2, 14, 14) and maps[name].dtype == np.float32
        assert maps[name].min() >= 0 and maps[name].max() <= 1

    # gradcam target "label": the folder label where known, the top-1 class where it is -1.
    params["gradcam"] = registry.resolve_params("gradcam", {"target": "label"})
    resnet = models[registry.BACKBONE_RESNET]
    labeled = registry.compute_maps(["gradcam"], x, keys, models, params,
                                    labels=np.array([7, -1]))["gradcam"]
    top1 = gradcam.cam_7x7(resnet, x)[1]
    expected = gradcam.gradcam_maps(resnet, x, target=torch.tensor([7, int(top1[1])])).numpy()
    np.testing.assert_allclose(labeled, expected, atol=1e-6)
