"""Image -> model input, the same for every map method.

The whole image is resized to 224x224 WITHOUT cropping (the maps must cover the whole image, so
stage 2 can resize the same image and the map the same way), then scaled to [0, 1] and normalized
with the ImageNet mean/std that DINO, torchvision's ResNet-50 and pytorch-grad-cam's examples use.

Resize choice: PIL ``Image.resize((224, 224), BILINEAR)``, which is what DINO's and torchvision's
``transforms.Resize`` do on PIL images (bilinear with antialiasing when shrinking). It runs per
image on the CPU (in the data-loader workers); only the uint8 224x224 image travels to the device,
where ``normalize_batch`` does the float conversion batched.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

INPUT_SIZE = 224
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def resize_uint8(image: np.ndarray, size: int = INPUT_SIZE) -> np.ndarray:
    """uint8 RGB [H, W, 3] -> uint8 RGB [size, size, 3] (PIL bilinear, antialiased, no crop)."""
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(
            f"expected a uint8 RGB image [H, W, 3], got {image.dtype} {tuple(image.shape)}"
        )
    if image.shape[0] == size and image.shape[1] == size:
        return np.ascontiguousarray(image)
    resized = Image.fromarray(image).resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(resized, dtype=np.uint8)


def normalize_batch(images_uint8: torch.Tensor, device=None) -> torch.Tensor:
    """uint8 [B, 224, 224, 3] (any device) -> float32 [B, 3, 224, 224] ImageNet-normalized."""
    images = images_uint8.to(device=device, non_blocking=True)
    mean = torch.tensor(IMAGENET_MEAN, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=images.device).view(1, 3, 1, 1)
    x = images.permute(0, 3, 1, 2).float().div_(255.0)  # [B, 3, H, W] in [0, 1]
    return ((x - mean) / std).contiguous()


def to_model_input(images: list[np.ndarray], device=None) -> torch.Tensor:
    """list of uint8 RGB [H, W, 3] (any sizes) -> float32 [B, 3, 224, 224] on ``device``."""
    if len(images) == 0:
        raise ValueError("to_model_input needs at least one image")
    resized = np.stack([resize_uint8(image) for image in images])  # [B, 224, 224, 3]
    return normalize_batch(torch.from_numpy(resized), device=device)
