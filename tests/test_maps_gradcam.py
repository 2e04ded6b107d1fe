"""Batched Grad-CAM against pytorch-grad-cam 1.5.7 called the documented way."""

from __future__ import annotations

import warnings

import cv2
import numpy as np
import pytest
import torch
from pytorch_grad_cam import GradCAM, GradCAMPlusPlus
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from attgmae.core.listing import list_images
from attgmae.data import map_inputs as preprocess
from attgmae.data.images import decode_rgb
from attgmae.maps import gradcam
from attgmae.models.backbones import RandomWeightsWarning, load_resnet50


@pytest.fixture(scope="module")
def resnet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RandomWeightsWarning)
        model, _ = load_resnet50(random_weights=True)
    return model


@pytest.fixture(scope="module")
def x(example_root):
    keys = list_images(example_root / "train")[::11][:2]
    return preprocess.to_model_input([decode_rgb(example_root / "train" / k) for k in keys])


def _library_reference(model, x, layer="layer4", targets=None, cam_class=GradCAM):
    """pytorch-grad-cam on the 224x224 input, then cv2 INTER_AREA to 14x14, then min-max."""
    with cam_class(model=model, target_layers=[getattr(model, layer)[-1]]) as cam:
        cams = cam(input_tensor=x, targets=targets)  # [B, 224, 224]
    small = np.stack([cv2.resize(c, (14, 14), interpolation=cv2.INTER_AREA) for c in cams])
    flat = small.reshape(len(small), -1)
    low, high = flat.min(1, keepdims=True), flat.max(1, keepdims=True)
    scaled = np.where(high > low, (flat - low) / np.where(high > low, high - low, 1), 0)
    return scaled.reshape(-1, 14, 14)


@pytest.fixture(scope="module")
def library_top1(resnet, x):
    """pytorch-grad-cam's top-1 maps per layer, computed once (the library call is slow)."""
    return {layer: _library_reference(resnet, x, layer) for layer in ("layer4", "layer3")}


@pytest.mark.parametrize("layer", ["layer4", "layer3"])
def test_batched_gradcam_matches_pytorch_grad_cam(resnet, x, library_top1, layer):
    ours = gradcam.gradcam_maps(resnet, x, layer=layer)
    reference = library_top1[layer]
    assert ours.shape == (2, 14, 14) and ours.dtype == torch.float32
    assert (reference.reshape(2, -1).std(1) > 0.05).all()  # non-degenerate CAMs
    assert np.abs(ours.numpy() - reference).max() < 0.01


def test_explicit_targets_match_library(resnet, x):
    labels = torch.tensor([3, 500])
    ours = gradcam.gradcam_maps(resnet, x, target=labels)
    reference = _library_reference(resnet, x,
                                   targets=[ClassifierOutputTarget(int(t)) for t in labels])
    assert np.abs(ours.numpy() - reference).max() < 0.01
    top1 = gradcam.gradcam_maps(resnet, x)
    assert not torch.allclose(ours, top1)  # the target is really used


def test_top1_target_is_the_models_prediction(resnet, x):
    _, target = gradcam.cam_7x7(resnet, x)
    with torch.no_grad():
        np.testing.assert_array_equal(target.numpy(), resnet(x).argmax(1).numpy())


def test_all_negative_cam_gives_zero_map(resnet, x):
    """A CAM that is <= 0 everywhere is all zero after the relu: both paths return zeros."""
    negative = load_resnet50.__globals__["build_resnet50"]()
    negative.load_state_dict(resnet.state_dict())
    negative.eval()
    with torch.no_grad():
        negative.fc.weight.copy_(-negative.fc.weight.abs())  # layer4 output >= 0 -> cam <= 0
    ours = gradcam.gradcam_maps(negative, x[:1])
    reference = _library_reference(negative, x[:1])
    assert torch.equal(ours, torch.zeros(1, 14, 14))
    np.testing.assert_array_equal(reference, 0.0)


def test_other_methods_go_through_the_library(resnet, x):
    ours = gradcam.gradcam_maps(resnet, x[:1], method="gradcam++")
    reference = _library_reference(resnet, x[:1], cam_class=GradCAMPlusPlus)
    np.testing.assert_allclose(ours.numpy(), reference, atol=1e-6)


def test_reference_path_is_the_library_per_batch(resnet, x, library_top1):
    reference = gradcam.gradcam_maps_reference(resnet, x, batch_size=1)
    np.testing.assert_allclose(reference, library_top1["layer4"], atol=1e-5)


def test_bf16_autocast_path_runs_and_agrees(resnet, x):
    maps_bf16 = gradcam.gradcam_maps(resnet, x[:2], amp=True)
    maps_fp32 = gradcam.gradcam_maps(resnet, x[:2], amp=False)
    assert maps_bf16.dtype == torch.float32 and maps_bf16.shape == (2, 14, 14)
    corr = np.corrcoef(maps_bf16.numpy().ravel(), maps_fp32.numpy().ravel())[0, 1]
    assert corr > 0.9


def test_bad_layer_and_method_raise(resnet, x):
    with pytest.raises(ValueError, match="layer"):
        gradcam.gradcam_maps(resnet, x[:1], layer="layer2")
    with pytest.raises(ValueError, match="method"):
        gradcam.gradcam_maps(resnet, x[:1], method="magiccam")
