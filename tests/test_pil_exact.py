"""PIL's resize as float64 matrix products (``pil_exact``) against PIL itself, bit for bit, and
the packed batches that carry full-size images out of the loader workers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from attgmae.data.packed import pack
from attgmae.data.photo_like import photo_like_image
from attgmae.data.pil_exact import pil_weights, resize_crop_like_pil, resize_like_pil
from attgmae.eval.transforms import eval_transform, resized_size

# shrunk, enlarged, tall (PIL's vertical pass first), wide, one axis unchanged, tiny
SIZES = ((400, 390), (500, 375), (333, 500), (257, 1000), (1000, 257), (224, 300), (120, 90),
         (7, 5))  # fmt: skip
EDGES = ((1, 1), (9, 1), (2, 3000))  # one pixel, one column, a sliver (width, height)


def _chw(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None]


@pytest.mark.parametrize("resample", [Image.BILINEAR, Image.BICUBIC])
def test_the_resize_is_pils_bit_for_bit(resample):
    rng = np.random.default_rng(4)
    for width, height in SIZES + EDGES:
        noise = rng.integers(0, 256, (height, width, 3), np.uint8)
        photo = photo_like_image(rng, (width, height)) if min(width, height) > 16 else noise
        for image in (photo, noise):
            for out in ((224, 224), (300, 130), (height, 97), (1, 1)):  # (height, width)
                want = np.asarray(Image.fromarray(image).resize(out[::-1], resample))
                got = resize_like_pil(_chw(image), out, resample)[0].permute(1, 2, 0).numpy()
                np.testing.assert_array_equal(got, want, err_msg=f"{width}x{height} -> {out}")


def test_resize_and_crop_is_the_evaluation_protocols_pixels_bit_for_bit():
    """Resize(256, bicubic) + CenterCrop(224) as torchvision does it on a PIL image; only the
    crop's rows and columns are computed."""
    rng = np.random.default_rng(5)
    protocol = eval_transform()
    mean = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
    for width, height in SIZES[:-1] + ((100, 80),):
        image = photo_like_image(rng, (width, height))
        want = ((protocol(Image.fromarray(image)) * std + mean) * 255).round()
        out_width, out_height = resized_size(width, height, 256)
        top, left = round((out_height - 224) / 2.0), round((out_width - 224) / 2.0)
        box = (top, left, 224, 224)
        got = resize_crop_like_pil(_chw(image), (out_height, out_width), Image.BICUBIC, box)
        np.testing.assert_array_equal(got[0].float().numpy(), want.numpy(), err_msg=(width, height))


def test_the_weights_are_pils_integers_summing_to_one_in_22_bits():
    weights = pil_weights(390, 224, Image.BICUBIC)
    assert weights.shape == (224, 390) and not weights.flags.writeable
    assert np.array_equal(weights, np.round(weights))
    assert np.abs(weights.sum(axis=1) - (1 << 22)).max() <= 8  # each rounded separately
    assert (weights < 0).any()  # bicubic's negative lobes
    identity = pil_weights(50, 50, Image.BILINEAR)
    assert np.array_equal(identity, np.eye(50) * (1 << 22))


def test_a_batch_of_same_size_images_resizes_as_each_alone(monkeypatch):
    """Also when the batch is resized a few images at a time (its float64 copy too large)."""
    from attgmae.data import pil_exact

    rng = np.random.default_rng(6)
    images = rng.integers(0, 256, (5, 3, 60, 80), np.uint8)
    batch = resize_like_pil(torch.from_numpy(images), (30, 50), Image.BILINEAR)
    monkeypatch.setattr(pil_exact, "CHUNK_BYTES", 2 * 8 * 3 * 60 * 80)  # two images a call
    assert torch.equal(resize_like_pil(torch.from_numpy(images), (30, 50), Image.BILINEAR), batch)
    for i in range(5):
        alone = resize_like_pil(torch.from_numpy(images[i : i + 1]), (30, 50), Image.BILINEAR)
        assert torch.equal(batch[i], alone[0])


class _Sizes(Dataset):
    """Item i: a uint8 image of its own size filled with i, or None for every third."""

    def __len__(self):
        return 7

    def __getitem__(self, i):
        return None if i % 3 == 2 else torch.full((5 + i, 9 - i, 3), i, dtype=torch.uint8)


def test_a_packed_batch_gives_back_every_item_and_its_gaps():
    items = [_Sizes()[i] for i in range(7)] + [torch.arange(5, dtype=torch.uint8)]
    packed = pack(items)
    assert packed.data.dim() == 1 and len(packed) == 8
    for want, got in zip(items, packed.items()):
        assert (want is None and got is None) or torch.equal(want, got)
    assert pack([None, None]).items() == [None, None]


def test_a_batch_over_its_budget_has_its_largest_items_finished_first():
    """Above the budget the largest items are replaced by their finished (smaller) form until
    the batch fits, and only those are marked ready; an item that cannot be finished stays."""
    sizes = [10, 1000, 50, None, 500, 700]
    items = [None if n is None else torch.full((n,), i, dtype=torch.uint8)
             for i, n in enumerate(sizes)]  # fmt: skip
    finished = []

    def finish(item):
        finished.append(item.numel())
        return None if item.numel() == 700 else item[:4].clone()  # 700: cannot be finished

    batch = pack(items, budget_bytes=1200, finish=finish)
    assert finished == [1000, 700, 500]  # 2260 -> 1264; the 700 one stays; -> 768
    assert batch.ready == [False, True, False, False, True, False]
    assert batch.data.numel() == 10 + 4 + 50 + 4 + 700 <= 1200
    assert torch.equal(batch.items()[1], items[1][:4]) and torch.equal(batch.items()[5], items[5])
    assert pack(items, budget_bytes=5000, finish=finish).ready == [False] * 6  # fits: untouched
    assert pack(items).ready == [False] * 6 and len(finished) == 3


def _pack_in_worker(items):
    batch = pack(items)
    return batch, batch.data.is_shared()  # made in shared memory: not copied again to send


def test_packed_batches_cross_from_loader_workers_as_one_buffer():
    loader = DataLoader(_Sizes(), batch_size=4, num_workers=1, collate_fn=_pack_in_worker)
    batches, shared = zip(*loader)
    assert [len(b) for b in batches] == [4, 3] and all(shared)
    assert not pack([torch.ones(3, dtype=torch.uint8)]).data.is_shared()  # the main process
    got = [item for batch in batches for item in batch.items()]
    for i, item in enumerate(got):
        want = _Sizes()[i]
        assert (want is None and item is None) or torch.equal(want, item), i


@pytest.mark.parametrize("budget", [None, 200 * 200 * 3])
def test_the_device_evaluation_transform_through_a_loader_is_the_protocols_pixels(
    tmp_path, monkeypatch, budget
):
    """DeviceEvalPixels as the extraction runs it: the workers decode, the batch is packed,
    the device (here the CPU) resizes and crops: eval_transform's pixels, bit for bit; also
    when a small budget per image makes the workers crop the largest images themselves."""
    from attgmae.eval.features import ImageSplit, LabelledImages, make_loader
    from attgmae.eval.transforms import DeviceEvalPixels

    rng = np.random.default_rng(7)
    keys = []
    for i, size in enumerate(((400, 390), (333, 500), (400, 390), (300, 200), (90, 120))):
        keys.append(f"c/{i}.JPEG")
        (tmp_path / "c").mkdir(exist_ok=True)
        Image.fromarray(photo_like_image(rng, size)).save(tmp_path / keys[-1], quality=90)
    split = ImageSplit(tmp_path, keys, np.arange(len(keys)), ["c"])
    transform = DeviceEvalPixels(112, 128)
    if budget is not None:
        monkeypatch.setattr(transform, "BUDGET_ITEM_BYTES", budget)
    loader = make_loader(LabelledImages(split, transform), 4, 1, "cpu")
    protocol = eval_transform(112, 128)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
    seen, ready = [], []
    for packed, labels, rows in loader:
        assert budget is None or packed.data.numel() <= len(rows) * budget
        ready += packed.ready
        held = packed.held  # the worker's kept buffer, out of the worker
        pixels = transform.on_device(packed, torch.device("cpu"))
        assert int(held[0]) == 0  # given back once the pixels are made
        assert pixels.shape == (len(rows), 3, 112, 112) and pixels.dtype == torch.uint8
        for image, label, row in zip(pixels, labels.tolist(), rows.tolist()):
            with Image.open(tmp_path / keys[row]) as pil:
                want = ((protocol(pil.convert("RGB")) * std + mean) * 255).round()
            np.testing.assert_array_equal(image.float().numpy(), want.numpy(), err_msg=keys[row])
            seen.append((row, label))
    assert seen == [(i, i) for i in range(len(keys))]
    assert ready == ([False] * 5 if budget is None else [True, True, True, False, False])
