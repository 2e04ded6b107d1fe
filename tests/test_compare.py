"""`attg-maps compare`: one row per image, the image then each store's map overlaid (Figure 4)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from attgmae.cli.maps import main
from attgmae.core.listing import list_images
from attgmae.pipelines.compare import spread_keys
from attgmae.store import open_store, write_store


@pytest.fixture(scope="module")
def stores(example_root, tmp_path_factory):
    """Two stores over the example's training images: a left-to-right ramp and its mirror."""
    root = example_root / "train"
    keys = list_images(root)
    ramp = np.tile(np.linspace(0, 1, 14, dtype=np.float32), (14, 1))  # [14, 14]
    out = tmp_path_factory.mktemp("stores")
    left = write_store(out / "ramp.zarr", keys, np.repeat(ramp[None], len(keys), 0), method="ramp")
    ok = np.ones(len(keys), bool)
    ok[1] = False  # one image failed in the second store
    right = write_store(out / "mirror.h5", keys, np.repeat(ramp[None, :, ::-1], len(keys), 0),
                        method="mirror", ok=ok, errors={keys[1]: "truncated image"})
    return root, keys, left, right


def _pixels(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB")).astype(int)


def test_grid_has_a_row_per_key_and_a_column_per_store(stores, tmp_path, capsys):
    root, keys, left, right = stores
    one = tmp_path / "one.png"
    assert main(["compare", "--stores", str(left), "--images", str(root), "--keys", keys[0],
                 "-o", str(one)]) == 0
    assert "wrote" in capsys.readouterr().out
    three = tmp_path / "three.png"
    assert main(["compare", "--stores", str(left), str(right), "--images", str(root),
                 "--keys", keys[0], keys[2], keys[4], "-o", str(three)]) == 0
    h1, w1 = _pixels(one).shape[:2]
    h3, w3 = _pixels(three).shape[:2]
    assert h3 > 2.5 * h1 * 0.8 and w3 > w1  # three rows instead of one, one more column


def test_overlay_follows_the_map(stores, tmp_path):
    """The ramp is blue on the left and red on the right of the image; the mirror the reverse."""
    root, keys, left, right = stores
    out = tmp_path / "grid.png"
    assert main(["compare", "--stores", str(left), str(right), "--images", str(root),
                 "--keys", keys[0], "-o", str(out), "--alpha", "1.0"]) == 0
    pixels = _pixels(out)
    # the three panels sit side by side; find the overlaid ones by their saturated colours
    reddish = (pixels[..., 0] > 180) & (pixels[..., 2] < 80)
    bluish = (pixels[..., 2] > 180) & (pixels[..., 0] < 80)
    columns_red = np.flatnonzero(reddish.any(axis=0))
    columns_blue = np.flatnonzero(bluish.any(axis=0))
    width = pixels.shape[1]
    # ramp panel (second third): blue before red; mirror panel (last third): red before blue
    second = slice(width // 3, 2 * width // 3)
    red2 = columns_red[(columns_red >= second.start) & (columns_red < second.stop)]
    blue2 = columns_blue[(columns_blue >= second.start) & (columns_blue < second.stop)]
    assert len(red2) and len(blue2) and blue2.mean() < red2.mean()
    third = slice(2 * width // 3, width)
    red3 = columns_red[(columns_red >= third.start) & (columns_red < third.stop)]
    blue3 = columns_blue[(columns_blue >= third.start) & (columns_blue < third.stop)]
    assert len(red3) and len(blue3) and red3.mean() < blue3.mean()


def test_default_keys_and_missing_maps(stores, tmp_path):
    root, keys, left, right = stores
    picked = spread_keys([open_store(left), open_store(right)], 4)
    assert len(picked) == 4 and keys[1] not in picked and picked[0] == keys[0]
    assert picked == sorted(picked) and picked[-1] == keys[-1]
    out = tmp_path / "default.png"
    assert main(["compare", "--stores", str(left), str(right), "--images", str(root),
                 "--num", "3", "-o", str(out)]) == 0
    assert out.is_file()
    # a key that failed in one store is shown with a note, not refused
    assert main(["compare", "--stores", str(left), str(right), "--images", str(root),
                 "--keys", keys[1], "-o", str(tmp_path / "failed.png")]) == 0


def test_bad_input_exit_2(stores, tmp_path, capsys):
    root, keys, left, _ = stores
    cases = [
        (["--stores", str(tmp_path / "none.zarr"), "--images", str(root), "--keys", keys[0]],
         "none.zarr"),
        (["--stores", str(left), "--images", str(root), "--keys", "no/such.JPEG"], "no/such.JPEG"),
        (["--stores", str(left), "--images", str(tmp_path), "--keys", keys[0]], keys[0]),
    ]
    for argv, message in cases:
        assert main(["compare", *argv, "-o", str(tmp_path / "x.png")]) == 2
        err = capsys.readouterr().err
        assert "error:" in err and message in err
    assert not (tmp_path / "x.png").exists()


def test_store_maps_row_by_row_with_a_key_twice(stores):
    """A key asked for twice gets its map in both rows (not zeros in the second)."""
    from attgmae.pipelines.compare import _store_maps

    _, keys, left, right = stores
    asked = [keys[0], keys[1], keys[0]]
    maps, notes = _store_maps(open_store(right), asked)
    assert notes == [None, "failed", None]
    np.testing.assert_array_equal(maps[2], maps[0])
    assert maps[0].max() == 1.0 and not maps[1].any()
