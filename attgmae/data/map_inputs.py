"""Images as every map method sees them: decoded, resized to 224x224, normalized.

The whole image is resized to 224x224 WITHOUT cropping (the maps must cover the whole image, so
stage 2 can resize the same image and the map the same way), then scaled to [0, 1] and normalized
with the ImageNet mean/std that DINO, torchvision's ResNet-50 and pytorch-grad-cam's examples use.

Resize choice: PIL's ``Image.resize((224, 224), BILINEAR)`` filter, which is what DINO's and
torchvision's ``transforms.Resize`` do on PIL images (bilinear with antialiasing when shrinking),
computed by torchvision's uint8 antialiased kernel on the decoded array, its passes in PIL's order
(``attgmae.data.pil_resize``): the same filter in fixed point, within 1 grey level of PIL's
pixels (tested) and several times faster, with no PIL image round trip. It runs per image on
the CPU (in the data-loader workers, ``DecodedImages``); only the uint8 224x224 image travels to
the device, where ``normalize_batch`` does the float conversion batched, with the mean and std
made once per device.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from attgmae.core.constants import IMAGENET_MEAN, IMAGENET_STD  # noqa: F401 - part of the API
from attgmae.core.constants import MAP_INPUT_SIZE as INPUT_SIZE
from attgmae.core.identity import UNKNOWN, image_identity
from attgmae.data.device_decode import resized_in_worker, worker_payload
from attgmae.data.images import ImageDecodeError, decode_rgb_bytes, read_image_bytes, writable
from attgmae.data.packed import pack
from attgmae.data.pil_resize import torch_resize_like_pil
from attgmae.data.transforms import normalize_images

PREPROCESSING = (
    "decode_rgb (PIL convert('RGB'), no EXIF rotation) -> whole image resized to "
    "224x224 without cropping (PIL's antialiased bilinear filter, torchvision uint8 kernel, "
    "passes in PIL's order) -> "
    "/255 -> ImageNet mean/std"
)
ON_DEVICE = ("", "resize", "decode")  # what the device does of the decode + resize


def resize_uint8(image: np.ndarray, size: int = INPUT_SIZE) -> np.ndarray:
    """uint8 RGB [H, W, 3] -> uint8 [size, size, 3]: PIL's antialiased bilinear filter, no crop."""
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(
            f"expected a uint8 RGB image [H, W, 3], got {image.dtype} {tuple(image.shape)}"
        )
    if image.shape[0] == size and image.shape[1] == size:
        return np.ascontiguousarray(image)
    chw = torch.from_numpy(writable(image)).permute(2, 0, 1)  # [3, H, W] view, HWC storage
    resized = torch_resize_like_pil(chw, (size, size), Image.BILINEAR)  # channels-last storage
    return np.ascontiguousarray(resized.permute(1, 2, 0).numpy())  # no copy


def normalize_batch(images_uint8: torch.Tensor, device=None) -> torch.Tensor:
    """uint8 [B, 224, 224, 3] (any device) -> float32 [B, 3, 224, 224] ImageNet-normalized."""
    images = images_uint8.to(device=device, non_blocking=True)
    return normalize_images(images.permute(0, 3, 1, 2)).contiguous()


def to_model_input(images: list[np.ndarray], device=None) -> torch.Tensor:
    """list of uint8 RGB [H, W, 3] (any sizes) -> float32 [B, 3, 224, 224] on ``device``."""
    if len(images) == 0:
        raise ValueError("to_model_input needs at least one image")
    resized = np.stack([resize_uint8(image) for image in images])  # [B, 224, 224, 3]
    return normalize_batch(torch.from_numpy(resized), device=device)


class DecodedImages(Dataset):
    """Row -> (row, uint8 [224, 224, 3] tensor or None, failure reason or None, identity).

    Workers decode and resize (the CPU-heavy part) once per image for every method; only uint8
    224x224 pixels travel to the device. A bad image is a failure record, never an exception:
    one unreadable JPEG must not stop an ImageNet run. ``identity``: (size, mtime_ns) of the file
    as stat'ed just before decoding (``core.identity``; UNKNOWN when it cannot be stat'ed), kept
    with the map so that an image replaced later is noticed; a change during the decode shows as
    a change later, the safe side. ``on_device`` (ON_DEVICE): what the device does instead,
    the second item then being what ``device_decode.worker_payload`` sends: "resize" (the
    decoded full-size pixels; ``--resize gpu``) or "decode" (the JPEG's bytes; ``--decode gpu``).
    """

    def __init__(self, root, keys: list[str], on_device: str = ""):
        check_on_device(on_device)
        self.root = Path(root)
        self.keys = keys
        self.on_device = on_device

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, row: int):
        path = self.root / self.keys[row]
        try:
            identity = image_identity(path)
        except OSError:
            identity = (UNKNOWN, UNKNOWN)
        return image_item(row, lambda: read_image_bytes(path), path, identity, self.on_device)


def check_on_device(on_device: str) -> None:
    if on_device not in ON_DEVICE:
        raise ValueError(f"on_device {on_device!r}: one of {ON_DEVICE}")


def image_item(row: int, read, name, identity, on_device: str) -> tuple:
    """A dataset item of one image whose bytes ``read()`` returns: (row, uint8 [224, 224, 3]
    or the device payload, None, identity), or (row, None, failure reason, identity)."""
    try:
        data = read()
        if on_device:
            payload = worker_payload(data, name, jpeg_bytes=on_device == "decode")
            return row, payload, None, identity
        image = decode_rgb_bytes(data, name)  # uint8 [H, W, 3]
        return row, torch.from_numpy(writable(resize_uint8(image))), None, identity
    except ImageDecodeError as err:
        return row, None, err.reason, identity
    except Exception as err:  # noqa: BLE001 - any per-image failure is recorded, not raised
        return row, None, f"{type(err).__name__}: {err}", identity


def collate_decoded(items):
    """-> rows int64 [B], pixels uint8 [B, 224, 224, 3] (zeros where failed), reasons [B],
    identities int64 [B, 2] (size, mtime_ns)."""
    rows, reasons, identities = _collate_records(items)
    pixels = torch.zeros((len(items), INPUT_SIZE, INPUT_SIZE, 3), dtype=torch.uint8)
    for i, (_, image, _, _) in enumerate(items):
        if image is not None:
            pixels[i] = image
    return rows, pixels, reasons, identities


def collate_payloads(items, budget_bytes: int | None = None):
    """``collate_decoded`` of ``on_device`` items: the payloads packed in one buffer (no item
    where failed), for ``device_decode.device_pixels``; over ``budget_bytes`` (what /dev/shm was
    planned for) the largest decoded images are resized here (``resized_in_worker``)."""
    rows, reasons, identities = _collate_records(items)
    payloads = pack([item[1] for item in items], budget_bytes, resized_in_worker)
    return rows, payloads, reasons, identities


def _collate_records(items) -> tuple:
    rows = torch.tensor([item[0] for item in items], dtype=torch.int64)
    identities = np.array([item[3] for item in items], dtype=np.int64).reshape(len(items), 2)
    return rows, [item[2] for item in items], identities


def decode_seconds(dataset, samples: int = 8) -> float:
    """Seconds per image of a loader worker's job (``dataset``'s items: decode + resize, or
    less with ``on_device``; one thread, as in a worker) on up to ``samples`` images
    spread over it; one more first, untimed (imports)."""
    count = len(dataset)
    picks = np.linspace(0, count - 1, min(count, samples + 1)).round().astype(int).tolist()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        dataset[picks[0]]
        timed = picks[1:] if len(picks) > 1 else picks
        started = time.perf_counter()
        for row in timed:
            dataset[row]
        return (time.perf_counter() - started) / len(timed)
    finally:
        torch.set_num_threads(threads)
