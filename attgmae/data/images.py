"""The one image decoder (listing an image set: ``attgmae.core.listing``).

Every stage reads pixels through ``decode_rgb``, so stage 1, stage 2 and evaluation see the same
image, and the same image as the original DINO, TokenCut and MAE code, which all read through
torchvision's ImageFolder loader, ``PIL.Image.open(path).convert("RGB")``. In particular the EXIF
orientation tag is NOT applied (a photo tagged "rotate 90" is used as stored, as the originals
do); CMYK, grayscale and palette images get PIL's RGB conversion. One deliberate difference:
16-bit grayscale is scaled to 8 bit, where PIL's conversion would clip it to white.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile

from attgmae.core.errors import InputError

# Refuse decompression bombs well above ImageNet sizes, but allow large photos (~180 MP).
Image.MAX_IMAGE_PIXELS = 180_000_000
# A truncated JPEG is an error, not a silently grey-padded image.
ImageFile.LOAD_TRUNCATED_IMAGES = False


class ImageDecodeError(InputError):
    """An image that cannot be decoded; ``reason`` says why in a few words.

    ``ImageDecodeError(message)`` with one argument also works: a DataLoader worker re-raises
    an exception in the main process by calling its type with the formatted message.
    """

    def __init__(self, path, reason: str | None = None):
        super().__init__(str(path) if reason is None else f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason or ""


def decode_rgb(path) -> np.ndarray:
    """Decode ``path`` to uint8 RGB ``[H, W, 3]`` as ``Image.open(path).convert("RGB")`` would.

    Raises ImageDecodeError (never another exception) for unreadable files.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as err:
        raise ImageDecodeError(path, f"cannot read file ({err.strerror})") from None
    if size == 0:
        raise ImageDecodeError(path, "empty file (0 bytes)")
    return _decode(path, path)


def decode_rgb_bytes(data: bytes, name: str) -> np.ndarray:
    """``decode_rgb`` of an image file's bytes (a tar shard's sample); ``name`` (the shard and
    key) names it in errors."""
    if not data:
        raise ImageDecodeError(name, "empty file (0 bytes)")
    return _decode(io.BytesIO(data), name)


def _decode(source, path) -> np.ndarray:
    """The one decode: ``source`` (a path or a binary file) as PIL's ``convert("RGB")``,
    16-bit grayscale scaled; ImageDecodeError naming ``path``."""
    try:
        with Image.open(source) as img:
            img.load()
            if img.mode == "I;16" or img.mode == "I":
                # 16-bit grayscale: scale to 8 bit before RGB conversion (PIL would clip).
                arr = np.asarray(img, dtype=np.float32)
                arr = np.clip(arr / 257.0, 0, 255).astype(np.uint8)
                return np.ascontiguousarray(np.repeat(arr[:, :, None], 3, axis=2))
            return np.array(img if img.mode == "RGB" else img.convert("RGB"), dtype=np.uint8)
    except Image.DecompressionBombError as err:
        raise ImageDecodeError(path, f"image too large ({err})") from None
    except (OSError, SyntaxError, ValueError) as err:
        reason = str(err) or type(err).__name__
        if "truncated" in reason.lower():
            reason = f"truncated image ({reason})"
        elif "cannot identify image file" in reason:
            reason = "not an image (unrecognized format)"
        raise ImageDecodeError(path, reason) from None
    except Exception as err:  # noqa: BLE001 - a malformed file may trip any decoder error type
        raise ImageDecodeError(path, f"cannot decode ({type(err).__name__}: {err})") from None
