"""Procedural photo-like images: what decoder tests and speed benchmarks need from ImageNet.

JPEG decoding and resizing costs grow with the detail a file holds, and smooth synthetic scenes
decode 13-50% faster than photos, flattering every figure. These images have a photo's
statistics instead: a luminance field with a 1/f^0.8 amplitude spectrum (natural images are
close to 1/f), smoother colour fields, a few flat-coloured shapes with hard edges, fine texture
and sensor grain. Saved at JPEG quality 90 at ImageNet's typical 400 x 390 size they weigh about
106 KB (ImageNet train: ~110 KB per image), checked by ``benchmarks/decode.py``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

PHOTO_SIZE = (400, 390)  # width, height
JPEG_QUALITY = 90


def _spectral_field(rng: np.random.Generator, height: int, width: int, alpha: float):
    """Zero-mean, unit-std float32 field [H, W] whose amplitude spectrum falls as 1/f^alpha."""
    fy = np.fft.fftfreq(height)[:, None]
    fx = np.fft.rfftfreq(width)[None, :]
    freq = np.sqrt(fx**2 + fy**2)
    freq[0, 0] = 1.0
    spectrum = (rng.normal(size=freq.shape) + 1j * rng.normal(size=freq.shape)) / freq**alpha
    spectrum[0, 0] = 0
    field = np.fft.irfft2(spectrum, s=(height, width))
    return (field / field.std()).astype(np.float32)


def photo_like_image(rng: np.random.Generator, size=PHOTO_SIZE) -> np.ndarray:
    """uint8 RGB [H, W, 3] with photo-like detail; ``size`` is (width, height)."""
    width, height = size
    luminance = _spectral_field(rng, height, width, 0.8)
    red_shift, blue_shift = (_spectral_field(rng, height, width, 1.6) for _ in range(2))
    base = rng.uniform(70, 180, 3)
    pixels = np.stack(
        [
            base[0] + 45 * luminance + 25 * red_shift,
            base[1] + 45 * luminance,
            base[2] + 45 * luminance + 25 * blue_shift,
        ],
        axis=-1,
    )
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(2, 6))):  # objects: flat colours, hard edges
        color = tuple(int(c) for c in rng.integers(0, 256, 3))
        if rng.random() < 0.5:
            x0, y0 = int(rng.integers(0, width)), int(rng.integers(0, height))
            box = [x0, y0, x0 + int(rng.integers(20, width // 2)),
                   y0 + int(rng.integers(20, height // 2))]  # fmt: skip
            draw.ellipse(box, fill=color)
        else:
            corners = [
                (int(rng.integers(0, width)), int(rng.integers(0, height))) for _ in range(3)
            ]
            draw.polygon(corners, fill=color)
    pixels = np.asarray(image, dtype=np.float32)
    pixels = pixels + 30 * _spectral_field(rng, height, width, 0.8)[..., None]  # texture
    pixels = pixels + rng.normal(0, 7, (height, width, 3))  # grain
    return np.clip(pixels, 0, 255).astype(np.uint8)


def write_photo_jpegs(folder, count: int, seed: int = 0, size=PHOTO_SIZE, classes: int = 1):
    """``count`` photo-like JPEGs (quality 90) in ``classes`` class folders under ``folder``;
    -> their paths."""
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        path = Path(folder) / f"n{i % classes:08d}" / f"photo_{i:06d}.JPEG"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(photo_like_image(rng, size)).save(path, quality=JPEG_QUALITY)
        paths.append(path)
    return paths
