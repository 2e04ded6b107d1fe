"""Joint image + map geometry: the map is cropped, resampled and flipped exactly as its image."""

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from PIL import Image
from scipy.ndimage import map_coordinates
from torchvision.transforms import InterpolationMode, RandomResizedCrop

from attgmae.data.photo_like import photo_like_image
from attgmae.data.transforms import (
    JointTransform,
    crop_resize_image,
    crop_resize_maps,
    denormalize_images,
    normalize_images,
    sample_rrc_box,
)
from attgmae.guidance import loss_weights


def test_rrc_box_statistics_match_torchvision():
    rng = np.random.default_rng(0)
    torch.manual_seed(0)
    height, width = 120, 160
    ours = np.array([sample_rrc_box(rng, height, width) for _ in range(4000)], dtype=float)
    ref = np.array([RandomResizedCrop.get_params(torch.empty(3, height, width), [0.2, 1.0],
                                                 [3 / 4, 4 / 3]) for _ in range(4000)], dtype=float)
    for boxes in (ours, ref):
        top, left, h, w = boxes.T
        assert np.all((top >= 0) & (left >= 0) & (top + h <= height) & (left + w <= width))
    area_ours = ours[:, 2] * ours[:, 3] / (height * width)
    area_ref = ref[:, 2] * ref[:, 3] / (height * width)
    assert abs(area_ours.mean() - area_ref.mean()) < 0.02
    assert abs(np.log(ours[:, 3] / ours[:, 2]).mean() - np.log(ref[:, 3] / ref[:, 2]).mean()) < 0.02
    assert abs(ours[:, 1].mean() - ref[:, 1].mean()) < 1.5


def test_rrc_fallback_is_torchvisions_center_crop():
    rng = np.random.default_rng(0)
    ref = RandomResizedCrop.get_params(torch.empty(3, 10, 1000), [0.2, 1.0], [3 / 4, 4 / 3])
    assert sample_rrc_box(rng, 10, 1000) == tuple(ref)


def test_image_crop_matches_the_mae_recipe_pil_bicubic():
    rng = np.random.default_rng(1)
    img = (rng.random((120, 160, 3)) * 255).astype(np.uint8)  # noise: the hardest case
    for box in [(0, 0, 120, 160), (10, 20, 80, 100), (31, 57, 60, 45), (5, 5, 12, 9)]:
        ours = crop_resize_image(img, box, 224, flip=False).numpy().astype(int)
        ref = TF.resized_crop(Image.fromarray(img), *box, [224, 224], InterpolationMode.BICUBIC)
        ref = np.asarray(ref).transpose(2, 0, 1).astype(int)
        diff = np.abs(ours - ref)
        assert diff.max() <= 2 and diff.mean() < 0.05  # PIL's filter up to rounding
    tall = photo_like_image(rng, (300, 600))  # a tall shrinking crop: PIL's vertical pass first
    ours = crop_resize_image(tall, (20, 10, 560, 260), 224, flip=False).numpy().astype(int)
    ref = TF.resized_crop(Image.fromarray(tall), 20, 10, 560, 260, [224, 224],
                          InterpolationMode.BICUBIC)  # fmt: skip
    diff = np.abs(ours - np.asarray(ref).transpose(2, 0, 1).astype(int))
    assert diff.max() <= 1 and diff.mean() < 0.01  # torchvision's order: 9 levels, mean 0.27
    flipped = crop_resize_image(img, (10, 20, 80, 100), 224, flip=True)
    assert torch.equal(flipped, crop_resize_image(img, (10, 20, 80, 100), 224, False).flip(-1))
    assert flipped.dtype == torch.uint8 and flipped.is_contiguous()


def test_map_crop_identity_flip_and_bilinear_reference():
    gen = torch.Generator().manual_seed(0)
    maps = torch.rand(3, 14, 14, generator=gen)
    full = torch.tensor([[0.0, 0.0, 1.0, 1.0]] * 3)
    no_flip = torch.zeros(3, dtype=torch.bool)
    torch.testing.assert_close(crop_resize_maps(maps, full, no_flip, 14), maps)
    torch.testing.assert_close(crop_resize_maps(maps, full, ~no_flip, 14), maps.flip(-1))
    boxes = torch.tensor([[0.0, 0.0, 0.5, 1.0], [0.1, 0.3, 0.7, 0.9], [0.25, 0.2, 0.6, 0.45]])
    flips = torch.tensor([False, True, False])
    got = crop_resize_maps(maps, boxes, flips, 14)
    for b in range(3):  # independent bilinear sampling at each output cell's center
        x0, y0, x1, y1 = boxes[b].tolist()
        centers = (np.arange(14) + 0.5) / 14
        xs = x0 + centers * (x1 - x0)
        ys = y0 + centers * (y1 - y0)
        if flips[b]:
            xs = xs[::-1]
        rows, cols = np.meshgrid(ys * 14 - 0.5, xs * 14 - 0.5, indexing="ij")
        ref = map_coordinates(maps[b].double().numpy(), [rows, cols], order=1, mode="nearest")
        np.testing.assert_allclose(got[b].numpy(), ref, atol=1e-5)
    assert crop_resize_maps(maps, boxes, flips, 7).shape == (3, 7, 7)  # e.g. a 7x7 patch grid


def _object_image():
    """168 x 126 grey image (12 x 9 px per map cell), a red 60 x 54 px object left of centre
    (so a mirrored map misses it), and its map."""
    img = np.full((126, 168, 3), 128, dtype=np.uint8)
    obj = np.zeros((126, 168), dtype=np.float32)
    obj[27:81, 12:72] = 1
    img[obj > 0] = (230, 20, 20)
    cell_map = obj.reshape(14, 9, 14, 12).mean(axis=(1, 3))  # object coverage per map cell
    return img, torch.from_numpy(cell_map)


def _object_coverage(image):
    """Fraction of object (red) pixels in each 16 x 16 patch of a [3, 224, 224] crop."""
    arr = image.numpy().astype(int)
    red = (arr[0] > 180) & (arr[1] < 90) & (arr[2] < 90)
    return red.reshape(14, 16, 14, 16).mean(axis=(1, 3))


@pytest.mark.parametrize("aug", ["rrc", "resize"])
def test_object_patches_keep_high_weight_after_any_crop_and_flip(aug):
    img, cell_map = _object_image()
    transform = JointTransform(224, aug)
    flip_gain, flipped_seen, checked = [], 0, 0
    for seed in range(40):
        image, box, flip = transform(img, np.random.default_rng(seed))
        coverage = _object_coverage(image)
        weights = loss_weights(
            crop_resize_maps(cell_map[None], torch.from_numpy(box)[None], torch.tensor([flip]), 14),
            tau=0.75,
        )[0].reshape(14, 14).numpy()
        on_object, background = coverage >= 0.99, coverage == 0
        if on_object.sum() >= 2 and background.sum() >= 2:
            checked += 1
            flipped_seen += flip
            assert weights[on_object].mean() > 2.5  # top weight exp(1/0.75) = 3.79
            assert weights[background].mean() < 1.6  # background weight 1
            # every clearly-inside object patch outweighs every clearly-outside one
            assert np.median(weights[on_object]) > np.median(weights[background]) + 1.5
            if flip:  # the same crop without flipping the map puts the weight in the wrong place
                wrong = loss_weights(crop_resize_maps(cell_map[None], torch.from_numpy(box)[None],
                                                      torch.tensor([False]), 14), 0.75)
                wrong = wrong[0].reshape(14, 14).numpy()
                flip_gain.append(weights[on_object].mean() - wrong[on_object].mean())
    assert checked >= 10 and flipped_seen >= 3
    assert np.mean(flip_gain) > 1.0


def test_transform_is_deterministic_per_generator():
    img, _ = _object_image()
    t = JointTransform(224, "rrc")
    a = t(img, np.random.default_rng(7))
    b = t(img, np.random.default_rng(7))
    assert torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]
    assert a[0].dtype == torch.uint8 and a[0].shape == (3, 224, 224)
    with pytest.raises(ValueError):
        JointTransform(224, "bogus")


def test_normalize_roundtrip():
    x = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    torch.testing.assert_close(denormalize_images(normalize_images(x)), x.float() / 255)
