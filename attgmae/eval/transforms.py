"""Evaluation image transforms (PIL in, normalized float tensor [3, S, S] out; one uint8).

- ``eval_transform``: Resize(256, bicubic) + CenterCrop(224), the k-NN (DINO) and linear-probe
  validation (MAE) protocol.
- ``EvalPixels``: the same protocol on the decoded uint8 array, uint8 [3, S, S] out, for feature
  extraction: PIL's first pass and torchvision's uint8 second pass, within 1 grey level of
  ``eval_transform``'s pixels (tested), and no float tensors out of the loader workers; the
  batch is normalized on the device
  (``attgmae.data.transforms.normalize_images``).
- ``DeviceEvalPixels``: the same pixels split between the workers (decode only) and the device
  (PIL's resize and crop exactly, ``attgmae.data.pil_exact``): the extraction's transform on
  CUDA, where it frees the workers of the resize.
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

from attgmae.core.constants import IMAGENET_MEAN, IMAGENET_STD
from attgmae.data.images import writable
from attgmae.data.packed import PackedBatch, pack
from attgmae.data.pil_exact import resize_crop_like_pil
from attgmae.data.pil_resize import (
    pil_resizes_height_first,
    support_band,
    torch_resize_like_pil,
)


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


def resized_size(width: int, height: int, size: int) -> tuple[int, int]:
    """(width, height) after torchvision's ``Resize(size)``: the shorter side to ``size``, the
    longer to ``int(size * long / short)``."""
    if width <= height:
        return size, int(size * height / width)
    return int(size * width / height), size


class EvalPixels:
    """uint8 RGB [H, W, 3] -> uint8 [3, S, S]: Resize(``resize_size``, bicubic, antialiased) of
    the shorter side + CenterCrop(``input_size``), the pixels ``eval_transform`` normalizes.
    ``takes_array``: datasets hand it the decoded array, not a PIL image.

    Within 1 grey level of PIL's pixels by construction: PIL's own first pass (in PIL's order,
    with its 22-bit weights) over just the band of the image that the crop's pixels read, then
    torchvision's uint8 kernel for the second pass, one rounding step from PIL's
    (``attgmae.data.pil_resize``). Both passes by torchvision would be 3x faster, but reach 2
    grey levels on ~1 value in 4 million.
    """

    takes_array = True

    def __init__(self, input_size: int = 224, resize_size: int = 256):
        if resize_size < input_size:
            raise ValueError(f"resize_size {resize_size} is smaller than the crop {input_size}")
        self.input_size, self.resize_size = input_size, resize_size

    def layout(self, width: int, height: int) -> tuple[int, int, int, int]:
        """(resized width, resized height, crop top, crop left) of a ``width`` x ``height``
        image: torchvision's Resize size and CenterCrop anchor."""
        out_width, out_height = resized_size(width, height, self.resize_size)
        top = int(round((out_height - self.input_size) / 2.0))
        left = int(round((out_width - self.input_size) / 2.0))
        return out_width, out_height, top, left

    def __call__(self, image: np.ndarray) -> torch.Tensor:
        height, width = image.shape[:2]
        out_width, out_height, top, left = self.layout(width, height)
        crop = self.input_size
        if pil_resizes_height_first(width, height, out_width, out_height):
            band = support_band(width, out_width, left, crop, Image.BICUBIC)
            part = _pil_resize(image[:, band.start : band.stop], out_height, axis=0)
            rows = _place(part[top : top + crop], band, width, axis=1)  # [crop, W, 3]
            resized = _second_pass(rows, (crop, out_width))
            return resized[:, :, left : left + crop].contiguous()
        band = support_band(height, out_height, top, crop, Image.BICUBIC)
        part = _pil_resize(image[band.start : band.stop], out_width, axis=1)
        columns = _place(part[:, left : left + crop], band, height, axis=0)  # [H, crop, 3]
        return _second_pass(columns, (out_height, crop))[:, top : top + crop].contiguous()

    def __repr__(self) -> str:
        return f"EvalPixels(Resize({self.resize_size}, bicubic) + CenterCrop({self.input_size}))"


class DeviceEvalPixels(EvalPixels):
    """``EvalPixels`` with the resize and crop on the device, PIL's pixels exactly: the loader
    workers only decode (``__call__``: the full-size uint8 [H, W, 3]), ``collate`` packs a
    batch into one buffer, ``on_device`` makes uint8 [B, 3, S, S] of it there, one resize per
    image size (the float64 products of ``pil_exact``, fast on a GPU only).

    A batch weighs what its photos weigh; above ``BUDGET_ITEM_BYTES`` an image on average, the
    worker crops its largest images itself (``cropped_in_worker``: PIL's resize, the same
    pixels), so /dev/shm and the device's copy stay bounded (``packed.pack``)."""

    BUDGET_ITEM_BYTES = 1 << 20  # a 600 x 580 photo; ImageNet's images average ~0.4 MiB

    def __call__(self, image: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(writable(image))

    def collate(self, items) -> tuple[PackedBatch, torch.Tensor, torch.Tensor]:
        """(image, label, row) items -> (packed images, labels [B], rows [B])."""
        labels = torch.tensor([item[1] for item in items], dtype=torch.int64)
        rows = torch.tensor([item[2] for item in items], dtype=torch.int64)
        budget = len(items) * self.BUDGET_ITEM_BYTES
        return pack([item[0] for item in items], budget, self.cropped_in_worker), labels, rows

    def cropped_in_worker(self, image: torch.Tensor) -> torch.Tensor:
        """uint8 [H, W, 3] -> its final uint8 [S, S, 3] by PIL's own Resize + CenterCrop: the
        pixels ``on_device`` makes of it (``pil_exact`` is PIL's, bit for bit)."""
        height, width = image.shape[:2]
        out_width, out_height, top, left = self.layout(width, height)
        resized = Image.fromarray(image.numpy()).resize((out_width, out_height), Image.BICUBIC)
        crop = resized.crop((left, top, left + self.input_size, top + self.input_size))
        return torch.from_numpy(writable(np.asarray(crop)))

    def on_device(self, batch: PackedBatch, device) -> torch.Tensor:
        """A ``collate``d batch -> uint8 [B, 3, S, S] on ``device``; the batch is released."""
        images = batch.items(device)
        crop = self.input_size
        out = torch.empty((len(images), 3, crop, crop), dtype=torch.uint8, device=device)
        by_size: dict[tuple, list[int]] = {}
        for i, image in enumerate(images):
            if batch.ready[i]:  # cropped by the worker (its batch was over the budget)
                out[i] = image.permute(2, 0, 1)
            else:
                by_size.setdefault(tuple(image.shape), []).append(i)
        for (height, width, _), rows in by_size.items():
            out_width, out_height, top, left = self.layout(width, height)
            same_size = torch.stack([images[i] for i in rows]).permute(0, 3, 1, 2)
            out[rows] = resize_crop_like_pil(
                same_size, (out_height, out_width), Image.BICUBIC, (top, left, crop, crop)
            )
        batch.release()  # every image is copied out: its worker may reuse the buffer
        return out

    def __repr__(self) -> str:
        return super().__repr__() + " exactly, on the device"


def _pil_resize(image: np.ndarray, out_length: int, axis: int) -> np.ndarray:
    """PIL's bicubic pass along ``axis`` (0: rows, 1: columns) to ``out_length``. (Not a
    ``box`` for just the crop: PIL holds a box in float32, which moves the weights.)"""
    if image.shape[axis] == out_length:
        return image
    height, width = image.shape[:2]
    size = (width, out_length) if axis == 0 else (out_length, height)
    return np.asarray(Image.fromarray(np.ascontiguousarray(image)).resize(size, Image.BICUBIC))


def _second_pass(image: np.ndarray, size: tuple[int, int]) -> torch.Tensor:
    """uint8 [h, w, 3] -> uint8 [3, *size] by torchvision's bicubic kernel (one axis changes)."""
    chw = torch.from_numpy(image).permute(2, 0, 1)  # [3, h, w] view, HWC storage
    return torch_resize_like_pil(chw, size, Image.BICUBIC)


def _place(part: np.ndarray, band: range, length: int, axis: int) -> np.ndarray:
    """``part`` (the pass's outputs over ``band`` of ``axis``) in a zero array of ``length``
    along ``axis``: the second pass reads only the band for the crop's pixels."""
    shape = list(part.shape)
    shape[axis] = length
    whole = np.zeros(shape, np.uint8)
    if axis == 0:
        whole[band.start : band.stop] = part
    else:
        whole[:, band.start : band.stop] = part
    return whole


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
