"""The one image decoder (listing an image set: ``attgmae.core.listing``).

Every stage reads pixels through ``decode_rgb``, so stage 1, stage 2 and evaluation see the same
image, and the same image as the original DINO, TokenCut and MAE code, which all read through
torchvision's ImageFolder loader, ``PIL.Image.open(path).convert("RGB")``. In particular the EXIF
orientation tag is NOT applied (a photo tagged "rotate 90" is used as stored, as the originals
do); CMYK, grayscale and palette images get PIL's RGB conversion. One deliberate difference:
high-bit-depth grayscale (16-bit of any byte order, 32-bit integer or float) is scaled to 8 bit
(value / 257), where PIL's conversion would clip it to white.

Speed: colour JPEGs (YCbCr, the ImageNet case) are decoded by torchvision's ``decode_jpeg``,
the same libjpeg-turbo with the same settings (ISLOW IDCT, fancy upsampling) as PIL: the same
pixels, without PIL's chunked reads and copies (tested against PIL). Everything else, and any
file that decoder refuses, takes PIL's path, so errors and their reasons are PIL's.

Images above ``MAX_PIXELS`` are refused from their header, before any pixel is decoded.
"""

from __future__ import annotations

import functools
import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile

from attgmae.core.errors import InputError

# The documented limit (docs/generate.md): decompression bombs are refused, large photos pass.
MAX_PIXELS = 180_000_000
# PIL's own check stays as a backstop for any other reader; it only warns between 1x and 2x its
# limit, so decode_rgb refuses those itself (and the warning would be noise).
Image.MAX_IMAGE_PIXELS = MAX_PIXELS
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
# A truncated JPEG is an error, not a silently grey-padded image.
ImageFile.LOAD_TRUNCATED_IMAGES = False
# High-bit-depth grayscale modes, scaled to 8 bit rather than clipped (PIL's I;16 family, I, F).
_DEEP_GREY = ("I", "F")


class ImageDecodeError(InputError):
    """An image that cannot be decoded; ``reason`` says why in a few words.

    ``ImageDecodeError(message)`` with one argument also works: a DataLoader worker re-raises
    an exception in the main process by calling its type with the formatted message.
    """

    def __init__(self, path, reason: str | None = None):
        super().__init__(str(path) if reason is None else f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason or ""


def pixel_limit() -> int:
    """The largest width x height decoded (the stricter of ours and PIL's, if lowered)."""
    pil_limit = Image.MAX_IMAGE_PIXELS
    return MAX_PIXELS if pil_limit is None else min(MAX_PIXELS, int(pil_limit))


@functools.lru_cache(maxsize=1)
def jpeg_decoder():
    """torchvision's ``decode_jpeg`` (imported on first use: it loads torch), or None."""
    try:
        from torchvision.io import ImageReadMode, decode_jpeg
    except ImportError:
        return None
    # torchvision >= 0.29 warns that its decoders will move to torchcodec: not the user's concern.
    warnings.filterwarnings("ignore", message=".*decoding and encoding capabilities of TorchVision")
    return functools.partial(decode_jpeg, mode=ImageReadMode.RGB)


def _fast_jpeg(data: bytes) -> np.ndarray | None:
    """A colour JPEG's uint8 RGB [H, W, 3] from torchvision, or None (then PIL decodes it)."""
    decode = jpeg_decoder()
    if decode is None:
        return None
    import torch

    try:
        chw = decode(torch.frombuffer(bytearray(data), dtype=torch.uint8))  # [3, H, W] view
    except Exception:  # noqa: BLE001 - whatever it refuses, PIL decodes or names the error
        return None
    return np.ascontiguousarray(chw.permute(1, 2, 0).numpy())  # HWC storage: no copy


def writable(image: np.ndarray) -> np.ndarray:
    """``image`` as a C-contiguous, writable array (a copy only when needed), for
    ``torch.from_numpy``, which refuses to share read-only memory without a warning."""
    image = np.ascontiguousarray(image)
    return image if image.flags.writeable else image.copy()


def _deep_grey_to_rgb(img: Image.Image) -> np.ndarray:
    """16/32-bit grayscale (any byte order) -> uint8 RGB, value / 257 (65535 -> 255)."""
    arr = np.nan_to_num(np.asarray(img, dtype=np.float32))
    arr = np.clip(arr / 257.0, 0, 255).astype(np.uint8)
    return np.ascontiguousarray(np.repeat(arr[:, :, None], 3, axis=2))


def decode_rgb(path) -> np.ndarray:
    """Decode ``path`` to uint8 RGB ``[H, W, 3]`` as ``Image.open(path).convert("RGB")`` would.

    Raises ImageDecodeError (never another exception) for unreadable files.
    """
    return _decode(read_image_bytes(path), path)


def read_image_bytes(path) -> bytes:
    """The bytes of the image file ``path``; ImageDecodeError when it cannot be read."""
    path = Path(path)
    try:
        return path.read_bytes()
    except OSError as err:
        raise ImageDecodeError(path, f"cannot read file ({err.strerror or err})") from None


def decode_rgb_bytes(data: bytes, name: str) -> np.ndarray:
    """``decode_rgb`` of an image file's bytes (a tar shard's sample); ``name`` (the shard and
    key) names it in errors."""
    return _decode(data, name)


def _check_pixel_limit(width: int, height: int, path) -> None:
    if width * height > pixel_limit():
        raise ImageDecodeError(
            path, f"image too large ({width} x {height} = {width * height:,} pixels; the limit "
            f"is {pixel_limit():,})"
        )  # fmt: skip


def is_plain_colour_jpeg(data: bytes, path) -> bool:
    """Whether ``data`` is a whole colour (YCbCr) JPEG any JPEG decoder reads the same way: the
    files ``attg-maps generate --decode gpu`` sends to nvjpeg. Not: other formats, grayscale,
    CMYK, Adobe's untransformed RGB, files that do not end with the JPEG end marker (truncated,
    or trailing data). ImageDecodeError for an image above the pixel limit; a header that does
    not parse is False (``decode_rgb_bytes`` names the error)."""
    try:
        with Image.open(io.BytesIO(data)) as img:  # reads the header only
            width, height = img.size
            ycbcr = img.info.get("adobe_transform", 1) == 1  # Adobe's flag: 0 is plain RGB
            plain = img.format == "JPEG" and img.mode == "RGB" and ycbcr
    except Exception:  # noqa: BLE001 - any unreadable header goes to the full decoder
        return False
    _check_pixel_limit(width, height, path)
    return plain and data.endswith(b"\xff\xd9")


def _decode(data: bytes, path) -> np.ndarray:
    """The one decode: an image file's bytes as PIL's ``convert("RGB")`` (colour JPEGs through
    torchvision's decoder, the same pixels), deep grayscale scaled, images above the pixel
    limit refused from their header; ImageDecodeError naming ``path``."""
    if not data:
        raise ImageDecodeError(path, "empty file (0 bytes)")
    try:
        with Image.open(io.BytesIO(data)) as img:  # reads the header only
            _check_pixel_limit(*img.size, path)
            if img.format == "JPEG" and img.mode == "RGB":
                fast = _fast_jpeg(data)
                if fast is not None:
                    return fast
            img.load()
            if img.mode in _DEEP_GREY or img.mode.startswith("I;"):
                return _deep_grey_to_rgb(img)
            return np.array(img if img.mode == "RGB" else img.convert("RGB"), dtype=np.uint8)
    except ImageDecodeError:
        raise
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
