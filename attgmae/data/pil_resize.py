"""PIL's resizes on uint8 arrays, fast: torchvision's uint8 antialiased kernels in PIL's order.

PIL resizes in two one-axis passes, each rounded to uint8; torchvision's uint8 kernel is PIL's
filter with 16-bit instead of 22-bit fixed-point weights, so one pass agrees with PIL's within 1
grey level. Two things decide how close a whole resize comes:

- The order of the passes. PIL 13 runs the vertical pass first when the height shrinks by more
  than twice as many pixels as the width (``ImagingResampleInner``; earlier Pillows always run
  the horizontal pass first), torchvision always horizontal first. In the other order 20% of
  the pixels of a 333 x 500 portrait differ by 1 from PIL's bilinear (10 grey levels for a tall
  image's bicubic): ``torch_resize_like_pil`` runs torchvision's passes in PIL's order.
- The first pass's rounding. A 1-level difference of the first pass can grow through the
  second (bicubic's negative lobes) to 2, about 1 value in 4 million. ``EvalPixels``
  (``attgmae.eval.transforms``), which promises 1, runs the first pass with PIL itself.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
from PIL import Image
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as F2

# PIL filter -> torchvision's mode, and the filter's support (Resample.c's filters)
_MODES = {Image.BILINEAR: InterpolationMode.BILINEAR, Image.BICUBIC: InterpolationMode.BICUBIC}
SUPPORT = {Image.BILINEAR: 1.0, Image.BICUBIC: 2.0}


def _shrinks_height_first(width: int, height: int, out_width: int, out_height: int) -> bool:
    """PIL 13's rule for running the vertical pass first (``ImagingResampleInner``)."""
    return height - out_height > 0 and height - out_height > (width - out_width) * 2


@functools.lru_cache(maxsize=1)
def _pil_has_height_first_rule() -> bool:
    """Whether the installed PIL follows that rule: asked of PIL itself, on a 40 x 200 noise
    image shrunk to 30 x 50 (the rule says vertical first; the two orders round differently)."""
    noise = np.random.default_rng(0).integers(0, 256, (200, 40, 3), dtype=np.uint8)
    image = Image.fromarray(noise)
    whole = np.asarray(image.resize((30, 50), Image.BILINEAR))
    vertical = Image.fromarray(np.asarray(image.resize((40, 50), Image.BILINEAR)).copy())
    return bool(np.array_equal(whole, np.asarray(vertical.resize((30, 50), Image.BILINEAR))))


def pil_resizes_height_first(width: int, height: int, out_width: int, out_height: int) -> bool:
    """Whether PIL's resize of a ``width`` x ``height`` image to ``out_width`` x ``out_height``
    runs its vertical pass first."""
    rule = _shrinks_height_first(width, height, out_width, out_height)
    return rule and _pil_has_height_first_rule()


def torch_resize_like_pil(chw: torch.Tensor, size: tuple[int, int], resample) -> torch.Tensor:
    """uint8 [3, H, W] -> uint8 [3, *size] (height, width): PIL's ``resize`` filter
    (``resample``: Image.BILINEAR or BICUBIC) by torchvision's uint8 kernel, passes in PIL's
    order. Memory format follows the input's."""
    height, width = chw.shape[-2:]
    out_height, out_width = size
    mode = _MODES[resample]
    if pil_resizes_height_first(width, height, out_width, out_height):
        chw = F2.resize(chw, [out_height, width], interpolation=mode, antialias=True)
    return F2.resize(chw, [out_height, out_width], interpolation=mode, antialias=True)


def support_band(length: int, out_length: int, start: int, count: int, resample) -> range:
    """The input indices that outputs ``start`` .. ``start + count`` of a one-axis resize from
    ``length`` to ``out_length`` read (PIL's ``precompute_coeffs`` bounds, one index wider
    each side against float rounding), clipped to the image."""
    scale = length / out_length
    support = SUPPORT[resample] * max(scale, 1.0)
    first = (start + 0.5) * scale - support
    last = (start + count - 0.5) * scale + support
    return range(max(int(first + 0.5) - 1, 0), min(int(last + 0.5) + 1, length))
