"""The method registry: backbones each method needs, parameter defaults and checks."""

from __future__ import annotations

import pytest

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
