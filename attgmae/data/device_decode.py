"""Stage-1 pixels made on the GPU: ``attg-maps generate --resize gpu`` and ``--decode gpu``.

With ``--resize gpu`` (the default on CUDA) the loader workers only decode (``decode_rgb``, as
on the CPU path) and send the full-size pixels; with ``--decode gpu`` they only read the files:
a plain colour JPEG (``is_plain_colour_jpeg``, the ImageNet case) travels as its bytes, the rest
(PNG, grayscale, CMYK, truncated files) is decoded there and travels as pixels. On the device
(``device_pixels``) nvjpeg decodes the batch's JPEGs at once (torchvision's ``decode_jpeg`` on a
CUDA device: the GPU's hardware JPEG engines for baseline files), a file it refuses is decoded
by ``decode_rgb`` after all (so its failure reason is the CPU path's), and every image is
resized to 224x224 there by ``pil_exact.resize_like_pil``: PIL's bilinear, exactly.

nvjpeg's IDCT and chroma upsampling are its own, so its pixels differ slightly from
libjpeg-turbo's (docs/benchmarks.md has the measured difference): the stores record
``decode: gpu`` (and ``resize: gpu``) among their defining parameters, so one store never mixes
pixels made in different places.
"""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image

from attgmae.core.constants import MAP_INPUT_SIZE
from attgmae.core.errors import InputError
from attgmae.data.images import (
    ImageDecodeError,
    decode_rgb_bytes,
    is_plain_colour_jpeg,
    jpeg_decoder,
    writable,
)
from attgmae.data.packed import PackedBatch
from attgmae.data.pil_exact import resize_like_pil

PREPROCESSING_GPU = (
    "plain colour JPEGs decoded by nvjpeg on the GPU (torchvision decode_jpeg, device cuda), "
    "other files by decode_rgb (PIL convert('RGB')), no EXIF rotation -> whole image resized "
    "to 224x224 without cropping on the GPU (PIL's antialiased bilinear filter, exactly: its "
    "integer weights in float64 matrix products) -> /255 -> ImageNet mean/std"
)
PREPROCESSING_RESIZE_GPU = (
    "decode_rgb (PIL convert('RGB'), no EXIF rotation) in the loader workers -> whole image "
    "resized to 224x224 without cropping on the GPU (PIL's antialiased bilinear filter, "
    "exactly: its integer weights in float64 matrix products) -> /255 -> ImageNet mean/std"
)


def check_device_decoder(device) -> None:
    """InputError unless torchvision decodes a JPEG on ``device``: one built without nvjpeg
    would otherwise refuse every file, each then decoded by the CPU in the main process."""
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), (200, 120, 40)).save(buffer, format="JPEG")
    data = torch.frombuffer(bytearray(buffer.getvalue()), dtype=torch.uint8)
    decode = jpeg_decoder()
    try:
        if decode is None:
            raise RuntimeError("torchvision.io has no JPEG decoder")
        shape = tuple(decode([data], device=device)[0].shape)
        if shape != (3, 16, 16):
            raise RuntimeError(f"a 16 x 16 JPEG came back as {shape}")
    except Exception as err:  # noqa: BLE001 - whatever stops it, the run must not start
        raise InputError(
            f"--decode gpu: torchvision cannot decode JPEGs on {device} ({type(err).__name__}: "
            f"{err}); use --decode cpu"
        ) from None


def worker_payload(data: bytes, name, jpeg_bytes: bool = True) -> torch.Tensor:
    """What a loader worker sends for one image file's ``data``: uint8 [n] (the JPEG's bytes,
    for nvjpeg; only with ``jpeg_bytes``) or uint8 [H, W, 3] (decoded here). ImageDecodeError
    as ``decode_rgb``."""
    if jpeg_bytes and is_plain_colour_jpeg(data, name):
        return torch.frombuffer(bytearray(data), dtype=torch.uint8)
    return torch.from_numpy(writable(decode_rgb_bytes(data, name)))


def resized_in_worker(payload: torch.Tensor) -> torch.Tensor | None:
    """A worker's decoded payload (uint8 [H, W, 3]) as its final uint8 [224, 224, 3] pixels, by
    PIL's own resize: the pixels ``device_pixels`` makes of it (``pil_exact`` is PIL's, bit for
    bit), for a batch over its budget (``packed.pack``). None for a JPEG's bytes: they travel as
    they are (nvjpeg decodes every plain JPEG of a ``--decode gpu`` store)."""
    if payload.dim() != 3:
        return None
    image = Image.fromarray(payload.numpy())
    resized = image.resize((MAP_INPUT_SIZE, MAP_INPUT_SIZE), Image.BILINEAR)
    return torch.from_numpy(writable(np.asarray(resized)))


def device_pixels(batch: PackedBatch, reasons: list, names: list[str], device) -> tuple:
    """A batch of ``worker_payload``s (no item where the worker failed, ``reasons`` saying why)
    -> (uint8 [B, 224, 224, 3] on ``device``, zeros where failed; the reasons, with those of
    files that did not decode here added). ``names`` name the files in errors. Items the
    worker made final (``batch.ready``) are placed as they are. The batch is released."""
    reasons = list(reasons)
    size = (MAP_INPUT_SIZE, MAP_INPUT_SIZE)
    pixels = torch.zeros((len(batch), *size, 3), dtype=torch.uint8, device=device)
    on_host = batch.items()  # JPEG bytes stay on the host: decode_jpeg reads them there
    decoded_here = any(shape is not None and len(shape) == 3 for shape in batch.shapes)
    on_device = batch.items(device) if decoded_here else on_host  # one copy for the batch
    jpegs = [i for i, p in enumerate(on_host) if p is not None and p.dim() == 1]
    decoded = dict(zip(jpegs, _decode_jpegs([on_host[i] for i in jpegs], device)))
    by_size: dict[tuple, list[tuple[int, torch.Tensor]]] = {}  # [3, H, W] -> (row, image)
    for i, payload in enumerate(on_host):
        if payload is None:
            continue
        if batch.ready[i]:  # resized by the worker (its batch was over the budget)
            pixels[i] = on_device[i]
            continue
        if payload.dim() == 3:  # decoded by the worker
            chw = on_device[i].permute(2, 0, 1)
        elif decoded[i] is not None:
            chw = decoded[i]
        else:  # refused by nvjpeg: the CPU decoder decodes it or names the error
            try:
                image = decode_rgb_bytes(payload.numpy().tobytes(), names[i])
            except ImageDecodeError as err:
                reasons[i] = err.reason
                continue
            chw = torch.from_numpy(image).to(device).permute(2, 0, 1)
        by_size.setdefault(tuple(chw.shape), []).append((i, chw))
    for group in by_size.values():  # one resize per image size (ImageNet has few)
        rows = [i for i, _ in group]
        same_size = torch.stack([chw for _, chw in group])  # [n, 3, H, W]
        pixels[rows] = resize_like_pil(same_size, size, Image.BILINEAR).permute(0, 2, 3, 1)
    batch.release()  # every item is copied out: its worker may reuse the buffer
    return pixels, reasons


def _decode_jpegs(encoded: list[torch.Tensor], device) -> list[torch.Tensor | None]:
    """uint8 [3, H, W] on ``device`` per JPEG, None for each one the decoder refuses: one call
    for the batch (nvjpeg's batched decode), one per file once a file fails the batch."""
    decode = jpeg_decoder()
    if not encoded:
        return []
    try:
        return list(decode(encoded, device=device))
    except (RuntimeError, ValueError):  # one bad file fails the whole call
        pass
    results = []
    for data in encoded:
        try:
            results.append(decode(data, device=device))
        except (RuntimeError, ValueError):
            results.append(None)
    return results
