"""Joint image + target transforms of the dense tasks, as MultiMAE's fine-tuning runs them.

Semantic segmentation (MultiMAE ``utils/datasets_semseg.py::simple_transform``, its only
augmentation, ``aug_name: simple``), on an image uint8 [H, W, 3] and its label map [H, W]
(training ids: 0..C-1, 255 ignored):

- training: horizontal flip (p 0.5); resize so the longer side is ``input_size`` times a
  large-scale-jitter factor uniform in [0.1, 2.0]; colour jitter (p 0.5: brightness 0.4,
  contrast 0.4, saturation 0.2, hue 0.1, in random order); pad the bottom and right up to
  ``input_size`` (image grey 128, label ignored); a uniform random ``input_size`` square crop.
- evaluation: resize so the longer side is ``input_size``; pad the bottom and right to an
  ``input_size`` square the same way. Scores are computed at that resolution, padding ignored.
  (For sliding-window inference, ``eval_fit="shortest"``: resize so the shorter side is
  ``input_size``, no padding; the windows then cover the longer side.)

MultiMAE resizes twice (longest side, then the jitter factor); we resize once by the product
(one interpolation instead of two). Images: bilinear with antialiasing (MultiMAE's albumentations
uses OpenCV's bilinear without it: they differ only when shrinking). Labels: nearest neighbour
on pixel centres (``NEAREST_EXACT``), aligned with the image's bilinear grid.

Taskonomy (MultiMAE ``utils/taskonomy/transforms.py``): no augmentation; the image is resized to
``input_size`` bilinearly, every target and the valid mask by nearest neighbour (PIL's NEAREST,
which samples pixel centres), so that invalid values never blend into valid ones.

Images leave as uint8 [3, S, S]: normalization (``attgmae.data.transforms.normalize_images``)
happens batched on the device, which also turns the grey padding into MultiMAE's padded input.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as TF

IGNORE_INDEX = 255
PAD_PIXEL = 128  # MultiMAE's image padding value, before normalization
# MultiMAE's colour jitter (its comment: from MoCo-v3 / DINO): factor ranges, applied with p 0.5
JITTER_BRIGHTNESS, JITTER_CONTRAST, JITTER_SATURATION, JITTER_HUE = 0.4, 0.4, 0.2, 0.1


def resize_image(image: torch.Tensor, size) -> torch.Tensor:
    """uint8 [3, H, W] -> uint8 [3, h, w], bilinear with antialiasing."""
    return TF.resize(image, list(size), interpolation=InterpolationMode.BILINEAR, antialias=True)


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


def pad_bottom_right(image: torch.Tensor, label: torch.Tensor, size: int):
    """Pad uint8 [3, h, w] with grey and [1, h, w] labels with IGNORE_INDEX to at least
    size x size (MultiMAE pads at the top-left position: the image stays at the corner)."""
    pad_h, pad_w = max(size - image.shape[-2], 0), max(size - image.shape[-1], 0)
    if pad_h or pad_w:
        padding = [0, 0, pad_w, pad_h]  # left, top, right, bottom
        image = TF.pad(image, padding, fill=PAD_PIXEL)
        label = TF.pad(label, padding, fill=IGNORE_INDEX)
    return image, label


def _longest_side_size(height: int, width: int, longest: float) -> tuple[int, int]:
    scale = longest / max(height, width)
    return max(1, round(height * scale)), max(1, round(width * scale))


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
        img = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)  # [3, H, W]
        lab = torch.from_numpy(np.ascontiguousarray(label, dtype=np.uint8))[None]  # [1, H, W]
        height, width = lab.shape[-2:]
        if not self.train and self.eval_fit == "shortest":
            scale = size / min(height, width)
            out_size = (max(size, round(height * scale)), max(size, round(width * scale)))
            return resize_image(img, out_size).contiguous(), resize_nearest(lab, out_size)[0].long()
        if not self.train:
            out_size = _longest_side_size(height, width, size)
            img, lab = pad_bottom_right(
                resize_image(img, out_size), resize_nearest(lab, out_size), size
            )
            return img.contiguous(), lab[0].long()
        if rng.random() < self.flip_p:
            img, lab = img.flip(-1), lab.flip(-1)
        jitter_scale = rng.uniform(*self.scale_range)
        out_size = _longest_side_size(height, width, size * jitter_scale)
        img, lab = resize_image(img, out_size), resize_nearest(lab, out_size)
        if rng.random() < self.jitter_p:
            img = color_jitter(img, rng)
        img, lab = pad_bottom_right(img, lab, size)
        top = int(rng.integers(0, img.shape[-2] - size + 1))
        left = int(rng.integers(0, img.shape[-1] - size + 1))
        img = img[:, top : top + size, left : left + size]
        lab = lab[:, top : top + size, left : left + size]
        return img.contiguous(), lab[0].long()
