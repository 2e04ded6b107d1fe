"""PIL's resize bit for bit on any device, as matrix products: the resize for the GPU side.

PIL (``Resample.c``) resizes a uint8 image in two one-axis passes. A pass's output pixel is
``clip((2**21 + sum_k w_k * p_k) >> 22)`` over the input pixels ``p_k`` its filter reaches, the
weights ``w_k`` being the filter's values normalized to sum 1 and rounded to 22-bit integers
(``pil_weights`` computes them as PIL does, in float64 in PIL's order of operations). Held as
integers in float64 a pass is one matrix product that is exact whatever the summation order
(products < 2**31, sums < 2**41, well inside float64's 2**53), so the GPU's float64 GEMM gives
PIL's pixels exactly; the passes run in PIL's order (``pil_resize.pil_resizes_height_first``).

Only the output rows and columns a crop keeps need computing (each output pixel reads only its
own weights): ``resize_crop_like_pil`` gives Resize + CenterCrop without the discarded border.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
from PIL import Image

from attgmae.data.pil_resize import SUPPORT, pil_resizes_height_first

PRECISION_BITS = 22  # PIL's: 32 bits - 8 for the result - 2 for the overflow of negative lobes
# Device types that run these float64 products fast (a CPU core takes ~25 ms for one 400 x 390
# image, 15x its uint8 kernel): where the resize moves to the device by default.
FAST_DEVICE_TYPES = ("cuda",)
# float64 working memory per resize call: a batch of same-size large photos is resized a few
# images at a time (256 phone photos of 12 MP would be 75 GB at once)
CHUNK_BYTES = 1 << 30


def fast_on(device) -> bool:
    """Whether ``device`` runs the exact resize fast enough to take it off the CPU workers."""
    return torch.device(device).type in FAST_DEVICE_TYPES


def _bilinear(x: np.ndarray) -> np.ndarray:
    x = np.abs(x)
    return np.where(x < 1.0, 1.0 - x, 0.0)


def _bicubic(x: np.ndarray) -> np.ndarray:
    """PIL's bicubic (a = -0.5), its operations in PIL's order (the rounding is PIL's)."""
    a = -0.5
    x = np.abs(x)
    near = ((a + 2.0) * x - (a + 3.0)) * x * x + 1
    far = (((x - 5) * x + 8) * x - 4) * a
    return np.where(x < 1.0, near, np.where(x < 2.0, far, 0.0))


_FILTERS = {Image.BILINEAR: _bilinear, Image.BICUBIC: _bicubic}


# Weights are kept for the most recent sizes (a few dominate ImageNet; one is ~1 MB and 0.3 ms
# to make): a bounded memory, on the host and on the device.
@functools.lru_cache(maxsize=128)
def pil_weights(length: int, out_length: int, resample) -> np.ndarray:
    """float64 [out_length, length]: PIL's integer weights (``precompute_coeffs`` and
    ``normalize_coeffs_8bpc``) of a one-axis resize from ``length`` to ``out_length``; row o
    holds output o's weights at the input indices it reads, zeros elsewhere. Read-only."""
    scale = length / out_length
    filter_scale = max(scale, 1.0)
    support = SUPPORT[resample] * filter_scale
    taps = int(np.ceil(support)) * 2 + 1
    centers = (np.arange(out_length) + 0.5) * scale
    # C's (int) truncates toward zero; PIL clamps the window to the image afterwards
    first = np.maximum(np.trunc(centers - support + 0.5).astype(np.int64), 0)
    stop = np.minimum(np.trunc(centers + support + 0.5).astype(np.int64), length)
    index = first[:, None] + np.arange(taps)[None, :]  # [out, taps]
    inside = index < stop[:, None]
    values = _FILTERS[resample]((index - centers[:, None] + 0.5) * (1.0 / filter_scale))
    values = np.where(inside, values, 0.0)
    totals = np.cumsum(values, axis=1)[:, -1:]  # in order, as PIL's loop (zeros add nothing)
    values = np.divide(values, totals, out=values.copy(), where=totals != 0.0)
    scaled = values * (1 << PRECISION_BITS)
    integers = np.trunc(np.where(values < 0, scaled - 0.5, scaled + 0.5))
    weights = np.zeros((out_length, length))
    rows = np.broadcast_to(np.arange(out_length)[:, None], index.shape)
    weights[rows[inside], index[inside]] = integers[inside]
    weights.flags.writeable = False
    return weights


def _device_weights(length, out_length, resample, start, count, device) -> torch.Tensor:
    """``pil_weights`` rows ``start .. start + count`` as float64 on ``device``, cached."""
    return _cached_weights(length, out_length, resample, start, count, str(device))


@functools.lru_cache(maxsize=128)
def _cached_weights(length, out_length, resample, start, count, device: str) -> torch.Tensor:
    rows = pil_weights(length, out_length, resample)[start : start + count]
    return torch.tensor(rows, dtype=torch.float64, device=device)


def _round_like_pil(sums: torch.Tensor) -> torch.Tensor:
    """PIL's ``clip8``: (2**21 + sum) >> 22, clipped to 0..255 (exact in float64)."""
    half = float(1 << (PRECISION_BITS - 1))
    return sums.add_(half).div_(float(1 << PRECISION_BITS)).floor_().clamp_(0, 255)


def resize_crop_like_pil(
    images: torch.Tensor, size: tuple[int, int], resample, box: tuple[int, int, int, int] | None
) -> torch.Tensor:
    """uint8 [n, 3, H, W] (any device) -> uint8 [n, 3, h, w]: PIL's ``resize`` to ``size``
    (height, width) with ``resample`` (Image.BILINEAR or BICUBIC), then the crop ``box`` (top,
    left, h, w) of the result (None: the whole image), exactly PIL's pixels. A few images at a
    time when the batch's float64 copy would pass ``CHUNK_BYTES``."""
    per_image = 8 * images[0].numel() if len(images) else 1
    step = max(1, CHUNK_BYTES // per_image)
    if len(images) > step:
        parts = [_resize_crop(images[i : i + step], size, resample, box)
                 for i in range(0, len(images), step)]  # fmt: skip
        return torch.cat(parts)
    return _resize_crop(images, size, resample, box)


def _resize_crop(images, size, resample, box) -> torch.Tensor:
    height, width = images.shape[-2:]
    out_height, out_width = size
    top, left, crop_height, crop_width = box or (0, 0, out_height, out_width)
    device = images.device
    image = images.to(torch.float64)

    def rows(image):  # the vertical pass, to the crop's rows
        if out_height == height and crop_height == height:
            return image
        weights = _device_weights(height, out_height, resample, top, crop_height, device)
        return _round_like_pil(torch.matmul(weights, image))

    def columns(image):  # the horizontal pass, to the crop's columns
        if out_width == width and crop_width == width:
            return image
        weights = _device_weights(width, out_width, resample, left, crop_width, device)
        return _round_like_pil(torch.matmul(image, weights.T))

    if pil_resizes_height_first(width, height, out_width, out_height):
        image = columns(rows(image))
    else:
        image = rows(columns(image))
    return image.to(torch.uint8)


def resize_like_pil(images: torch.Tensor, size: tuple[int, int], resample) -> torch.Tensor:
    """``resize_crop_like_pil`` without a crop."""
    return resize_crop_like_pil(images, size, resample, None)
