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


def test_each_map_follows_its_image(stores, tmp_path):
    """Viridis, one 0..1 scale: the ramp is dark (0) on the left of its panel and yellow (1) on
    the right; the mirror the reverse."""
    root, keys, left, right = stores
    out = tmp_path / "grid.png"
    assert main(["compare", "--stores", str(left), str(right), "--images", str(root),
                 "--keys", keys[0], "-o", str(out)]) == 0
    pixels = _pixels(out)
    width = pixels.shape[1]
    panels = pixels[:, : int(0.88 * width)]  # the colour bar (right) shows both ends too
    yellow = (panels[..., 0] > 200) & (panels[..., 1] > 200) & (panels[..., 2] < 120)
    dark = (panels[..., 0] < 90) & (panels[..., 1] < 40) & (panels[..., 2] > 60)
    columns_yellow = np.flatnonzero(yellow.any(axis=0))
    columns_dark = np.flatnonzero(dark.any(axis=0))
    middle = (columns_yellow.min() + columns_yellow.max()) / 2  # between the two map panels
    ramp_yellow = columns_yellow[columns_yellow < middle]
    ramp_dark = columns_dark[columns_dark < middle]
    mirror_yellow = columns_yellow[columns_yellow > middle]
    mirror_dark = columns_dark[columns_dark > middle]
    assert len(ramp_yellow) and len(ramp_dark) and ramp_dark.mean() < ramp_yellow.mean()
    assert len(mirror_yellow) and len(mirror_dark) and mirror_yellow.mean() < mirror_dark.mean()


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
