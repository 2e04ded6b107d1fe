"""`attg-maps import / export / verify / inspect / show / make-example`, run as a user would."""

from __future__ import annotations

import json
import tarfile
import zipfile

import cv2
import h5py
import numpy as np
import pytest
import torch
import zarr

from attgmae.cli.maps import main
from attgmae.store import open_store


def run(*argv) -> int:
    return main([str(a) for a in argv])


def grid(seed: int, size: int = 14) -> np.ndarray:
    return np.random.default_rng(seed).random((size, size)).astype(np.float32)


def minmax(m):
    return (m - m.min()) / (m.max() - m.min())


def test_make_example_and_import_true_masks(tmp_path, capsys):
    assert run("make-example", tmp_path / "ex", "--train-per-class", 2, "--val_per_class", 1) == 0
    masks = tmp_path / "ex/masks/train"
    assert run("import", masks, tmp_path / "gt.zarr", "--images", tmp_path / "ex/train") == 2
    err = capsys.readouterr().err
    assert "circle/circle_0000.png: map is 120x160, not 14x14" in err and "--resize" in err
    assert not (tmp_path / "gt.zarr").exists() and not (tmp_path / "gt.zarr.partial").exists()
    assert (
        run("import", masks, tmp_path / "gt.zarr", "--images", tmp_path / "ex/train", "--resize")
        == 0
    )
    store = open_store(tmp_path / "gt.zarr")
    assert list(store.keys)[0] == "circle/circle_0000.JPEG" and len(store) == 8
    # the object region (mask area-resampled) is where the map is high
    mask = cv2.imread(str(masks / "circle/circle_0000.png"), cv2.IMREAD_UNCHANGED) / 255.0
    expected = minmax(cv2.resize(mask.astype(np.float32), (14, 14), interpolation=cv2.INTER_AREA))
    np.testing.assert_allclose(store.get("circle/circle_0000.JPEG"), expected, atol=1e-3)
    assert run("verify", tmp_path / "gt.zarr", "--images", tmp_path / "ex/train") == 0


def test_import_folder_tree_npy_pt_png_keys(tmp_path):
    src = tmp_path / "maps"
    (src / "a").mkdir(parents=True)
    np.save(src / "a/x.JPEG.npy", grid(0) * 5)
    torch.save(torch.from_numpy(grid(1)), src / "a/y.JPEG.pt")
    cv2.imwrite(str(src / "a/z.JPEG.png"), (grid(2) * 255).astype(np.uint8))
    cv2.imwrite(str(src / "w.JPEG.png"), (grid(3) * 65535).astype(np.uint16))
    (src / "README.txt").write_text("ignored")
    assert run("import", src, tmp_path / "s.h5", "--method", "published") == 0
    store = open_store(tmp_path / "s.h5")
    assert list(store.keys) == ["a/x.JPEG", "a/y.JPEG", "a/z.JPEG", "w.JPEG"]
    assert store.method == "published"
    np.testing.assert_allclose(store.get("a/x.JPEG"), minmax(grid(0)), atol=1e-3)
    np.testing.assert_allclose(store.get("a/y.JPEG"), minmax(grid(1)), atol=1e-3)
    z8 = (grid(2) * 255).astype(np.uint8).astype(np.float32)
    np.testing.assert_allclose(store.get("a/z.JPEG"), minmax(z8), atol=1e-3)
    w16 = (grid(3) * 65535).astype(np.uint16).astype(np.float32)
    np.testing.assert_allclose(store.get("w.JPEG"), minmax(w16), atol=1e-3)


def test_import_matches_images_by_stem(tmp_path):
    images = tmp_path / "images/cls"
    images.mkdir(parents=True)
    for name in ("p.JPEG", "q.png"):
        (images / name).write_bytes(b"x")
    src = tmp_path / "maps/cls"
    src.mkdir(parents=True)
    np.save(src / "p.npy", grid(0))
    np.save(src / "q.npy", grid(1))
    assert (
        run("import", tmp_path / "maps", tmp_path / "s.zarr", "--images", tmp_path / "images") == 0
    )
    assert list(open_store(tmp_path / "s.zarr").keys) == ["cls/p.JPEG", "cls/q.png"]
    np.save(src / "orphan.npy", grid(2))
    assert (
        run("import", tmp_path / "maps", tmp_path / "t.zarr", "--images", tmp_path / "images") == 2
    )


def test_import_npz_and_torch_dict(tmp_path):
    maps = {"b/2.JPEG": grid(0), "a/1.JPEG": grid(1)}
    np.savez(tmp_path / "m.npz", **maps)
    torch.save({k: torch.from_numpy(v) for k, v in maps.items()}, tmp_path / "m.pth")
    for src in ("m.npz", "m.pth"):
        out = tmp_path / f"{src}.zarr"
        assert run("import", tmp_path / src, out) == 0
        store = open_store(out)
        assert list(store.keys) == ["a/1.JPEG", "b/2.JPEG"]
        np.testing.assert_allclose(store.get("b/2.JPEG"), minmax(grid(0)), atol=1e-3)


def test_import_foreign_hdf5_and_zarr_layouts(tmp_path):
    keys = np.array([b"k/1.JPEG", b"k/0.JPEG"])
    maps = np.stack([grid(0), grid(1)])
    with h5py.File(tmp_path / "f.h5", "w") as f:
        f["attention"] = maps
        f["names"] = keys
        f["other"] = np.zeros((2, 3, 3))
    assert run("import", tmp_path / "f.h5", tmp_path / "a.zarr") == 2  # two 3-D arrays: ambiguous
    assert (
        run(
            "import",
            tmp_path / "f.h5",
            tmp_path / "a.zarr",
            "--maps-name",
            "attention",
            "--keys_name",
            "names",
        )
        == 0
    )
    np.testing.assert_allclose(
        open_store(tmp_path / "a.zarr").get("k/1.JPEG"), minmax(grid(0)), atol=1e-3
    )
    group = zarr.open_group(str(tmp_path / "f.zarr"), mode="w")
    group.create_array("maps", data=maps)
    group.create_array("keys", shape=(2,), dtype=str)[:] = np.array(["k/1.JPEG", "k/0.JPEG"])
    assert run("import", tmp_path / "f.zarr", tmp_path / "b.h5") == 0
    np.testing.assert_allclose(
        open_store(tmp_path / "b.h5").get("k/0.JPEG"), minmax(grid(1)), atol=1e-3
    )


def test_import_zip_and_tar_of_a_folder(tmp_path):
    folder = tmp_path / "maps"
    for i, cls in enumerate(["c", "c", "d"]):
        (folder / cls).mkdir(parents=True, exist_ok=True)
        np.save(folder / f"{cls}/{i}.JPEG.npy", grid(i))
    with zipfile.ZipFile(tmp_path / "m.zip", "w") as archive:
        for p in folder.rglob("*.npy"):
            archive.write(p, p.relative_to(folder).as_posix())
    with tarfile.open(tmp_path / "m.tar.gz", "w:gz") as archive:
        archive.add(folder, arcname="maps")  # one wrapping folder: stripped
    assert run("import", tmp_path / "m.zip", tmp_path / "z.zarr") == 0
    assert run("import", tmp_path / "m.tar.gz", tmp_path / "t.zarr") == 0
    for out in ("z.zarr", "t.zarr"):
        assert list(open_store(tmp_path / out).keys) == ["c/0.JPEG", "c/1.JPEG", "d/2.JPEG"]


@pytest.mark.parametrize("export_name", ["pub.zarr.zip", "pub.h5"])
def test_export_then_import_gives_identical_store(tmp_path, export_name):
    np.savez(tmp_path / "m.npz", **{f"c/{i}.JPEG": grid(i) for i in range(5)})
    assert run("import", tmp_path / "m.npz", tmp_path / "s.zarr", "--method", "dino") == 0
    assert run("export", tmp_path / "s.zarr", tmp_path / export_name) == 0
    manifest = (tmp_path / f"{export_name}.sha256").read_text().split()
    from attgmae.core.files import file_sha256

    assert manifest == [file_sha256(tmp_path / export_name), export_name]
    assert run("import", tmp_path / export_name, tmp_path / "back.zarr") == 0
    original, back = open_store(tmp_path / "s.zarr"), open_store(tmp_path / "back.zarr")
    assert list(original.keys) == list(back.keys)
    np.testing.assert_array_equal(original.read_all(), back.read_all())
    assert original.attrs == back.attrs
    # the export itself is a readable store (a .zarr.zip is read in place)
    published = open_store(tmp_path / export_name)
    np.testing.assert_array_equal(
        published.get_batch(["c/3.JPEG", "c/0.JPEG"]), original.get_batch(["c/3.JPEG", "c/0.JPEG"])
    )
    assert run("verify", tmp_path / export_name) == 0
    assert run("import", tmp_path / "m.npz", tmp_path / "new.zarr.zip") == 2


def test_bad_imports_are_named_and_leave_nothing(tmp_path, capsys):
    src = tmp_path / "maps"
    src.mkdir()
    np.save(src / "ok.JPEG.npy", grid(0))
    bad = grid(1)
    bad[3, 3] = np.nan
    np.save(src / "nan.JPEG.npy", bad)
    np.save(src / "big.JPEG.npy", grid(2, size=28))
    (src / "broken.JPEG.npy").write_bytes(b"not numpy")
    np.save(src / "dup.JPEG.npy", grid(3))
    cv2.imwrite(str(src / "dup.JPEG.png"), (grid(3) * 255).astype(np.uint8))
    assert run("import", src, tmp_path / "s.zarr") == 2
    err = capsys.readouterr().err
    assert "nan.JPEG.npy: map holds NaN" in err
    assert "big.JPEG.npy: map is 28x28" in err
    assert "broken.JPEG.npy: unreadable" in err
    assert "duplicate key dup.JPEG" in err
    assert not (tmp_path / "s.zarr").exists() and not (tmp_path / "s.zarr.partial").exists()
    assert run("import", tmp_path / "missing", tmp_path / "s.zarr") == 2
    (tmp_path / "junk.zip").write_bytes(b"PK junk")
    assert run("import", tmp_path / "junk.zip", tmp_path / "s.zarr") == 2
    assert "cannot read archive" in capsys.readouterr().err


def test_no_normalize_keeps_values_and_refuses_out_of_range(tmp_path):
    np.savez(tmp_path / "m.npz", a=grid(0) * 0.5)
    assert run("import", tmp_path / "m.npz", tmp_path / "s.zarr", "--no-normalize") == 0
    np.testing.assert_allclose(open_store(tmp_path / "s.zarr").get("a"), grid(0) * 0.5, atol=1e-3)
    np.savez(tmp_path / "n.npz", a=grid(0) * 3)
    assert run("import", tmp_path / "n.npz", tmp_path / "t.zarr", "--no_normalize") == 2


def test_verify_reports_problems(tmp_path, capsys):
    images = tmp_path / "img/c"
    images.mkdir(parents=True)
    (images / "a.JPEG").write_bytes(b"x")
    (images / "b.JPEG").write_bytes(b"x")
    np.savez(tmp_path / "m.npz", **{"c/a.JPEG": grid(0), "c/zzz.JPEG": grid(1)})
    assert run("import", tmp_path / "m.npz", tmp_path / "s.h5") == 0
    assert run("verify", tmp_path / "s.h5") == 0
    assert run("verify", tmp_path / "s.h5", "--images", tmp_path / "img") == 1
    out = capsys.readouterr().out
    assert "1 images have no map: c/b.JPEG" in out and "1 maps have no image: c/zzz.JPEG" in out
    with h5py.File(tmp_path / "s.h5", "r+") as f:
        f["maps"][0, 0, 0] = np.nan
    assert run("verify", tmp_path / "s.h5") == 1
    assert "NaN/Inf maps: c/a.JPEG" in capsys.readouterr().out
    assert run("verify", tmp_path / "none.zarr") == 1


def test_inspect_and_show(tmp_path, capsys, example_root):
    assert (
        run(
            "import",
            example_root / "masks/train",
            tmp_path / "gt.zarr",
            "--images",
            example_root / "train",
            "--resize",
            "--method",
            "truth",
        )
        == 0
    )
    capsys.readouterr()
    assert run("inspect", tmp_path / "gt.zarr", "--json") == 0
    info = json.loads(capsys.readouterr().out)
    assert info["method"] == "truth" and info["count"] == 24 and info["failed"] == 0
    assert 0 < info["value_stats"]["mean"] < 0.5 and info["value_stats"]["max"] == 1.0
    out = tmp_path / "grid.png"
    assert (
        run(
            "show",
            tmp_path / "gt.zarr",
            "--images",
            example_root / "train",
            "--keys",
            "circle/circle_0000.JPEG",
            "cross/cross_0001.JPEG",
            "--tau",
            "0.75",
            "-o",
            out,
        )
        == 0
    )
    image = cv2.imread(str(out))
    assert image is not None and image.shape[0] > 300 and image.shape[1] > 800
    assert (
        run(
            "show",
            tmp_path / "gt.zarr",
            "--images",
            example_root / "train",
            "--keys",
            "nope.JPEG",
            "-o",
            out,
        )
        == 2
    )
