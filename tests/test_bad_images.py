"""Bad images in a generate run: each is decoded correctly to RGB or recorded as failed with its
reason; the run finishes the rest, the stores list the failed keys, exit code 3 says some failed,
and `attg-maps verify` shows them."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from attgmae.cli.maps import main
from attgmae.data.images import ImageDecodeError, decode_rgb
from attgmae.store import STATUS_FAILED, STATUS_OK, open_store

EXPECTED_FAILURES = {
    "bad/zero_bytes.jpg": "empty",
    "bad/truncated.jpg": "truncated",
    "bad/not_an_image.jpg": "not an image",
    "bad/huge_header.png": "too large",
}
DECODABLE = ["ok/cmyk.jpg", "ok/grayscale.jpg", "ok/png_named.JPEG", "ok/exif_rotated.jpg",
             "ok/very_large.jpg", "ok/plain.png"]


def _jpeg_bytes(image: Image.Image, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90, **kwargs)
    return buffer.getvalue()


def _png_claiming(width: int, height: int) -> bytes:
    """A PNG header declaring width x height (PIL refuses it as a decompression bomb)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + crc

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    pixels = chunk(b"IDAT", zlib.compress(b"\0" * 16))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + pixels + chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def bad_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad_images")
    (root / "bad").mkdir()
    (root / "ok").mkdir()
    rng = np.random.default_rng(0)
    picture = np.zeros((120, 160, 3), np.uint8)
    picture[:, :80] = (230, 40, 40)  # red left half, textured right half
    picture[:, 80:] = rng.integers(0, 255, (120, 80, 3))
    image = Image.fromarray(picture)

    (root / "bad/zero_bytes.jpg").write_bytes(b"")
    whole = _jpeg_bytes(image)
    (root / "bad/truncated.jpg").write_bytes(whole[: len(whole) // 2])
    (root / "bad/not_an_image.jpg").write_text("this is a text file, not a JPEG\n")
    (root / "bad/huge_header.png").write_bytes(_png_claiming(30000, 30000))

    (root / "ok/cmyk.jpg").write_bytes(_jpeg_bytes(image.convert("CMYK")))
    (root / "ok/grayscale.jpg").write_bytes(_jpeg_bytes(image.convert("L")))
    image.save(root / "ok/png_named.JPEG", format="PNG")
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    (root / "ok/exif_rotated.jpg").write_bytes(_jpeg_bytes(image, exif=exif))
    yy, xx = np.mgrid[0:3000, 0:4000]
    large = np.stack([xx % 256, yy % 256, (xx + yy) % 256], axis=-1).astype(np.uint8)
    Image.fromarray(large).save(root / "ok/very_large.jpg", quality=80)  # 12 MP
    image.save(root / "ok/plain.png")
    return root


@pytest.fixture(scope="module")
def bad_run(bad_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("maps")
    code = main(["generate", str(bad_root), "--out", str(out), "--methods", "dino,random",
                 "--random_weights", "--device", "cpu", "--batch_size", "4", "--num_workers", "2",
                 "--no_progress"])
    return code, out


def test_exit_code_3_and_the_failures_listed_with_reasons(bad_run, capsys):
    code, out = bad_run
    assert code == 3
    for method in ("dino", "random"):
        store = open_store(out / f"{method}.zarr")
        keys = list(store.keys)
        assert sorted(keys) == sorted([*EXPECTED_FAILURES, *DECODABLE])
        assert set(store.failed) == set(EXPECTED_FAILURES)
        for key, word in EXPECTED_FAILURES.items():
            assert word in store.failed[key].lower(), store.failed[key]
            assert store.status[keys.index(key)] == STATUS_FAILED
            assert not store.get(key).any()  # failed rows are zeros
        for key in DECODABLE:
            assert store.status[keys.index(key)] == STATUS_OK
            assert store.get(key).max() == 1.0


def test_decodable_oddities_are_mapped_from_their_true_rgb_pixels(bad_run, bad_root):
    from attgmae.data.map_inputs import to_model_input
    from attgmae.maps.dino import dino_maps, dino_outputs
    from attgmae.models.backbones import load_dino_vit

    _, out = bad_run
    images = [decode_rgb(bad_root / key) for key in DECODABLE]
    assert all(im.dtype == np.uint8 and im.ndim == 3 and im.shape[2] == 3 for im in images)
    # EXIF orientation is not applied, as the original code's loader (ImageFolder / PIL) does
    as_stored = images[DECODABLE.index("ok/exif_rotated.jpg")]
    assert as_stored.shape == (120, 160, 3)
    np.testing.assert_array_equal(
        as_stored, np.asarray(Image.open(bad_root / "ok/exif_rotated.jpg").convert("RGB"))
    )
    cmyk = images[DECODABLE.index("ok/cmyk.jpg")]
    assert np.abs(cmyk[:, :70].astype(int) - (230, 40, 40)).mean() < 20

    with pytest.warns(UserWarning):
        vit, _ = load_dino_vit(random_weights=True)
    with torch.no_grad():
        cls_attn, _ = dino_outputs(vit, to_model_input(images))
    expected = dino_maps(cls_attn).numpy()
    got = open_store(out / "dino.zarr").get_batch(DECODABLE)
    np.testing.assert_allclose(got, expected, atol=1e-3)
    # and not from the pixels turned upright by the EXIF tag
    with torch.no_grad():
        upright = np.asarray(
            ImageOps.exif_transpose(Image.open(bad_root / "ok/exif_rotated.jpg")).convert("RGB")
        )
        wrong = dino_maps(dino_outputs(vit, to_model_input([upright]))[0]).numpy()[0]
    assert np.abs(got[DECODABLE.index("ok/exif_rotated.jpg")] - wrong).max() > 0.05


def test_summary_and_verify_show_the_failed_keys(bad_root, tmp_path, capsys):
    out = tmp_path / "maps"
    code = main(["generate", str(bad_root), "--out", str(out), "--methods", "random",
                 "--device", "cpu", "--num_workers", "0", "--no_progress"])
    assert code == 3
    err = capsys.readouterr().err
    for key, word in EXPECTED_FAILURES.items():
        line = next(line for line in err.splitlines() if line.startswith(f"FAILED\t{key}\t"))
        assert word in line.lower()
    assert "exit code 3" in err
    assert main(["verify", str(out / "random.zarr")]) != 0
    report = capsys.readouterr().out
    assert "4 images failed" in report
    for key in EXPECTED_FAILURES:
        assert key in report


def test_decode_rgb_modes_as_pil_convert_and_16_bit_scaled(tmp_path):
    """Palette (with transparency), grey+alpha and bilevel images give PIL's convert('RGB')
    pixels; 16-bit greyscale is scaled to 8 bit (PIL's convert would clip it to white)."""
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8))
    rgb.convert("P").save(tmp_path / "palette.png", transparency=3)
    rgb.convert("LA").save(tmp_path / "grey_alpha.png")
    rgb.convert("1").save(tmp_path / "bilevel.bmp")
    for name in ("palette.png", "grey_alpha.png", "bilevel.bmp"):
        with Image.open(tmp_path / name) as img:
            expected = np.asarray(img.convert("RGB"))
        got = decode_rgb(tmp_path / name)
        assert got.dtype == np.uint8 and got.shape == (30, 40, 3), name
        np.testing.assert_array_equal(got, expected, err_msg=name)
    grey16 = rng.integers(0, 65536, (30, 40)).astype(np.uint16)
    Image.fromarray(grey16).save(tmp_path / "grey16.png")
    got = decode_rgb(tmp_path / "grey16.png")
    assert got.shape == (30, 40, 3)
    np.testing.assert_array_equal(got[..., 0], got[..., 2])
    assert np.abs(got[..., 0].astype(int) - grey16 / 257.0).max() <= 1


def test_decode_rgb_turns_any_decoder_error_into_a_named_failure(tmp_path, monkeypatch):
    path = tmp_path / "odd.jpg"
    path.write_bytes(_jpeg_bytes(Image.new("L", (8, 8))))

    def broken_convert(*args, **kwargs):
        raise struct.error("unpack requires a buffer of 4 bytes")

    monkeypatch.setattr(Image.Image, "convert", broken_convert)
    with pytest.raises(ImageDecodeError, match="odd.jpg.*error.*unpack") as caught:
        decode_rgb(path)
    assert caught.value.path == str(path)
