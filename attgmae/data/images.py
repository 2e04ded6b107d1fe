"""The one image decoder, and image listing.

Every stage reads pixels through ``decode_rgb``, so stage 1, stage 2 and evaluation see the same
image, and the same image as the original DINO, TokenCut and MAE code, which all read through
torchvision's ImageFolder loader, ``PIL.Image.open(path).convert("RGB")``. In particular the EXIF
orientation tag is NOT applied (a photo tagged "rotate 90" is used as stored, as the originals
do); CMYK, grayscale and palette images get PIL's RGB conversion. One deliberate difference:
16-bit grayscale is scaled to 8 bit, where PIL's conversion would clip it to white.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")

# Refuse decompression bombs well above ImageNet sizes, but allow large photos (~180 MP).
Image.MAX_IMAGE_PIXELS = 180_000_000
# A truncated JPEG is an error, not a silently grey-padded image.
ImageFile.LOAD_TRUNCATED_IMAGES = False


class ImageDecodeError(Exception):
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
    try:
        with Image.open(path) as img:
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


def _key_under_root(listed: str, root: Path, file_list) -> str:
    """A --file_list line -> the key: '/'-separated, relative to ``root``, normalized, so that
    './n01440764/a.JPEG' and '/data/train/n01440764/a.JPEG' both become 'n01440764/a.JPEG' (the
    first folder is the label)."""
    if os.path.isabs(listed):
        relative = os.path.relpath(os.path.abspath(listed), os.path.abspath(root))
    else:
        relative = os.path.normpath(listed)
    if relative == os.curdir or relative == os.pardir or relative.startswith(os.pardir + os.sep):
        raise ValueError(f"{file_list}: listed image {listed} is not inside the image root {root}")
    return relative.replace(os.sep, "/")


def list_images(root, file_list=None) -> list[str]:
    """Sorted keys (paths relative to ``root``, '/'-separated) of every image under ``root``.

    With ``file_list`` (a text file, one path per line: relative to ``root`` as ``find .``
    writes them, or absolute under ``root``) only those are taken; a listed file that does not
    exist, or lies outside ``root``, is an error naming it.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image root {root} is not a directory")
    if file_list is not None:
        keys = []
        for line in Path(file_list).read_text().splitlines():
            if not line.strip() or line.strip().startswith("#"):
                continue
            key = _key_under_root(line.strip(), root, file_list)
            if not (root / key).is_file():
                raise FileNotFoundError(f"{file_list}: listed image {key} not found under {root}")
            keys.append(key)
        if len(set(keys)) != len(keys):
            raise ValueError(f"{file_list}: lists some images twice")
        return sorted(keys)
    keys = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames.sort()
        rel = os.path.relpath(dirpath, root)
        for name in filenames:
            if name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith("."):
                key = name if rel == "." else f"{rel}/{name}"
                keys.append(key.replace(os.sep, "/"))
    return sorted(keys)


def folder_labels(keys) -> tuple[list[str], np.ndarray]:
    """Class names (sorted first-level folders) and int64 labels, -1 for keys with no folder."""
    folders = [k.split("/", 1)[0] if "/" in k else None for k in keys]
    class_names = sorted({f for f in folders if f is not None})
    index = {name: i for i, name in enumerate(class_names)}
    labels = np.array([index[f] if f is not None else -1 for f in folders], dtype=np.int64)
    return class_names, labels
