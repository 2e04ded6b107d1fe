"""Grad-CAM maps from a torchvision-layout ResNet-50, batched, 14x14.

Reference: what pytorch-grad-cam 1.5.7 returns for ``GradCAM(model, target_layers=[layer[-1]])``
with the top-1 target on the 224x224 input (``base_cam.py``, ``grad_cam.py``,
``utils/image.py:scale_cam_image``), then ``cv2.resize(cam, (14, 14), INTER_AREA)``, then min-max:

    alpha_c = mean_{h,w} d y_target / d A_c[h, w]          (A: the target layer's output)
    cam     = relu(sum_c alpha_c A_c)                        [7, 7] for layer4
    library = minmax_1e-7(cv2.resize(minmax_1e-7(cam), 224x224, INTER_LINEAR))
    map     = minmax(INTER_AREA(library, 14x14))

Every step after the relu is a positive affine rescaling or a linear resize, so the batched
version computes minmax(avgpool_16(bilinear_224(cam))) in torch (bilinear, half-pixel centres,
no antialias == cv2 INTER_LINEAR upscaling; 224 -> 14 INTER_AREA == 16x16 block mean). Only the
layers after the target layer are run with autograd, and only the gradient w.r.t. the target
activation is asked for. A CAM that is all zero after the relu stays all zero.
"""

from __future__ import annotations

import re

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from attgmae.core.constants import MAP_GRID as GRID
from attgmae.core.constants import MAP_INPUT_SIZE as INPUT_SIZE
from attgmae.core.errors import InputError
from attgmae.core.minmax import minmax_numpy, minmax_torch

CAM_LAYERS = ("layer3", "layer4")
WNID = re.compile(r"^n\d{8}$")  # an ImageNet class folder: n01440764

# --cam_method names -> pytorch-grad-cam class names (resolved lazily: the import is slow).
LIBRARY_METHODS = {
    "gradcam++": "GradCAMPlusPlus",
    "xgradcam": "XGradCAM",
    "layercam": "LayerCAM",
    "eigencam": "EigenCAM",
    "eigengradcam": "EigenGradCAM",
    "hirescam": "HiResCAM",
    "gradcamelementwise": "GradCAMElementWise",
    "scorecam": "ScoreCAM",
    "ablationcam": "AblationCAM",
    "fullgrad": "FullGrad",
    "library-gradcam": "GradCAM",  # pytorch-grad-cam's own GradCAM (the reference path)
}
CAM_METHODS = ("gradcam", *LIBRARY_METHODS)


def _check_layer(layer: str) -> None:
    if layer not in CAM_LAYERS:
        raise ValueError(f"cam layer must be one of {CAM_LAYERS}, got {layer!r}")


def _stages(resnet):
    """The torchvision ResNet as an ordered list of (name, module) stages up to the logits."""
    stem = torch.nn.Sequential(resnet.conv1, resnet.bn1, resnet.relu, resnet.maxpool)
    head = torch.nn.Sequential(resnet.avgpool, torch.nn.Flatten(1), resnet.fc)
    return [
        ("stem", stem),
        ("layer1", resnet.layer1),
        ("layer2", resnet.layer2),
        ("layer3", resnet.layer3),
        ("layer4", resnet.layer4),
        ("head", head),
    ]


def cam_7x7(resnet, x: torch.Tensor, layer: str = "layer4", target=None, amp: bool | None = None):
    """x [B, 3, 224, 224] -> (relu'd Grad-CAM float32 [B, h, w] at the layer, target int64 [B]).

    target None: the top-1 class of this forward; else a LongTensor [B] of class indices.
    amp: bf16 autocast for the layers before the target (default: on for CUDA, off on CPU).
    """
    _check_layer(layer)
    use_amp = x.device.type == "cuda" if amp is None else bool(amp)
    stages = _stages(resnet)
    split = [name for name, _ in stages].index(layer) + 1
    with torch.no_grad(), torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=use_amp):
        features = x
        for _, stage in stages[:split]:
            features = stage(features)
    activation = features.float().requires_grad_(True)  # [B, C, h, w], the target layer output
    with torch.enable_grad():
        logits = activation
        for _, stage in stages[split:]:
            logits = stage(logits)  # [B, classes]
        if target is None:
            target = logits.argmax(dim=1)
        target = torch.as_tensor(target, device=logits.device).long().reshape(-1)
        score = logits.gather(1, target[:, None]).sum()
        (grads,) = torch.autograd.grad(score, activation)  # [B, C, h, w]
    channel_weights = grads.mean(dim=(2, 3))  # [B, C]
    cam = torch.einsum("bc,bchw->bhw", channel_weights, activation.detach())
    return cam.clamp_min(0), target


def cam_to_grid(cam: torch.Tensor) -> torch.Tensor:
    """relu'd CAM [B, h, w] -> float32 [B, 14, 14]: bilinear to 224 (cv2 INTER_LINEAR), 16x16
    block mean (cv2 INTER_AREA to 14), per-image min-max."""
    upsampled = F.interpolate(
        cam[:, None].float(), size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False
    )  # [B, 1, 224, 224]
    pooled = F.avg_pool2d(upsampled, kernel_size=INPUT_SIZE // GRID)[:, 0]  # [B, 14, 14]
    return minmax_torch(pooled)


def library_cam_to_grid(cams_224: np.ndarray) -> np.ndarray:
    """pytorch-grad-cam output float32 [B, 224, 224] -> [B, 14, 14] (cv2 INTER_AREA, min-max)."""
    small = np.stack(
        [cv2.resize(cam, (GRID, GRID), interpolation=cv2.INTER_AREA) for cam in cams_224]
    )
    return minmax_numpy(small)


def library_cam_maps(
    resnet, x: torch.Tensor, layer: str = "layer4", target=None, method: str = "library-gradcam"
) -> np.ndarray:
    """Any pytorch-grad-cam method, called once on the batch -> float32 [B, 14, 14] (numpy).

    This is also the reference for ``method="gradcam"`` (``library-gradcam``).
    """
    _check_layer(layer)
    if method not in LIBRARY_METHODS:
        raise ValueError(f"cam method must be one of {CAM_METHODS}, got {method!r}")
    import pytorch_grad_cam  # here: it takes seconds to import, and the fast path needs none
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    cam_class = getattr(pytorch_grad_cam, LIBRARY_METHODS[method])
    targets = None
    if target is not None:
        targets = [ClassifierOutputTarget(int(t)) for t in torch.as_tensor(target).reshape(-1)]
    with cam_class(model=resnet, target_layers=[getattr(resnet, layer)[-1]]) as cam:
        cams_224 = cam(input_tensor=x.float(), targets=targets)  # [B, 224, 224] float32
    return library_cam_to_grid(cams_224)


def gradcam_maps(
    resnet,
    x: torch.Tensor,
    layer: str = "layer4",
    target=None,
    method: str = "gradcam",
    amp: bool | None = None,
) -> torch.Tensor:
    """x [B, 3, 224, 224] -> float32 [B, 14, 14] in [0, 1] on x's device.

    method "gradcam": the batched torch implementation above; any other name in CAM_METHODS
    goes through pytorch-grad-cam's class of that name (see LIBRARY_METHODS).
    """
    if method == "gradcam":
        cam, _ = cam_7x7(resnet, x, layer, target, amp)
        return cam_to_grid(cam)
    return torch.from_numpy(library_cam_maps(resnet, x, layer, target, method)).to(x.device)


def check_cam_method(name: str) -> str:
    """A --cam_method value: ``gradcam`` or one of pytorch-grad-cam's methods."""
    if name not in CAM_METHODS:
        raise ValueError(f"gradcam method must be one of {CAM_METHODS}, got {name!r}")
    return name


def imagenet_targets(class_names: list[str], labels: np.ndarray) -> np.ndarray:
    """Folder labels as ImageNet-1k class indices: valid only when the folders are the 1000
    wnids, whose sorted order is the standard class order. -> int64 [N]."""
    if len(class_names) != 1000 or not all(WNID.match(name) for name in class_names):
        raise InputError(
            "--cam_target label needs the ImageNet layout (exactly 1000 class folders named by "
            f"wnid, e.g. n01440764); found {len(class_names)} folders. Use --cam_target top1."
        )
    if (labels < 0).any():
        raise InputError("--cam_target label: some images are not inside a class folder")
    return labels


def check_images(params: dict, class_names: list[str], labels) -> None:
    """``target: label`` targets the folder labels: they must be ImageNet-1k class indices."""
    if params["target"] == "label":
        imagenet_targets(class_names, labels)


def batch_maps(batch, params: dict) -> torch.Tensor:
    """The registry's entry: a MapBatch -> float32 [B, 14, 14] on the batch's device."""
    target = batch.labels if params["target"] == "label" else None
    resnet = batch.model("resnet")
    return gradcam_maps(resnet, batch.images, params["layer"], target, params["method"], batch.amp)


def gradcam_maps_reference(
    resnet, x: torch.Tensor, layer: str = "layer4", target=None, batch_size: int = 32
) -> np.ndarray:
    """The reference path: pytorch-grad-cam's GradCAM called per batch. float32 [B, 14, 14]."""
    parts = []
    for start in range(0, len(x), batch_size):
        part_target = (
            None if target is None else torch.as_tensor(target)[start : start + batch_size]
        )
        parts.append(library_cam_maps(resnet, x[start : start + batch_size], layer, part_target))
    return np.concatenate(parts)
