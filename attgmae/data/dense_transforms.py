"""Joint image + target transforms of the dense tasks, as MultiMAE's fine-tuning runs them.

Semantic segmentation (MultiMAE ``utils/datasets_semseg.py::simple_transform``, its only
augmentation, ``aug_name: simple``, built from albumentations), on an image uint8 [H, W, 3] and
its label map [H, W] (training ids: 0..C-1, 255 ignored), in MultiMAE's order:

- training: horizontal flip (p 0.5); resize so the longer side is ``input_size``; colour jitter
  (p 0.5: brightness 0.4, contrast 0.4, saturation 0.2, hue 0.1, in random order); scale by a
  large-scale-jitter factor uniform in [0.1, 2.0] (sizes truncated, as albumentations'
  ``RandomScale``); pad the bottom and right up to ``input_size`` (image grey 128, label
  ignored); a uniform random ``input_size`` square crop.
- evaluation: resize so the longer side is ``input_size`` (sizes rounded, as albumentations'
  ``LongestMaxSize``); pad the bottom and right to an ``input_size`` square the same way. Scores
  are computed at that resolution, padding ignored. (For sliding-window inference,
  ``eval_fit="shortest"``: resize so the shorter side is ``input_size``, no padding; the
  windows then cover the longer side.)

Resizing is albumentations': OpenCV's bilinear for images (no antialiasing) and OpenCV's nearest
for labels, so evaluation sees the very pixels and labels MultiMAE's does. The colour jitter is
torchvision's (albumentations' differs by rounding).

Taskonomy (MultiMAE ``utils/taskonomy/transforms.py``, torchvision's ``Resize`` on PIL images):
no augmentation; the image is resized to ``input_size`` bilinearly (``resize_image``: PIL's
antialiased bilinear), every target and the valid mask by nearest neighbour (``resize_nearest``:
PIL's NEAREST, which samples pixel centres), so invalid values never blend into valid ones.

Images leave as uint8 [3, S, S]: normalization (``attgmae.data.transforms.normalize_images``)
happens batched on the device, which also turns the grey padding into MultiMAE's padded input.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch
from PIL import Image
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from attgmae.data.pil_resize import torch_resize_like_pil

IGNORE_INDEX = 255
PAD_PIXEL = 128  # MultiMAE's image padding value, before normalization
# MultiMAE's colour jitter (its comment: from MoCo-v3 / DINO): factor ranges, applied with p 0.5
JITTER_BRIGHTNESS, JITTER_CONTRAST, JITTER_SATURATION, JITTER_HUE = 0.4, 0.4, 0.2, 0.1


def resize_image(image: torch.Tensor, size) -> torch.Tensor:
    """uint8 [3, H, W] -> uint8 [3, h, w], bilinear with antialiasing (PIL's bilinear)."""
    return torch_resize_like_pil(image, tuple(size), Image.BILINEAR)


def resize_nearest(target: torch.Tensor, size) -> torch.Tensor:
    """[C, H, W] (labels, masks, continuous targets) -> [C, h, w], nearest pixel centre."""
    dtype = target.dtype
    if dtype == torch.bool:
        target = target.to(torch.uint8)
    out = TF.resize(target, list(size), interpolation=InterpolationMode.NEAREST_EXACT)
    return out.to(dtype)


def color_jitter(image: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """uint8 [3, H, W] with brightness, contrast, saturation and hue changed in random order."""
    factors = {
        "brightness": rng.uniform(1 - JITTER_BRIGHTNESS, 1 + JITTER_BRIGHTNESS),
        "contrast": rng.uniform(1 - JITTER_CONTRAST, 1 + JITTER_CONTRAST),
        "saturation": rng.uniform(1 - JITTER_SATURATION, 1 + JITTER_SATURATION),
        "hue": rng.uniform(-JITTER_HUE, JITTER_HUE),
    }
    adjust = {
        "brightness": TF.adjust_brightness,
        "contrast": TF.adjust_contrast,
        "saturation": TF.adjust_saturation,
        "hue": TF.adjust_hue,
    }
    for name in rng.permutation(list(adjust)):
        image = adjust[name](image, float(factors[name]))
    return image


def cv2_resize(array: np.ndarray, size, interpolation: int) -> np.ndarray:
    """[H, W] or [H, W, 3] -> (h, w) sized, as albumentations resizes (OpenCV)."""
    height, width = size
    if array.shape[:2] == (height, width):
        return array
    return cv2.resize(array, (width, height), interpolation=interpolation)


def resize_pair(image: np.ndarray, label: np.ndarray, size) -> tuple[np.ndarray, np.ndarray]:
    """Image bilinear, label nearest (OpenCV's, as MultiMAE's albumentations)."""
    return cv2_resize(image, size, cv2.INTER_LINEAR), cv2_resize(label, size, cv2.INTER_NEAREST)


def pad_bottom_right(image: np.ndarray, label: np.ndarray, size: int):
    """Pad uint8 [h, w, 3] with grey and [h, w] labels with IGNORE_INDEX to at least
    size x size (MultiMAE pads at the top-left position: the image stays at the corner)."""
    pad_h, pad_w = max(size - image.shape[0], 0), max(size - image.shape[1], 0)
    if pad_h or pad_w:
        image = np.pad(image, ((0, pad_h), (0, pad_w), (0, 0)), constant_values=PAD_PIXEL)
        label = np.pad(label, ((0, pad_h), (0, pad_w)), constant_values=IGNORE_INDEX)
    return image, label


def _longest_side_size(height: int, width: int, longest: int) -> tuple[int, int]:
    """albumentations' LongestMaxSize: both sides scaled, rounded half to even."""
    scale = longest / max(height, width)
    return max(1, round(height * scale)), max(1, round(width * scale))


def _as_tensors(image: np.ndarray, label: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 [H, W, 3], [H, W] -> uint8 [3, H, W], int64 [H, W]."""
    image = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).contiguous()
    return image, torch.from_numpy(np.ascontiguousarray(label)).long()


@dataclass(frozen=True)
class SegmentationTransform:
    """MultiMAE's ``simple`` segmentation transform (module docstring); ``train`` chooses the
    augmented or the evaluation version. Pure: all randomness comes from ``rng``."""

    input_size: int = 512
    train: bool = True
    scale_range: tuple[float, float] = (0.1, 2.0)  # large-scale jitter
    flip_p: float = 0.5
    jitter_p: float = 0.5
    eval_fit: str = "longest"  # evaluation: "longest" side to input_size + pad, or "shortest"

    def __call__(self, image: np.ndarray, label: np.ndarray, rng: np.random.Generator):
        """image uint8 [H, W, 3], label uint8 [H, W] (training ids, 255 ignored) ->
        (uint8 [3, S, S], int64 [S, S])."""
        size = self.input_size
        image = np.ascontiguousarray(image)
        label = np.ascontiguousarray(label, dtype=np.uint8)
        height, width = label.shape
        if not self.train and self.eval_fit == "shortest":
            scale = size / min(height, width)
            out_size = (max(size, round(height * scale)), max(size, round(width * scale)))
            return _as_tensors(*resize_pair(image, label, out_size))
        if self.train and rng.random() < self.flip_p:
            image, label = image[:, ::-1].copy(), label[:, ::-1].copy()
        image, label = resize_pair(image, label, _longest_side_size(height, width, size))
        if not self.train:
            return _as_tensors(*pad_bottom_right(image, label, size))
        if rng.random() < self.jitter_p:
            jittered = color_jitter(torch.from_numpy(image.copy()).permute(2, 0, 1), rng)
            image = jittered.permute(1, 2, 0).numpy()
        scale = rng.uniform(*self.scale_range)
        height, width = label.shape
        scaled = (max(1, int(height * scale)), max(1, int(width * scale)))
        image, label = resize_pair(image, label, scaled)
        image, label = pad_bottom_right(image, label, size)
        top = int(rng.integers(0, image.shape[0] - size + 1))
        left = int(rng.integers(0, image.shape[1] - size + 1))
        crop = (slice(top, top + size), slice(left, left + size))
        return _as_tensors(image[crop], label[crop])
