"""Joint image + guidance-map transforms: the map gets exactly the image's geometry.

A guidance map is a ``G x G`` grid covering the whole original image. The image is cropped by a
box and resized to ``size x size`` (then maybe flipped); the same box, in the original image's
relative coordinates, is cut from the map and resampled to the model's patch grid, flipped with
it. Per sample (in the DataLoader workers) we only draw the box and the flip and crop the image;
the maps of a whole batch are cropped at once by ``crop_resize_maps`` (one ``grid_sample``, on
the training device).

Boxes are ``(x0, y0, x1, y1)`` as fractions of the original width and height.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from attgmae.core.constants import IMAGENET_MEAN, IMAGENET_STD
from attgmae.data.pil_resize import torch_resize_like_pil

AUGMENTATIONS = ("rrc", "resize")


def sample_rrc_box(
    rng: np.random.Generator,
    height: int,
    width: int,
    scale=(0.2, 1.0),
    ratio=(3.0 / 4.0, 4.0 / 3.0),
) -> tuple[int, int, int, int]:
    """A RandomResizedCrop box ``(top, left, h, w)`` in pixels, drawn as torchvision does.

    Up to 10 tries of an area fraction uniform in ``scale`` and a log-uniform aspect ratio in
    ``ratio``; if none fits, the largest centered crop with the aspect ratio clamped to ``ratio``.
    """
    area = height * width
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(10):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(log_lo, log_hi))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return top, left, h, w
    aspect_in = width / height
    if aspect_in < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif aspect_in > max(ratio):
        w, h = int(round(height * max(ratio))), height
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


class JointTransform:
    """Draws the crop box and flip for one image and applies them to the image.

    ``aug='rrc'``: RandomResizedCrop(size, scale 0.2-1.0, bicubic) + horizontal flip (the MAE
    recipe); ``aug='resize'``: the whole image resized to size x size + flip (the paper's A.2).
    """

    def __init__(self, size: int = 224, aug: str = "rrc", scale=(0.2, 1.0), flip_p: float = 0.5):
        if aug not in AUGMENTATIONS:
            raise ValueError(f"aug must be one of {AUGMENTATIONS}, got {aug!r}")
        self.size = size
        self.aug = aug
        self.scale = scale
        self.flip_p = flip_p

    def __call__(self, img: np.ndarray, rng: np.random.Generator):
        """img uint8 [H, W, 3] -> (image uint8 tensor [3, S, S], box float32 [4], flip bool)."""
        height, width = img.shape[:2]
        if self.aug == "rrc":
            top, left, h, w = sample_rrc_box(rng, height, width, self.scale)
        else:
            top, left, h, w = 0, 0, height, width
        flip = bool(rng.random() < self.flip_p)
        out = crop_resize_image(img, (top, left, h, w), self.size, flip)
        box = np.array(
            [left / width, top / height, (left + w) / width, (top + h) / height], dtype=np.float32
        )
        return out, box, flip


def crop_resize_image(img: np.ndarray, box_px, size: int, flip: bool) -> torch.Tensor:
    """Crop ``box_px = (top, left, h, w)`` from uint8 [H, W, 3], bicubic-resize to size x size
    with antialiasing, flip horizontally if asked -> uint8 [3, S, S].

    torchvision's uint8 tensor kernel in PIL's pass order (``attgmae.data.pil_resize``):
    within 1-2 grey levels of PIL's bicubic (the MAE recipe's pixels; mean difference ~0.005)
    and several times faster, which matters because the loader must keep a GPU fed from a few
    CPU cores.
    """
    top, left, h, w = box_px
    chw = torch.from_numpy(img).permute(2, 0, 1)  # [3, H, W] view, no copy
    out = torch_resize_like_pil(chw[:, top : top + h, left : left + w], (size, size), Image.BICUBIC)
    if flip:
        out = out.flip(-1)
    return out.contiguous()


def crop_resize_maps(
    maps: torch.Tensor, boxes: torch.Tensor, flips: torch.Tensor, out_grid: int
) -> torch.Tensor:
    """Cut each image's crop box from its whole-image map and resample it to the patch grid.

    maps [B, G, G] (cell (r, c) covers rows r/G..(r+1)/G and columns c/G..(c+1)/G of the image),
    boxes [B, 4] (x0, y0, x1, y1) relative, flips [B] bool -> float32 [B, out_grid, out_grid].
    Output cell j samples the map bilinearly at its center, x0 + (j + 0.5) / out * (x1 - x0)
    (mirrored when flipped); values stay within the map's range, so [0, 1] stays [0, 1].
    """
    maps = maps.float()
    # non_blocking: the loader's pinned boxes and flips queue behind the step (a blocking copy
    # would wait for every kernel before it, once per training step)
    boxes = boxes.to(device=maps.device, non_blocking=True).float()
    flips = flips.to(device=maps.device, non_blocking=True).bool()
    centers = (torch.arange(out_grid, device=maps.device, dtype=torch.float32) + 0.5) / out_grid
    x0, y0, x1, y1 = boxes.unbind(dim=1)  # [B] each
    xs = x0[:, None] + centers[None, :] * (x1 - x0)[:, None]  # [B, out]
    xs = torch.where(flips[:, None], xs.flip(dims=[1]), xs)  # flipped image: columns reversed
    ys = y0[:, None] + centers[None, :] * (y1 - y0)[:, None]  # [B, out]
    # grid_sample with align_corners=False: -1 / +1 are the outer edges of the map.
    grid = torch.stack(
        [
            (2 * xs - 1)[:, None, :].expand(-1, out_grid, -1),
            (2 * ys - 1)[:, :, None].expand(-1, -1, out_grid),
        ],
        dim=-1,
    )  # [B, out, out, 2] as (x, y)
    out = F.grid_sample(
        maps[:, None], grid, mode="bilinear", padding_mode="border", align_corners=False
    )
    return out[:, 0]


@functools.lru_cache(maxsize=8)
def imagenet_stats(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, std) float32 [1, 3, 1, 1] on ``device``, made once per device: a tensor built from
    Python numbers on a GPU is a blocking host-to-device copy, per batch."""
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=torch.float32).view(1, 3, 1, 1)
    return mean.to(device), std.to(device)


def normalize_images(images: torch.Tensor) -> torch.Tensor:
    """uint8 [B, 3, S, S] -> float32 ImageNet-normalized (done batched on the device)."""
    mean, std = imagenet_stats(images.device)
    return (images.float() / 255.0 - mean) / std


def denormalize_images(images: torch.Tensor) -> torch.Tensor:
    """Inverse of ``normalize_images`` to float [0, 1] (for visualization)."""
    mean, std = imagenet_stats(images.device)
    return (images.float() * std + mean).clamp(0, 1)
