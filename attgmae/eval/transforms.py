"""Evaluation image transforms (PIL in, normalized float tensor [3, S, S] out).

- ``eval_transform``: Resize(256, bicubic) + CenterCrop(224), the k-NN (DINO) and linear-probe
  validation (MAE) protocol.
- ``probe_train_transform``: MAE's linear-probe augmentation, RandomResizedCrop(224, bicubic)
  with MAE's single-draw crop (as TF/BYOL: no retry loop, the box clipped to the image) + flip.
"""

from __future__ import annotations

import math

import torch
from torchvision import transforms
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as F

from attgmae.core.constants import IMAGENET_MEAN, IMAGENET_STD


def _to_normalized_tensor():
    return [transforms.ToTensor(), transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)]


def eval_transform(input_size: int = 224, resize_size: int = 256):
    return transforms.Compose(
        [
            transforms.Resize(resize_size, interpolation=InterpolationMode.BICUBIC),
            transforms.CenterCrop(input_size),
            *_to_normalized_tensor(),
        ]
    )


class SingleDrawRandomResizedCrop(transforms.RandomResizedCrop):
    """RandomResizedCrop whose box is drawn once: area fraction ~ U(scale), log aspect ratio ~
    U(log ratio), width/height clipped to the image, then a uniform position. torchvision's
    version retries up to 10 times and falls back to a center crop instead."""

    @staticmethod
    def get_params(img, scale, ratio):
        width, height = F.get_image_size(img)
        area_frac = torch.empty(1).uniform_(scale[0], scale[1]).item()
        # Log and exp in float32 tensors, as MAE's crop: the same draws give the same box.
        log_lo, log_hi = torch.log(torch.tensor(ratio, dtype=torch.float32)).tolist()
        aspect = torch.exp(torch.empty(1).uniform_(log_lo, log_hi)).item()
        target_area = width * height * area_frac
        crop_w = min(round(math.sqrt(target_area * aspect)), width)
        crop_h = min(round(math.sqrt(target_area / aspect)), height)
        top = int(torch.randint(0, height - crop_h + 1, size=(1,)).item())
        left = int(torch.randint(0, width - crop_w + 1, size=(1,)).item())
        return top, left, crop_h, crop_w


def probe_train_transform(input_size: int = 224):
    return transforms.Compose(
        [
            SingleDrawRandomResizedCrop(input_size, interpolation=InterpolationMode.BICUBIC),
            transforms.RandomHorizontalFlip(),
            *_to_normalized_tensor(),
        ]
    )
