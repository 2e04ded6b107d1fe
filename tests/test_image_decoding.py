"""The fast decode and resize paths give the originals' pixels: decode_rgb equals PIL's
``open().convert("RGB")`` on photo-like JPEGs of every kind (torchvision's decoder where it
applies, PIL's everywhere else); the stage-1 resize and the evaluation transform stay within 1
grey level of PIL's, their passes in PIL's order; deep grayscale of any byte order is scaled, and
images above the pixel limit are refused from their header."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms
from torchvision.transforms import InterpolationMode

from attgmae.data import images
from attgmae.data.images import ImageDecodeError, decode_rgb
from attgmae.data.map_inputs import DecodedImages, resize_uint8
from attgmae.data.photo_like import photo_like_image
from attgmae.data.pil_resize import pil_resizes_height_first
from attgmae.eval.transforms import EvalPixels


def _pil_rgb(path) -> np.ndarray:
    with Image.open(path) as img:  # the originals' loader (torchvision's ImageFolder)
        return np.asarray(img.convert("RGB"))


@pytest.fixture(scope="module")
def photo():
    return photo_like_image(np.random.default_rng(0), (200, 150))


@pytest.fixture
def fast_calls(monkeypatch):
    """Counts the images torchvision's decoder returned."""
    calls = []
    real = images._fast_jpeg

    def counted(data):
        result = real(data)
        calls.append(result is not None)
        return result

    monkeypatch.setattr(images, "_fast_jpeg", counted)
    return calls


JPEG_KINDS = {  # name -> (PIL mode, save options)
    "baseline_420": ("RGB", {}),
    "baseline_444": ("RGB", {"subsampling": 0}),
    "baseline_422": ("RGB", {"subsampling": 1}),
    "progressive": ("RGB", {"progressive": True}),
    "optimized_q75": ("RGB", {"optimize": True, "quality": 75}),
    "grayscale": ("L", {}),
    "cmyk": ("CMYK", {}),
}


def test_jpegs_of_every_kind_decode_to_pils_pixels(photo, tmp_path, fast_calls):
    for name, (mode, options) in JPEG_KINDS.items():
        path = tmp_path / f"{name}.JPEG"
        Image.fromarray(photo).convert(mode).save(path, **{"quality": 90, **options})
        got, want = decode_rgb(path), _pil_rgb(path)
        assert got.dtype == np.uint8 and got.shape == want.shape == (150, 200, 3), name
        assert got.flags.c_contiguous and got.flags.writeable
        assert np.abs(got.astype(int) - want).max() <= 1, name
    assert sum(fast_calls) == 5  # the colour ones took torchvision's path; L and CMYK PIL's


def test_what_the_fast_decoder_refuses_gets_pils_result(photo, tmp_path, monkeypatch):
    buffer = io.BytesIO()
    Image.fromarray(photo).save(buffer, format="JPEG", quality=90)
    (tmp_path / "truncated.jpg").write_bytes(buffer.getvalue()[:3000])
    with pytest.raises(ImageDecodeError, match="truncated"):
        decode_rgb(tmp_path / "truncated.jpg")
    (tmp_path / "whole.jpg").write_bytes(buffer.getvalue())
    monkeypatch.setattr(images, "jpeg_decoder", lambda: None)  # a torchvision without it
    np.testing.assert_array_equal(
        decode_rgb(tmp_path / "whole.jpg"), _pil_rgb(tmp_path / "whole.jpg")
    )

    def refuses(data):
        raise RuntimeError("unsupported marker")

    monkeypatch.setattr(images, "jpeg_decoder", lambda: refuses)
    np.testing.assert_array_equal(
        decode_rgb(tmp_path / "whole.jpg"), _pil_rgb(tmp_path / "whole.jpg")
    )


def test_stage1_resize_is_pils_bilinear_within_one_grey_level():
    """Landscape, portrait (PIL 13 runs those vertical pass first: in torchvision's order 20% of
    the pixels were 1 off), enlarged."""
    rng = np.random.default_rng(1)
    sizes = ((400, 390), (500, 375), (333, 500), (240, 640), (160, 120), (1024, 683))
    for size in sizes:
        image = photo_like_image(rng, size)
        want = np.asarray(Image.fromarray(image).resize((224, 224), Image.BILINEAR))
        diff = np.abs(resize_uint8(image).astype(int) - want)
        assert diff.max() <= 1 and diff.mean() < 0.01, size


def _two_passes(image: Image.Image, size, height_first: bool) -> np.ndarray:
    width, height = image.size
    middle = (width, size[1]) if height_first else (size[0], height)
    first = Image.fromarray(np.asarray(image.resize(middle, Image.BILINEAR)).copy())
    return np.asarray(first.resize(size, Image.BILINEAR))


@pytest.mark.parametrize(
    "size, out",
    [((400, 390), (224, 224)), ((333, 500), (224, 224)), ((300, 900), (256, 768)),
     ((257, 1000), (256, 996)), ((100, 600), (60, 420)), ((600, 100), (300, 50)),
     ((500, 300), (1000, 150)), ((200, 200), (256, 256)), ((300, 400), (256, 341))],
)  # fmt: skip
def test_the_pass_order_is_the_installed_pils(size, out):
    """pil_resizes_height_first names the order PIL's own resize takes (its two orders round
    differently on noise): the rule torchvision's passes and EvalPixels follow."""
    noise = np.random.default_rng(0).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    image = Image.fromarray(noise)
    whole = np.asarray(image.resize(out, Image.BILINEAR))
    height_first = pil_resizes_height_first(*size, *out)
    assert np.array_equal(whole, _two_passes(image, out, height_first))
    assert not np.array_equal(whole, _two_passes(image, out, not height_first))


def test_evaluation_pixels_are_the_protocol_transforms_within_one_grey_level():
    """EvalPixels against Resize(256, bicubic) + CenterCrop(224) on PIL images (DINO's
    eval_knn.py, MAE's linear-probe validation), before ToTensor: within 1 grey level on every
    value, landscape, portrait, tall (PIL's vertical pass first), enlarged, a side of exactly
    256, other crop sizes; noise too (the hardest case for the band of rows read)."""
    rng = np.random.default_rng(2)
    sizes = ((400, 390), (375, 500), (500, 333), (257, 1000), (300, 900), (1000, 300),
             (160, 120), (300, 224), (256, 256), (256, 300), (300, 256), (224, 224))  # fmt: skip
    for crop, resize in ((224, 256), (112, 128)):
        protocol = transforms.Compose(
            [
                transforms.Resize(resize, interpolation=InterpolationMode.BICUBIC),
                transforms.CenterCrop(crop),
            ]
        )
        for size in sizes:
            for image in (photo_like_image(rng, size),
                          rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)):  # fmt: skip
                want = np.asarray(protocol(Image.fromarray(image)))
                got = EvalPixels(crop, resize)(image)
                assert got.dtype == torch.uint8 and tuple(got.shape) == (3, crop, crop)
                assert got.is_contiguous()
                diff = np.abs(got.permute(1, 2, 0).numpy().astype(int) - want)
                assert diff.max() <= 1 and diff.mean() < 0.01, (size, crop)


@pytest.mark.parametrize("dtype", [">u2", "<u2", "<i4", "<f4"])
def test_deep_grayscale_of_any_byte_order_is_scaled_not_clipped(tmp_path, dtype):
    """16-bit big- and little-endian (PIL I;16B, I;16), 32-bit integer (I) and float (F)
    TIFFs: value / 257, as 16-bit PNGs (PIL's convert would make them almost white)."""
    rng = np.random.default_rng(3)
    grey = rng.integers(0, 65536, (20, 30)).astype(dtype)
    path = tmp_path / "deep.tif"
    Image.fromarray(grey).save(path)
    got = decode_rgb(path)
    assert got.shape == (20, 30, 3) and (got[..., 0] == got[..., 2]).all()
    assert np.abs(got[..., 0].astype(int) - grey.astype(np.float64) / 257.0).max() <= 1
    assert got.mean() < 200  # the clipped decode was near 255 everywhere


def test_images_above_the_limit_are_refused_before_decoding(photo, tmp_path, monkeypatch):
    """PIL only warns between 1x and 2x its limit (and decodes); the limit is refused from the
    header, the reason recorded like any failure."""
    Image.fromarray(photo[:30, :40]).save(tmp_path / "big.png")  # 1,200 pixels
    Image.fromarray(photo[:30, :30]).save(tmp_path / "fits.png")  # 900
    Image.fromarray(photo[:30, :40]).save(tmp_path / "big.jpg")
    monkeypatch.setattr(images, "MAX_PIXELS", 1000)

    def no_decoding(self, *args):
        raise AssertionError("decoded an image above the limit")

    with monkeypatch.context() as patch:
        patch.setattr(Image.Image, "load", no_decoding)
        patch.setattr(images, "_fast_jpeg", no_decoding)
        for name in ("big.png", "big.jpg"):
            with pytest.raises(ImageDecodeError, match="too large.*1,200 pixels") as caught:
                decode_rgb(tmp_path / name)
            assert "limit is 1,000" in caught.value.reason
    assert decode_rgb(tmp_path / "fits.png").shape == (30, 30, 3)
    _, pixels, reason, _ = DecodedImages(tmp_path, ["big.png"])[0]
    assert pixels is None and reason.startswith("image too large")
    for name in ("big.png", "big.jpg"):  # --decode gpu: no bytes sent on to the GPU either
        _, payload, reason, _ = DecodedImages(tmp_path, [name], on_device="decode")[0]
        assert payload is None and reason.startswith("image too large"), name


def test_maps_from_the_fast_pixels_stay_within_the_documented_tolerance():
    """DINO, TokenCut and Grad-CAM maps (fp32, seeded random networks) of photo-like images from
    the pipeline's pixels against those from PIL's resize (today's and the originals' input):
    well inside the bf16 tolerance of docs/maps.md."""
    import torch

    from attgmae.data.map_inputs import normalize_batch, to_model_input
    from attgmae.maps.agreement import agreement, within_tolerance
    from attgmae.maps.dino import dino_maps, dino_outputs
    from attgmae.maps.gradcam import gradcam_maps
    from attgmae.maps.tokencut import tokencut_maps
    from attgmae.models.backbones import load_dino_vit, load_resnet50

    rng = np.random.default_rng(4)
    photos = [photo_like_image(rng) for _ in range(3)]
    pil = np.stack(
        [np.asarray(Image.fromarray(p).resize((224, 224), Image.BILINEAR)) for p in photos]
    )
    ours, theirs = to_model_input(photos), normalize_batch(torch.from_numpy(pil))
    with pytest.warns(UserWarning):  # random weights
        vit, resnet = load_dino_vit(random_weights=True)[0], load_resnet50(random_weights=True)[0]
    with torch.no_grad():
        (attn_a, keys_a), (attn_b, keys_b) = (
            dino_outputs(vit, x, amp=False) for x in (ours, theirs)
        )
    pairs = {
        "dino": (dino_maps(attn_a).numpy(), dino_maps(attn_b).numpy()),
        "tokencut": (tokencut_maps(keys_a), tokencut_maps(keys_b)),
        "gradcam": tuple(gradcam_maps(resnet.eval(), x, amp=False).numpy() for x in (ours, theirs)),
    }
    for method, (a, b) in pairs.items():
        stats = agreement(a, b)
        assert within_tolerance(stats) and stats["mean_abs_diff"] < 0.002, (method, stats)
