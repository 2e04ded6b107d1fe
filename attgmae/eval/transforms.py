"""Evaluation image transforms (PIL in, normalized float tensor [3, S, S] out; one uint8).

- ``eval_transform``: Resize(256, bicubic) + CenterCrop(224), the k-NN (DINO) and linear-probe
  validation (MAE) protocol.
- ``EvalPixels``: the same protocol on the decoded uint8 array, uint8 [3, S, S] out, for feature
  extraction: torchvision's uint8 antialiased bicubic kernel (PIL's filter, within 1 grey level
  of ``eval_transform``'s pixels but for ~2 values in 10 million at 2, tested) and no float
  tensors out of the loader workers; the batch is normalized on the device
  (``attgmae.data.transforms.normalize_images``).
- ``probe_train_transform``: MAE's linear-probe augmentation, RandomResizedCrop(224, bicubic)
  with MAE's single-draw crop (as TF/BYOL: no retry loop, the box clipped to the image) + flip.
- ``finetune_train_transform``: MAE's fine-tuning augmentation (DeiT's), timm's
  ``create_transform``: RandomResizedCrop(bicubic) + flip + RandAugment + RandomErasing.
- ``finetune_eval_transform``: MAE's fine-tuning validation, Resize(input / 0.875, bicubic) +
  CenterCrop(input) up to 224 px inputs, Resize(input) + CenterCrop(input) above.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image
from timm.data import create_transform
from timm.data.auto_augment import RandAugment
from timm.data.auto_augment import posterize as timm_posterize
from torchvision import transforms
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as F
from torchvision.transforms.v2 import functional as F2

from attgmae.core.constants import IMAGENET_MEAN, IMAGENET_STD
from attgmae.data.images import writable


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


class EvalPixels:
    """uint8 RGB [H, W, 3] -> uint8 [3, S, S]: Resize(``resize_size``, bicubic, antialiased) of
    the shorter side + CenterCrop(``input_size``), the pixels ``eval_transform`` normalizes.
    ``takes_array``: datasets hand it the decoded array, not a PIL image."""

    takes_array = True

    def __init__(self, input_size: int = 224, resize_size: int = 256):
        self.input_size, self.resize_size = input_size, resize_size

    def __call__(self, image: np.ndarray) -> torch.Tensor:
        chw = torch.from_numpy(writable(image)).permute(2, 0, 1)  # [3, H, W] view, HWC storage
        resized = F2.resize(
            chw, [self.resize_size], interpolation=InterpolationMode.BICUBIC, antialias=True
        )
        return F2.center_crop(resized, [self.input_size]).contiguous()

    def __repr__(self) -> str:
        return f"EvalPixels(Resize({self.resize_size}, bicubic) + CenterCrop({self.input_size}))"


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


def finetune_train_transform(
    input_size: int = 224,
    auto_augment: str | None = "rand-m9-mstd0.5-inc1",
    color_jitter: float | None = None,
    re_prob: float = 0.25,
    re_mode: str = "pixel",
    re_count: int = 1,
):
    """PIL image -> augmented normalized tensor [3, S, S], as MAE's ``build_transform(is_train)``
    (timm draws from Python's ``random`` and torch: seed them per sample for exact resumes).
    ``auto_augment`` None: no RandAugment; ``color_jitter`` only acts without it (timm)."""
    augment = create_transform(
        input_size=input_size,
        is_training=True,
        color_jitter=color_jitter,
        auto_augment=auto_augment,
        interpolation="bicubic",
        re_prob=re_prob,
        re_mode=re_mode,
        re_count=re_count,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
    )
    for step in augment.transforms:
        for op in step.ops if isinstance(step, RandAugment) else ():
            if op.aug_fn is timm_posterize:
                op.aug_fn = posterize_zero_bits_black
    return augment


def posterize_zero_bits_black(img: Image.Image, bits_to_keep: int, **kwargs) -> Image.Image:
    """timm's posterize, also for 0 bits: RandAugment's PosterizeIncreasing keeps 0 bits at its
    highest magnitudes (``rand-m9-mstd0.5-inc1`` reaches them), which older Pillow, as used by
    the published recipe, turned into a black image (every value masked away) and Pillow 13
    refuses with a ValueError."""
    if bits_to_keep <= 0:
        return Image.new(img.mode, img.size)
    return timm_posterize(img, bits_to_keep, **kwargs)


def finetune_eval_transform(input_size: int = 224):
    """MAE's fine-tuning validation transform: the 224/256 center crop up to 224 px inputs, the
    whole resized image (crop ratio 1) above."""
    crop_ratio = 224 / 256 if input_size <= 224 else 1.0
    return eval_transform(input_size, int(input_size / crop_ratio))
