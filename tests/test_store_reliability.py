"""The map store when things go wrong (issue 22): interruptions and cleanup, reruns of killed
imports and exports, images replaced since their maps, a store replaced while it is read, bad
values and shapes, HDF5 files reaching outside themselves, declared sizes, extreme numbers."""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest
import zarr

from attgmae.cli.maps import main as maps_main
from attgmae.core.identity import changed_images, image_identities
from attgmae.data.pretrain_dataset import MapJoinError, join_maps
from attgmae.store import (
    MapStoreWriter,
    StoreError,
    StoreReplacedError,
    normalize_maps,
    open_store,
    swap,
    write_store,
)
from attgmae.store.backends import ZarrBackend
from attgmae.store.verify import verify_store

LAYOUT = {"chunk_rows": 2, "shard_rows": 4}


def run(*argv) -> int:
    return maps_main([str(a) for a in argv])


def keys_of(n: int) -> list[str]:
    return [f"c{i % 2}/img_{i:03d}.png" for i in range(n)]


def make_store(path, n=8, seed=0, **extra):
    keys = sorted(keys_of(n))
    maps = normalize_maps(np.random.default_rng(seed).random((n, 14, 14)))
    return write_store(path, keys, maps, method="m", labels=np.arange(n) % 2, **LAYOUT, **extra)


def content(path) -> tuple:
    """A store's keys and maps, read whole and checked (the store must be readable)."""
    store = open_store(path)
    return list(store.keys), store.load().maps.copy()


def tree(path: Path) -> dict:
    """Every file under ``path`` -> its bytes."""
    return {p.relative_to(path).as_posix(): p.read_bytes() for p in sorted(path.rglob("*"))
            if p.is_file()}  # fmt: skip


def npz_source(path, n=8, seed=0) -> Path:
    rng = np.random.default_rng(seed)
    np.savez(path, **{key: rng.random((14, 14)) for key in keys_of(n)})
    return path


# ---- 1. cleanup deletes only what this run created; an interruption leaves a whole store ----


def test_import_leaves_another_runs_partial_store_alone(tmp_path, capsys):
    """OUT.partial of an interrupted generate (other keys) survives an import that is refused."""
    out = tmp_path / "out.zarr"
    writer = MapStoreWriter(out, sorted(keys_of(6)), method="dino", **LAYOUT)
    writer.write_chunk(0, np.zeros((2, 14, 14)), np.ones(2, bool))  # a killed run's work
    before = tree(swap.partial_of(out))
    assert run("import", npz_source(tmp_path / "src.npz"), out) == 2
    assert "pass --overwrite to discard it" in capsys.readouterr().err
    assert tree(swap.partial_of(out)) == before  # not one file lost


class Interrupt:
    """Raises KeyboardInterrupt (a Ctrl-C) at one step of finalizing a store."""

    STEPS = ("final attributes", "marker", "old moved aside", "new moved in", "exchanged",
             "fsync", "cleanup")  # fmt: skip

    def __init__(self, monkeypatch, step: str, path: Path):
        self.step, self.path, self.fired = step, path, False
        real = {"rename": os.rename, "replace": os.replace, "fsync": swap.fsync_path}
        real_update = ZarrBackend.update_attrs
        real_marker = swap.write_text_atomic

        def fire(now: bool):
            if now and not self.fired:
                self.fired = True
                raise KeyboardInterrupt

        def rename(src, dst):
            fire(step == "old moved aside" and Path(src) == path)
            fire(step == "new moved in" and Path(dst) == path)  # (a rename moved it in, once)
            real["rename"](src, dst)

        def replace(src, dst):
            fire(step == "new moved in" and Path(dst) == path)
            real["replace"](src, dst)

        def fsync(p):
            fire(step == "fsync")
            real["fsync"](p)

        def update_attrs(p, attrs):
            fire(step == "final attributes" and attrs.get("complete"))
            real_update(p, attrs)

        def marker(p, text):
            fire(step == "marker")
            return real_marker(p, text)

        def exchange(a, b, real_exchange=swap.exchange):
            if step in ("old moved aside", "new moved in"):  # the two renames, no exchange
                return False
            done = real_exchange(a, b)
            fire(step == "exchanged" and done)
            return done

        def remove_partial(partial, real_remove=swap.remove_partial):
            fire(step == "cleanup")
            real_remove(partial)

        monkeypatch.setattr(swap.os, "rename", rename)
        monkeypatch.setattr(swap.os, "replace", replace)
        monkeypatch.setattr(swap, "fsync_path", fsync)
        monkeypatch.setattr(ZarrBackend, "update_attrs", staticmethod(update_attrs))
        monkeypatch.setattr(swap, "write_text_atomic", marker)
        monkeypatch.setattr(swap, "remove_partial", remove_partial)
        monkeypatch.setattr(swap, "exchange", exchange)


@pytest.mark.parametrize("step", Interrupt.STEPS)
def test_ctrl_c_at_any_step_of_import_overwrite_leaves_a_whole_store(tmp_path, monkeypatch,
                                                                     capsys, step):  # fmt: skip
    """After the interrupted `import --overwrite` the old or the new store is in place, whole;
    the rerun of the same command ends with the new one (and says so when it only finished)."""
    out = tmp_path / "out.zarr"
    source = npz_source(tmp_path / "new.npz", seed=1)
    assert run("import", npz_source(tmp_path / "old.npz", seed=0), out) == 0
    old = content(out)
    assert run("import", source, tmp_path / "expected.zarr") == 0
    new = content(tmp_path / "expected.zarr")

    with monkeypatch.context() as patched:
        interrupt = Interrupt(patched, step, out)
        assert run("import", source, out, "--overwrite") == 130
        assert interrupt.fired
    keys, maps = content(out)  # readable and whole, at once
    assert (keys, maps.tobytes()) in [(old[0], old[1].tobytes()), (new[0], new[1].tobytes())]
    finalized = (swap.partial_of(out) / swap.MARKER).exists()
    capsys.readouterr()

    assert run("import", source, out, "--overwrite") == 0
    assert "nothing else to do" in capsys.readouterr().out or not finalized
    keys, maps = content(out)
    assert keys == new[0] and np.array_equal(maps, new[1])
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("out")) == ["out.zarr"]


def test_a_rerun_of_an_import_killed_in_finalize_finishes_it_and_exits_0(tmp_path, monkeypatch,
                                                                        capsys):  # fmt: skip
    out = tmp_path / "out.h5"
    source = npz_source(tmp_path / "src.npz")
    real = {"rename": os.rename, "replace": os.replace}

    def killed(how):
        def move(src, dst):  # the finished store is marked, not in place yet
            if Path(dst) == out:
                raise KeyboardInterrupt
            real[how](src, dst)

        return move

    with monkeypatch.context() as patched:
        patched.setattr(swap.os, "rename", killed("rename"))
        patched.setattr(swap.os, "replace", killed("replace"))
        assert run("import", source, out) == 130
    assert not out.exists() and (swap.partial_of(out) / swap.MARKER).exists()
    capsys.readouterr()
    assert run("import", source, out) == 0  # not "already exists"
    assert "nothing else to do" in capsys.readouterr().out
    assert len(open_store(out).load()) == 8 and not swap.partial_of(out).exists()
    # another import in the way of a finished one still needs --overwrite
    assert run("import", npz_source(tmp_path / "other.npz", seed=3), out) == 2


def test_kill_9_during_export_or_import_leaves_nothing_in_tmpdir_and_the_rerun_cleans(tmp_path):
    store = make_store(tmp_path / "s.zarr")
    out = tmp_path / "s.h5"
    tmpdir = tmp_path / "tmpdir"
    tmpdir.mkdir()
    code = (
        "import os, sys; from attgmae.store import exporting\n"
        "def die(*a, **k): os._exit(137)\n"
        "exporting.shutil.move = die\n"  # the h5 copy is written in scratch: killed there
        f"exporting.export_store({str(store)!r}, {str(out)!r})\n"
    )
    env = {**os.environ, "TMPDIR": str(tmpdir), "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, timeout=120)
    assert proc.returncode == 137, proc.stderr.decode()
    assert list(tmpdir.iterdir()) == []  # no attg-export-* scratch in TMPDIR
    left = [p.name for p in tmp_path.iterdir() if p.name.startswith(".s.h5.tmp-")]
    assert left, "the killed export's scratch lies beside its output"
    dead_import = tmp_path / ".t.zarr.tmp-99999999-abcdef.unpacked"  # what a killed import left
    (dead_import / "maps").mkdir(parents=True)
    assert run("export", store, out) == 0
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".s.h5.tmp-")]
    assert run("import", out, tmp_path / "t.zarr") == 0
    assert not dead_import.exists()


def test_export_holds_its_outputs_lock(tmp_path, capsys):
    from attgmae.core.lock import OutputLock

    store = make_store(tmp_path / "s.zarr")
    with OutputLock(tmp_path / "e.zarr.zip"):
        assert run("export", store, tmp_path / "e.zarr.zip") == 2
    assert "being written by another run" in capsys.readouterr().err


# ---- 3. image identity ------------------------------------------------------------------------


def write_images(root: Path, n: int) -> list[str]:
    """n tiny PNG files under root (keys_of(n)), each its own bytes."""
    import cv2

    for i, key in enumerate(sorted(keys_of(n))):
        (root / key).parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(root / key), np.full((8, 8), i * 20, np.uint8))
    return sorted(keys_of(n))


def replace_image(path: Path) -> None:
    """Another image under the same name (other bytes, a later mtime)."""
    import cv2

    before = os.stat(path).st_mtime_ns
    cv2.imwrite(str(path), np.random.default_rng(9).integers(0, 255, (9, 9), dtype=np.uint8))
    os.utime(path, ns=(before + 10**9, before + 10**9))


def test_identity_api_names_the_changed_images(tmp_path):
    keys = write_images(tmp_path, 4)
    recorded = image_identities(tmp_path, keys)
    assert (recorded[:, 0] > 0).all() and changed_images(tmp_path, keys, recorded) == []
    replace_image(tmp_path / keys[2])
    (tmp_path / keys[3]).unlink()
    recorded[0] = -1  # not recorded: not compared
    assert changed_images(tmp_path, keys, recorded) == [keys[2], keys[3]]


def _generate(root, out, *extra):
    return run("generate", root, "--out", out, "--methods", "random", "--device", "cpu",
               "--num_workers", "0", "--no_progress", "--chunk_rows", 2, "--shard_rows", 4,
               *extra)  # fmt: skip


def test_generate_verify_and_training_name_an_image_replaced_since_its_map(tmp_path, capsys):
    root = tmp_path / "images"
    keys = write_images(root, 8)
    assert _generate(root, tmp_path / "maps") == 0
    store_path = tmp_path / "maps" / "random.zarr"
    first = open_store(store_path)
    assert (first.image_identity == image_identities(root, keys)).all()
    first_maps = first.read_all()
    assert run("verify", store_path, "--images", root) == 0
    join_maps(np.array(keys), store_path, image_root=root)  # nothing changed: joins
    capsys.readouterr()

    replace_image(root / keys[5])
    assert run("verify", store_path, "--images", root) == 1
    assert "1 images changed since their maps were computed" in capsys.readouterr().out
    with pytest.raises(MapJoinError, match=rf"changed since.*{keys[5]}.*--changed_images"):
        join_maps(np.array(keys), store_path, image_root=root)
    uniform = join_maps(np.array(keys), store_path, image_root=root, changed_policy="uniform")
    assert uniform.rows[5] == -1 and (uniform.rows[np.arange(8) != 5] >= 0).all()
    kept = join_maps(np.array(keys), store_path, image_root=root, changed_policy="accept")
    assert kept.rows[5] >= 0 and kept.changed == (keys[5],)

    assert _generate(root, tmp_path / "maps") == 0  # recomputes that image's chunk only
    err = capsys.readouterr().err
    assert "already complete" not in err and keys[5] in err and "computed this run: 2" in err
    after = open_store(store_path)
    assert (after.image_identity == image_identities(root, keys)).all()
    np.testing.assert_array_equal(after.read_all(), first_maps)  # random maps depend on keys
    assert run("verify", store_path, "--images", root) == 0
    # the identities travel with exports and imports of the store
    assert run("export", store_path, tmp_path / "e.h5") == 0
    assert run("import", tmp_path / "e.h5", tmp_path / "again.zarr") == 0
    assert (open_store(tmp_path / "again.zarr").image_identity == after.image_identity).all()


def test_a_resumed_generate_redoes_staged_and_written_chunks_of_changed_images(tmp_path):
    root = tmp_path / "images"
    keys = write_images(root, 8)
    stats = image_identities(root, keys)
    out = tmp_path / "s.zarr"
    writer = MapStoreWriter(out, keys, method="m", images_root=root, **LAYOUT)
    for chunk in (0, 1, 2):  # shard 0 (chunks 0, 1) written whole, chunk 2 staged; then killed
        rows = slice(2 * chunk, 2 * chunk + 2)
        writer.write_chunk(chunk, np.full((2, 14, 14), 0.5), np.ones(2, bool), None, stats[rows])
    replace_image(root / keys[1])  # in the written shard
    replace_image(root / keys[4])  # in the staged chunk
    resumed = MapStoreWriter(out, keys, method="m", images_root=root, **LAYOUT)
    assert resumed.changed == [keys[1], keys[4]]
    assert [chunk for chunk, _, _ in resumed.pending_chunks()] == [0, 2, 3]
    again = MapStoreWriter(out, keys, method="m", images_root=root, **LAYOUT)  # idempotent
    assert again.changed == [] and [c for c, _, _ in again.pending_chunks()] == [0, 2, 3]


def _maps_of(root, keys) -> np.ndarray:
    """Stand-in for a map method: each map made from its image file's bytes."""
    return np.stack([np.resize(np.frombuffer((root / k).read_bytes(), np.uint8), (14, 14)) / 255
                     for k in keys])  # fmt: skip


@pytest.mark.parametrize("suffix", [".zarr", ".h5"])
def test_an_update_recomputes_the_changed_chunk_and_keeps_every_other_row(tmp_path, suffix):
    root = tmp_path / "images"
    keys = write_images(root, 8)
    out = tmp_path / f"s{suffix}"
    write_store(out, keys, _maps_of(root, keys), method="m",
                image_identity=image_identities(root, keys), **LAYOUT)  # fmt: skip
    before = open_store(out).read_all()
    replace_image(root / keys[5])
    writer = MapStoreWriter(out, keys, method="m", images_root=root, update=True, **LAYOUT)
    assert writer.changed == [keys[5]]
    assert writer.pending_chunks() == [(2, 4, 6)]
    writer.write_chunk(2, _maps_of(root, keys[4:6]), np.ones(2, bool), None,
                       image_identities(root, keys[4:6]))  # fmt: skip
    writer.finish_rank()
    writer.finalize()
    after = open_store(out)
    rows = np.arange(8) != 5
    np.testing.assert_array_equal(after.read_all()[rows], before[rows])
    np.testing.assert_array_equal(after.read_all()[5], _maps_of(root, [keys[5]])[0].astype("f2"))
    assert (after.image_identity == image_identities(root, keys)).all()
    assert verify_store(out, root).ok and not swap.partial_of(out).exists()


def test_stores_without_image_identities_still_load_and_verify_says_so(tmp_path, capsys):
    root = tmp_path / "images"
    keys = write_images(root, 8)
    path = write_store(tmp_path / "old.zarr", keys, np.zeros((8, 14, 14)), method="m", **LAYOUT)
    group = zarr.open_group(str(path), mode="r+")
    del group["image_identity"]
    group.attrs["format_version"] = 1
    assert open_store(path).image_identity is None
    assert len(join_maps(np.array(keys), path, image_root=root).rows) == 8
    assert run("verify", path, "--images", root) == 0
    assert "no image identities recorded" in capsys.readouterr().out


# ---- 4. a reader sees one whole store or "replaced while reading" ----------------------------


@pytest.fixture
def replaced_on_first_read(tmp_path, monkeypatch):
    """A store whose first read of maps finds it replaced (a real --overwrite swap) in between."""

    def arm(suffix):
        from attgmae.store.backends import backend_for

        path = make_store(tmp_path / f"s{suffix}", seed=1)
        backend = backend_for("h5" if suffix == ".h5" else "zarr")
        real = backend.read_maps
        calls = []

        def read_maps(p, rows=None):
            if not calls:
                calls.append(p)
                make_store(tmp_path / f"s{suffix}", seed=2, overwrite=True)  # another one in place
            return real(p, rows)

        monkeypatch.setattr(backend, "read_maps", staticmethod(read_maps))
        return path

    return arm


@pytest.mark.parametrize("suffix", [".zarr", ".h5"])
@pytest.mark.parametrize("read", ["get_batch", "read_all", "load"])
def test_a_store_replaced_between_open_and_read_is_named(replaced_on_first_read, suffix, read):
    path = replaced_on_first_read(suffix)
    store = open_store(path)
    with pytest.raises(StoreReplacedError, match="replaced while reading"):
        if read == "get_batch":
            store.get_batch(list(store.keys[:3]))
        else:
            getattr(store, read)()
    assert len(open_store(path).load()) == 8  # the new one reads whole


def test_verify_and_export_of_a_replaced_store_say_so_not_damaged(replaced_on_first_read,
                                                                  tmp_path, capsys):  # fmt: skip
    path = replaced_on_first_read(".zarr")
    report = verify_store(path)
    assert "replaced while reading" in report.text() and "damaged" not in report.text()
    path = replaced_on_first_read(".h5")
    assert run("export", path, tmp_path / "e.zarr.zip") == 2
    err = capsys.readouterr().err
    assert "replaced while reading" in err and "damaged" not in err
    assert not (tmp_path / "e.zarr.zip").exists()


# ---- 5. loading checks values and shape always ----------------------------------------------


def _strip_checksums(path):
    group = zarr.open_group(str(path), mode="r+")
    attrs = dict(group.attrs)
    del attrs["checksums"]
    group.attrs.clear()
    group.attrs.update(attrs)
    return group


@pytest.mark.parametrize("bad", [np.nan, 2.0, -0.5])
def test_a_store_without_checksums_holding_bad_values_is_refused_on_load(tmp_path, bad):
    path = make_store(tmp_path / "s.zarr")
    group = _strip_checksums(path)
    maps = group["maps"][:]
    maps[3, 2, 2] = bad
    group["maps"][:] = maps
    key = open_store(path).keys[3]
    with pytest.raises(StoreError, match=rf"1 maps hold NaN/Inf or values outside.*{key}"):
        open_store(path).load()
    with pytest.raises(StoreError, match="outside"):
        open_store(path).get_batch([key])
    with pytest.raises(StoreError, match="outside"):
        join_maps(np.array(list(open_store(path).keys)), path)
    assert len(open_store(path).get_batch([open_store(path).keys[0]])) == 1  # good rows read


def test_a_store_of_7x7_maps_is_refused_at_open(tmp_path, capsys):
    path = make_store(tmp_path / "s.zarr")
    group = zarr.open_group(str(path), mode="r+")
    attrs = dict(group.attrs)
    small = zarr.open_group(str(tmp_path / "small.zarr"), mode="w")
    for name in ("keys", "status", "labels"):
        small.create_array(name, data=group[name][:])
    small.create_array("maps", data=np.full((8, 7, 7), 0.5, np.float16))
    small.attrs.update({k: v for k, v in attrs.items() if k != "checksums"})
    with pytest.raises(StoreError, match=r"its maps are 7x7, not 14x14"):
        open_store(tmp_path / "small.zarr")
    assert run("verify", tmp_path / "small.zarr") == 1
    assert "7x7" in capsys.readouterr().out


# ---- 6. HDF5 files that reach outside themselves --------------------------------------------


def _outside_h5(path: Path, how: str, secret: Path) -> Path:
    """An .h5 of 2 keys whose maps come from ``secret`` (another local file), three ways."""
    np.arange(2 * 196, dtype=np.float32).tofile(secret)
    with h5py.File(secret.with_suffix(".h5"), "w") as f:
        f["data"] = np.random.default_rng(0).random((2, 14, 14))
    with h5py.File(path, "w") as f:
        f["keys"] = np.array([b"a/1.png", b"a/2.png"])
        if how == "external storage":
            f.create_dataset("maps", shape=(2, 14, 14), dtype="f4",
                             external=[(str(secret), 0, 2 * 196 * 4)])  # fmt: skip
        elif how == "external link":
            f["maps"] = h5py.ExternalLink(str(secret.with_suffix(".h5")), "data")
        else:
            layout = h5py.VirtualLayout(shape=(2, 14, 14), dtype="f8")
            layout[:] = h5py.VirtualSource(str(secret.with_suffix(".h5")), "data", (2, 14, 14))
            f.create_virtual_dataset("maps", layout)
    return path


@pytest.mark.parametrize("how", ["external storage", "external link", "virtual dataset"])
def test_hdf5_reaching_outside_itself_is_refused_on_import_and_as_a_store(tmp_path, capsys, how):
    source = _outside_h5(tmp_path / "src.h5", how, tmp_path / "secret.bin")
    assert run("import", source, tmp_path / "out.zarr") == 2
    err = capsys.readouterr().err
    assert "refused" in err and str(source) in err and "Traceback" not in err
    assert not (tmp_path / "out.zarr").exists()
    # the same trick inside a store of ours: every reader refuses it
    store = make_store(tmp_path / "s.h5")
    with h5py.File(store, "a") as f:
        del f["maps"]
        if how == "external link":
            f["maps"] = h5py.ExternalLink(str(tmp_path / "s_maps.h5"), "maps")
        else:
            f.create_dataset("maps", shape=(8, 14, 14), dtype="f2",
                             external=[(str(tmp_path / "secret.bin"), 0, 8 * 196 * 2)])  # fmt: skip
    with pytest.raises(StoreError, match="refused"):
        open_store(store)
    assert run("verify", store) == 1 and "refused" in capsys.readouterr().out
    assert run("export", store, tmp_path / "e.zarr.zip") == 2
    assert not (tmp_path / "e.zarr.zip").exists()


# ---- 7. size limits ---------------------------------------------------------------------------


@pytest.fixture
def small_limits(monkeypatch):
    """Limits scaled down 256x (a 1 MiB floor) so that bombs stay small in a test."""
    from attgmae.store import limits

    monkeypatch.setattr(limits, "FLOOR_BYTES", 1 << 20)


@pytest.mark.parametrize("kind", ["zip", "tar.gz", "npz", "png"])
def test_archive_bombs_are_refused_before_extracting(tmp_path, capsys, small_limits, kind):
    import cv2

    zeros = np.zeros(4 << 20, dtype=np.uint8)  # 4 MiB of zeros compress ~1000x
    member = tmp_path / "m" / "a" / "x.JPEG.npy"
    member.parent.mkdir(parents=True)
    np.save(member, zeros)
    source = tmp_path / f"bomb.{kind}"
    if kind == "tar.gz":
        with tarfile.open(source, "w:gz") as archive:
            archive.add(tmp_path / "m", arcname="m")
    elif kind == "png":  # a map file whose header declares 4 MP
        member.unlink()
        cv2.imwrite(str(member.with_suffix(".png")), zeros.reshape(2048, 2048))
        source = tmp_path / "m"
    else:
        with zipfile.ZipFile(source, "w", zipfile.ZIP_DEFLATED) as archive:
            archive.write(member, "a/x.JPEG.npy" if kind == "zip" else "a.npy")
    before = set(os.listdir(tmp_path))
    assert run("import", source, tmp_path / "out.zarr") == 2
    err = capsys.readouterr().err
    named = {"npz": "a.npy", "png": "x.JPEG.png"}.get(kind, "x.JPEG.npy")
    assert "decompression bomb" in err and str(source) in err and named in err, err
    after = {name for name in os.listdir(tmp_path) if not name.endswith(".lock")}
    assert after == before  # nothing extracted, nothing written


def _declaring(path: Path, rows: int, maps_rows: int | None = None) -> Path:
    """A tiny zarr store (our attributes) whose arrays declare ``rows`` rows, holding no data."""
    group = zarr.open_group(str(path), mode="w")
    for name, shape, dtype in (("maps", (maps_rows or rows, 14, 14), "float16"),
                               ("status", (rows,), "uint8"), ("keys", (rows,), str)):  # fmt: skip
        group.create_array(name, shape=shape, chunks=(1024, *shape[1:]), dtype=dtype)
    group.attrs.update({"format": "attgmae-maps", "format_version": 2, "complete": True,
                        "num_rows": rows, "method": "m"})  # fmt: skip
    return path


@pytest.mark.parametrize("command", ["inspect", "verify", "export", "import"])
def test_a_store_declaring_20m_rows_is_refused_before_allocating(tmp_path, capsys, command):
    from attgmae.store.exporting import _zip_dir

    folder = _declaring(tmp_path / "big.zarr", 20_000_000)
    zipped = tmp_path / "big.zarr.zip"
    _zip_dir(folder, zipped)
    assert zipped.stat().st_size < 4096
    extra = {"export": [tmp_path / "e.h5"], "import": [tmp_path / "i.zarr"]}.get(command, [])
    assert run(command, zipped, *extra) in (1, 2)
    out = capsys.readouterr()
    assert "declares" in out.err + out.out and "Traceback" not in out.err


def test_arrays_that_disagree_on_their_rows_are_refused(tmp_path):
    path = _declaring(tmp_path / "odd.zarr", 20_000_000, maps_rows=8)
    with pytest.raises(StoreError, match="disagree on the number of rows"):
        open_store(path)


def test_an_npy_declaring_more_than_it_holds_is_a_named_problem(tmp_path, capsys):
    tree_root = tmp_path / "maps"
    tree_root.mkdir()
    with open(tree_root / "a.JPEG.npy", "wb") as handle:  # 1.2 GB declared, 100 bytes held
        header = {"descr": "<f8", "fortran_order": False, "shape": (800_000, 14, 14)}
        np.lib.format.write_array_header_1_0(handle, header)
        handle.write(bytes(100))
    assert run("import", tree_root, tmp_path / "out.zarr") == 2
    err = capsys.readouterr().err
    assert "a.JPEG.npy" in err and "declares 1,254,400,000 bytes" in err


# ---- 8. numbers ------------------------------------------------------------------------------


@pytest.mark.parametrize("scale", [1e300, 1e-300, 3e38])
def test_extreme_but_finite_maps_import_as_their_shape(tmp_path, scale):
    pattern = np.random.default_rng(0).random((14, 14)) * 2 - 1
    dtype = np.float32 if scale == 3e38 else np.float64  # +-3e38: finite float32
    np.savez(tmp_path / "x.npz", **{"a/1.png": (pattern * scale).astype(dtype)})
    assert run("import", tmp_path / "x.npz", tmp_path / "s.zarr") == 0
    expected = normalize_maps(pattern[None])[0]
    got = open_store(tmp_path / "s.zarr").get("a/1.png")
    np.testing.assert_allclose(got, expected, atol=1e-3)
    assert got.max() == pytest.approx(1.0, abs=1e-3)


def test_a_flat_map_of_k_squared_values_is_a_k_by_k_grid(tmp_path, capsys):
    grid = np.random.default_rng(0).random((14, 14))
    small = np.random.default_rng(1).random((7, 7))
    np.savez(tmp_path / "flat.npz", **{"a/1.png": grid.reshape(1, 196),
                                       "a/2.png": grid.reshape(196),
                                       "a/3.png": small.reshape(49, 1)})  # fmt: skip
    assert run("import", tmp_path / "flat.npz", tmp_path / "a.zarr") == 2
    assert "a/3.png: map is 7x7, not 14x14 (pass --resize" in capsys.readouterr().err
    assert run("import", tmp_path / "flat.npz", tmp_path / "b.zarr", "--resize") == 0
    store = open_store(tmp_path / "b.zarr")
    for key in ("a/1.png", "a/2.png"):
        np.testing.assert_allclose(store.get(key), normalize_maps(grid[None])[0], atol=1e-3)
    assert np.ptp(store.get("a/3.png"), axis=1).max() > 0  # not rows of one value
    np.savez(tmp_path / "odd.npz", **{"a/1.png": np.ones((1, 200))})
    assert run("import", tmp_path / "odd.npz", tmp_path / "c.zarr", "--resize") == 2
    err = capsys.readouterr().err
    assert "200 is not a square" in err and "pass --resize" not in err


def test_verify_states_the_value_range_of_a_float64_store(tmp_path, capsys):
    path = make_store(tmp_path / "s.zarr")
    group = _strip_checksums(path)
    maps = group["maps"][:].astype(np.float64)
    del group["maps"]
    group.create_array("maps", data=maps)
    assert run("verify", path) == 1  # a float64 store is a problem, its statistics are not
    out = capsys.readouterr().out
    assert "maps are float64" in out and "-inf" not in out and "max 1.000" in out
    assert open_store(path).load().maps.shape == (8, 14, 14)
