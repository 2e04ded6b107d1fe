"""`--decode gpu` and `--resize gpu`: what the workers send, and the pixels the device makes of
it, run here on the CPU (torchvision's decode_jpeg takes the same calls with device cpu; the
pixels of nvjpeg itself are measured on the GPU by benchmarks/generate.py)."""

from __future__ import annotations

import io
import os

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from attgmae.core.errors import InputError
from attgmae.data import device_decode, packed
from attgmae.data.device_decode import check_device_decoder, device_pixels, worker_payload
from attgmae.data.images import (
    ImageDecodeError,
    decode_rgb,
    decode_rgb_bytes,
    is_plain_colour_jpeg,
)
from attgmae.data.map_inputs import DecodedImages, collate_decoded, collate_payloads
from attgmae.data.packed import pack
from attgmae.data.photo_like import photo_like_image


def _jpeg(pixels: np.ndarray, mode: str = "RGB", **options) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).convert(mode).save(buffer, format="JPEG", quality=90, **options)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def image_set(tmp_path_factory):
    """(root, keys, {key: what the worker must send: 'bytes', 'pixels' or 'failed'})."""
    rng = np.random.default_rng(3)
    root = tmp_path_factory.mktemp("device_decode")
    photos = [photo_like_image(rng, size) for size in ((400, 390), (333, 500), (160, 120))]
    whole = _jpeg(photos[0])
    files = {
        "landscape.JPEG": (whole, "bytes"),
        "portrait.JPEG": (_jpeg(photos[1]), "bytes"),
        "small_progressive.JPEG": (_jpeg(photos[2], progressive=True), "bytes"),
        "grey.JPEG": (_jpeg(photos[0], "L"), "pixels"),
        "cmyk.JPEG": (_jpeg(photos[1], "CMYK"), "pixels"),
        "trailing_data.JPEG": (whole + b"\x00" * 16, "pixels"),
        "png.JPEG": (None, "pixels"),
        "truncated.JPEG": (whole[: len(whole) // 2], "failed"),
        "empty.JPEG": (b"", "failed"),
    }
    for name, (data, _) in files.items():
        if data is None:
            Image.fromarray(photos[2]).save(root / name, format="PNG")
        else:
            (root / name).write_bytes(data)
    return root, sorted(files), {name: kind for name, (_, kind) in files.items()}


def test_workers_send_plain_colour_jpegs_as_bytes_and_decode_the_rest(image_set):
    root, keys, kinds = image_set
    for row, item in enumerate(DecodedImages(root, keys, on_device="decode")):
        key, (_, payload, reason, _) = keys[row], item
        data = (root / key).read_bytes()
        if kinds[key] == "bytes":
            assert payload.dim() == 1 and payload.numpy().tobytes() == data, key
        elif kinds[key] == "pixels":
            np.testing.assert_array_equal(payload.numpy(), decode_rgb(root / key), err_msg=key)
        else:
            assert payload is None and reason, key
    assert not is_plain_colour_jpeg(b"not an image", "x")  # the decoder names that error


def test_device_pixels_are_the_cpu_paths_within_one_grey_level(image_set):
    root, keys, _ = image_set
    cpu_rows, cpu_pixels, cpu_reasons, _ = collate_decoded(list(DecodedImages(root, keys)))
    rows, payloads, reasons, identities = collate_payloads(
        list(DecodedImages(root, keys, on_device="decode"))
    )
    assert torch.equal(rows, cpu_rows) and identities.shape == (len(keys), 2)
    pixels, reasons = device_pixels(payloads, reasons, keys, torch.device("cpu"))
    assert reasons == cpu_reasons  # the same failures, for the same reasons
    assert pixels.dtype == torch.uint8 and pixels.shape == cpu_pixels.shape
    diff = (pixels.int() - cpu_pixels.int()).abs()
    assert diff.max() <= 1 and diff.float().mean() < 0.01
    failed = [i for i, reason in enumerate(reasons) if reason is not None]
    assert failed and not pixels[failed].any()  # failed rows stay zeros


def test_a_file_the_jpeg_decoder_refuses_is_decoded_by_the_cpu_decoder(image_set, monkeypatch):
    """nvjpeg fails a whole batched call for one bad file: the others still decode on the
    device; the refused one is decoded by decode_rgb, or fails with decode_rgb's reason."""
    root, keys, kinds = image_set
    jpegs = [key for key in keys if kinds[key] == "bytes"]
    refused = {(root / jpegs[0]).read_bytes()}
    corrupt = _jpeg(np.zeros((64, 64, 3), np.uint8))
    corrupt = corrupt[:200] + b"\xff\xd9"  # a header, no scan: ends like a JPEG, decodes as none
    real = device_decode.jpeg_decoder()
    calls = []

    def picky(data, device):
        calls.append(len(data) if isinstance(data, list) else 1)
        batch = data if isinstance(data, list) else [data]
        if any(d.numpy().tobytes() in refused for d in batch):
            raise RuntimeError("nvjpeg: unsupported")
        return real(data, device=device)

    monkeypatch.setattr(device_decode, "jpeg_decoder", lambda: picky)
    payloads = [worker_payload((root / key).read_bytes(), key) for key in jpegs]
    payloads.append(torch.frombuffer(bytearray(corrupt), dtype=torch.uint8))
    names = [*jpegs, "corrupt.JPEG"]
    batch = pack(payloads)
    pixels, reasons = device_pixels(batch, [None] * len(names), names, torch.device("cpu"))
    assert calls == [len(names), *([1] * len(names))]  # the batch, then file by file
    with pytest.raises(ImageDecodeError) as err:
        decode_rgb_bytes(corrupt, "corrupt.JPEG")
    assert reasons == [None] * len(jpegs) + [err.value.reason]
    cpu = collate_decoded(list(DecodedImages(root, jpegs)))[1]
    assert (pixels[: len(jpegs)].int() - cpu.int()).abs().max() <= 1


def test_with_resize_gpu_the_workers_decode_and_the_device_makes_pils_pixels(image_set):
    """--resize gpu: every file decoded by the worker (JPEGs too), sent full size; the device's
    resize is PIL's own pixels, bit for bit, and the workers' path within 1 grey level."""
    root, keys, kinds = image_set
    items = list(DecodedImages(root, keys, on_device="resize"))
    for key, (_, payload, reason, _) in zip(keys, items):
        if kinds[key] == "failed":
            assert payload is None and reason, key
        else:
            np.testing.assert_array_equal(payload.numpy(), decode_rgb(root / key), err_msg=key)
    rows, batch, reasons, _ = collate_payloads(items)
    pixels, reasons = device_pixels(batch, reasons, keys, torch.device("cpu"))
    cpu_pixels, cpu_reasons = collate_decoded(list(DecodedImages(root, keys)))[1:3]
    assert reasons == cpu_reasons
    for i, key in enumerate(keys):
        if reasons[i] is None:
            pil = Image.fromarray(decode_rgb(root / key)).resize((224, 224), Image.BILINEAR)
            np.testing.assert_array_equal(pixels[i].numpy(), np.asarray(pil), err_msg=key)
    assert (pixels.int() - cpu_pixels.int()).abs().max() <= 1


def test_a_batch_over_its_budget_is_resized_by_the_workers_into_the_same_pixels(image_set):
    """Over the budget /dev/shm was planned for, the worker resizes the largest decoded images
    itself (PIL's resize: the device's pixels, bit for bit) until the batch fits; a JPEG's
    bytes (--decode gpu) travel as they are."""
    root, keys, kinds = image_set
    items = list(DecodedImages(root, keys, on_device="resize"))
    _, whole, reasons, _ = collate_payloads(items)
    budget = whole.data.numel() // 2
    _, fitted, _, _ = collate_payloads(items, budget_bytes=budget)
    assert fitted.data.numel() <= budget and 0 < sum(fitted.ready) < len(keys) - 2
    largest = sorted(range(len(keys)), key=lambda i: -(items[i][1] is not None and
                                                       items[i][1].numel()))  # fmt: skip
    assert fitted.ready == [i in largest[: sum(fitted.ready)] for i in range(len(keys))]
    cpu = torch.device("cpu")
    want, _ = device_pixels(whole, reasons, keys, cpu)
    got, got_reasons = device_pixels(fitted, reasons, keys, cpu)
    assert got_reasons == reasons and torch.equal(got, want)
    jpegs = [item for item, key in zip(DecodedImages(root, keys, on_device="decode"), keys)
             if kinds[key] == "bytes"]  # fmt: skip
    sent = collate_payloads(jpegs, budget_bytes=1)[1]
    assert sent.ready == [False] * len(jpegs) and all(len(s) == 1 for s in sent.shapes)


def test_a_torchvision_that_cannot_decode_on_the_device_stops_the_run(monkeypatch):
    """Else each file would be refused and decoded by the CPU in the main process: slowly."""
    check_device_decoder(torch.device("cpu"))  # decodes there: no error

    def without_nvjpeg(data, device):
        raise RuntimeError("decode_jpegs_cuda: torchvision not compiled with nvJPEG support")

    monkeypatch.setattr(device_decode, "jpeg_decoder", lambda: without_nvjpeg)
    with pytest.raises(InputError, match="not compiled with nvJPEG.*use --decode cpu"):
        check_device_decoder(torch.device("cpu"))


def _payloads_and_buffers(items):
    """A worker's collate that also says how many buffers its worker keeps."""
    return *collate_payloads(items), len(packed._kept.get(os.getpid(), []))


def test_workers_reuse_each_buffer_the_device_has_released_and_no_other(image_set, monkeypatch):
    """Batches out of a real worker, turned into pixels by ``device_pixels`` (which releases
    each): the same pixels as in one process, with fewer buffers than batches; and batches
    the main process holds unreleased are never written over."""
    root, keys, _ = image_set
    monkeypatch.setattr(packed, "KEPT_BUFFERS", 3)  # prefetch 2 + the one held (forks inherit it)
    dataset = DecodedImages(root, keys, on_device="resize")
    cpu = torch.device("cpu")
    want, want_reasons = device_pixels(*collate_payloads(list(dataset))[1:3], keys, cpu)
    loader = DataLoader(dataset, batch_size=2, num_workers=1, collate_fn=_payloads_and_buffers)
    kept, start = [], 0
    for rows, batch, reasons, _, buffers in loader:
        assert batch.held is not None and int(batch.held[0]) == 1  # out of its worker
        flag = batch.held
        pixels, reasons = device_pixels(batch, reasons, [keys[r] for r in rows], cpu)
        assert int(flag[0]) == 0 and batch.data.numel() == 0  # given back, not readable
        assert torch.equal(pixels, want[start : start + len(rows)])
        assert reasons == want_reasons[start : start + len(rows)]
        kept, start = kept + [buffers], start + len(rows)
    assert len(kept) == 5 and max(kept) == 3  # 9 images, 5 batches, all in the 3 kept buffers
    held = [batch for _, batch, *_ in loader]  # nothing released
    assert [b.held is not None for b in held] == [True] * 3 + [False] * 2  # past them: fresh
    got = torch.cat([device_pixels(b, [None] * len(b), ["?"] * len(b), cpu)[0] for b in held])
    ok = [reason is None for reason in want_reasons]
    assert torch.equal(got[ok], want[ok])


def test_pinning_a_batch_gives_its_buffer_back(monkeypatch):
    """The DataLoader's pin thread copies a batch into pinned memory: the copy is what the
    device reads, so the worker's buffer is released at once."""
    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda self, *args: self.clone())
    items = [torch.full((4, 3, 3), i, dtype=torch.uint8) for i in range(3)]
    batch = pack(items)
    batch.held = flag = torch.ones(1, dtype=torch.uint8)
    pinned = batch.pin_memory()
    assert int(flag[0]) == 0 and pinned.held is None and batch.data.numel() == 0
    assert all(torch.equal(a, b) for a, b in zip(pinned.items(), items))
    with pytest.raises(RuntimeError):
        batch.items()  # released: its views are gone
    pinned.release()  # memory of its own: nothing to give back, still readable
    assert all(torch.equal(a, b) for a, b in zip(pinned.items(), items))
