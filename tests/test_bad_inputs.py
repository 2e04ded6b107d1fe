"""Bad inputs and crash points, together so their count is visible: each gets a clear message
and the right exit code, and nothing is lost (docs/reliability.md lists the guarantees)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from attgmae.cli.maps import main as maps_main
from attgmae.core.errors import InputError
from attgmae.store import StoreError, open_store, write_store
from attgmae.store.layout import normalize_maps
from attgmae.store.verify import verify_store

LAYOUT = {"chunk_rows": 16, "shard_rows": 32}


def make_store(path, n=100, seed=0):
    keys = sorted(f"n{i % 5:08d}/img_{i:05d}.JPEG" for i in range(n))
    maps = normalize_maps(np.random.default_rng(seed).random((n, 14, 14)))
    return write_store(path, keys, maps, method="m", labels=np.arange(n) % 5, **LAYOUT)


# ---- corruption ------------------------------------------------------------------------------


def _data_regions(store_path):
    """(file, first byte, end byte) of the stored map data, status and keys."""
    if store_path.suffix == ".h5":
        import h5py

        regions = []
        with h5py.File(store_path, "r") as f:
            maps = f["maps"]
            for i in range(maps.id.get_num_chunks()):
                info = maps.id.get_chunk_info(i)
                regions.append((store_path, info.byte_offset, info.byte_offset + info.size))
            status_offset = f["status"].id.get_offset()
            regions.append((store_path, status_offset, status_offset + len(f["status"])))
            some_keys = [k.decode() for k in f["keys"][:: max(1, len(f["keys"]) // 8)]]
        data = store_path.read_bytes()
        for key in some_keys:  # variable-length strings live in the global heap, as written
            at = data.find(key.encode())
            regions.append((store_path, at, at + len(key)))
        return regions
    files = [p for array in ("maps", "status", "keys", "labels")
             for p in sorted((store_path / array / "c").rglob("*")) if p.is_file()]  # fmt: skip
    return [(p, 0, p.stat().st_size) for p in files]


@pytest.mark.parametrize("suffix", [".zarr", ".h5"])
def test_every_bit_flip_in_map_data_or_keys_is_found(tmp_path, suffix):
    """verify names the damage and loading for training refuses the store, flip after flip."""
    good = make_store(tmp_path / f"good{suffix}")
    assert verify_store(good).ok and "all match" in verify_store(good).text()
    rng = np.random.default_rng(0)
    regions = _data_regions(good)
    for trial in range(40):
        copy = tmp_path / f"flip{trial}{suffix}"
        shutil.copytree(good, copy) if good.is_dir() else shutil.copy(good, copy)
        file, start, end = regions[rng.integers(len(regions))]
        target = copy / file.relative_to(good) if good.is_dir() else copy
        data = bytearray(target.read_bytes())
        byte = int(rng.integers(start, end))
        data[byte] ^= 1 << int(rng.integers(8))
        target.write_bytes(bytes(data))
        report = verify_store(copy)
        assert not report.ok, f"flip {trial} at byte {byte} of {target} went unseen"
        with pytest.raises(StoreError):
            open_store(copy).load()
        shutil.rmtree(copy) if copy.is_dir() else copy.unlink()


def test_damage_is_named_by_key_range_and_file(tmp_path):
    store = make_store(tmp_path / "s.zarr")
    shard = store / "maps" / "c" / "1" / "0" / "0"  # rows 32-63
    data = bytearray(shard.read_bytes())
    data[len(data) // 3] ^= 0x10
    shard.write_bytes(bytes(data))
    with pytest.raises(StoreError, match=r"s.zarr.*(rows 3\d-|cannot be read)"):
        open_store(store).load()
    problems = "\n".join(verify_store(store).problems)
    assert "maps/c/1/0/0" in problems or "cannot be read" in problems


def test_stores_without_checksums_still_load_and_verify_says_so(tmp_path):
    import zarr

    store = make_store(tmp_path / "old.zarr")
    group = zarr.open_group(str(store), mode="r+")
    attrs = dict(group.attrs)
    del attrs["checksums"]
    group.attrs.clear()
    group.attrs.update(attrs)
    assert len(open_store(store).load()) == 100
    report = verify_store(store)
    assert report.ok and "no checksums recorded" in report.text()


def test_a_manifest_that_does_not_match_is_a_problem(tmp_path, capsys):
    store = make_store(tmp_path / "s.zarr")
    out = tmp_path / "s.zarr.zip"
    assert maps_main(["export", str(store), str(out)]) == 0
    assert "sha256 matches" in verify_store(out).text()
    (tmp_path / "s.zarr.zip.sha256").write_text(f"{'0' * 64}  s.zarr.zip\n")
    assert maps_main(["verify", str(out)]) == 1
    assert "changed since it was exported" in capsys.readouterr().out


def test_a_bad_crc_inside_a_zarr_zip_is_a_message_not_a_traceback(tmp_path, capsys):
    store = make_store(tmp_path / "s.zarr")
    out = tmp_path / "s.zarr.zip"
    assert maps_main(["export", str(store), str(out)]) == 0
    data = bytearray(out.read_bytes())
    member = data.find(b"maps/c/0/0/0")  # the local header's name; the data follows it
    data[member + 80] ^= 0x01
    out.write_bytes(bytes(data))
    for argv in (["verify", str(out)], ["inspect", str(out)]):
        code = maps_main(argv)
        captured = capsys.readouterr()
        assert code in (1, 2) and "Traceback" not in captured.err + captured.out
        assert str(out) in captured.err + captured.out


# ---- export ----------------------------------------------------------------------------------


@pytest.mark.parametrize("source", ["s.zarr", "s.h5", "s.zarr.zip"])
@pytest.mark.parametrize("target", ["t.zarr.zip", "t.h5"])
def test_export_from_every_kind_to_every_kind(tmp_path, source, target):
    if source == "s.zarr.zip":
        make_store(tmp_path / "base.zarr")
        assert maps_main(["export", str(tmp_path / "base.zarr"), str(tmp_path / source)]) == 0
    else:
        make_store(tmp_path / source)
    assert maps_main(["export", str(tmp_path / source), str(tmp_path / target)]) == 0
    a, b = open_store(tmp_path / source), open_store(tmp_path / target)
    assert list(a.keys) == list(b.keys) and len(b) == 100
    np.testing.assert_array_equal(a.read_all(), b.read_all())
    assert verify_store(tmp_path / target).ok


def test_export_refuses_its_input_and_an_existing_output(tmp_path, capsys):
    make_store(tmp_path / "base.zarr")
    zipped = tmp_path / "s.zarr.zip"
    assert maps_main(["export", str(tmp_path / "base.zarr"), str(zipped)]) == 0
    before = zipped.read_bytes()
    assert maps_main(["export", str(zipped), str(zipped)]) == 2
    assert "is the store being exported" in capsys.readouterr().err
    assert maps_main(["export", str(tmp_path / "base.zarr"), str(zipped)]) == 2
    assert "already exists; pass --overwrite" in capsys.readouterr().err
    assert zipped.read_bytes() == before  # nothing lost either way
    assert maps_main(["export", str(tmp_path / "base.zarr"), str(zipped), "--overwrite"]) == 0


# ---- crash windows of finalize ---------------------------------------------------------------


class Killed(BaseException):
    """Stands for a SIGKILL at that instant (nothing after it runs)."""


WINDOWS = ["before marker", "after marker", "old moved aside", "new moved in", "cleanup"]


@pytest.mark.parametrize(
    "window, fmt",
    [(w, f) for w in WINDOWS for f in ("zarr", "h5")] + [("exchanged", "zarr")],  # (HDF5: a file,
)  # replaced by one rename, no exchange)
def test_a_kill_anywhere_in_finalize_is_recovered_by_a_rerun(tmp_path, monkeypatch, fmt, window):
    """Replacing a store (--overwrite): whatever instant a kill lands on, the rerun of the same
    command ends with the new store in place, nothing lost and nothing left behind."""
    from attgmae.store import swap

    path = tmp_path / f"s.{fmt}"
    make_store(path, seed=1)  # the old store
    new_maps = make_store(tmp_path / f"new.{fmt}", seed=2)
    expected = open_store(new_maps).read_all()
    real = {"rename": swap.os.rename, "replace": swap.os.replace, "unlink": Path.unlink,
            "exchange": swap.exchange}

    def moved(how):
        def move(src, dst):
            if window == "old moved aside" and Path(dst) == path:  # old aside, new not in yet
                raise Killed
            real[how](src, dst)
            if window == "new moved in" and Path(dst) == path:
                raise Killed

        return move

    def unlink(self, missing_ok=False):
        if window == "cleanup" and self.name == swap.MARKER:
            raise Killed
        real["unlink"](self, missing_ok=missing_ok)

    def swap_in(p, f):
        if window == "before marker":
            raise Killed
        swap.mark_finished(p, f)
        if window == "after marker":
            raise Killed
        swap.finish_interrupted(p, f)

    def exchange(a, b):
        if window in ("old moved aside", "new moved in"):  # the two renames, without exchange
            return False
        done = real["exchange"](a, b)
        if window == "exchanged" and done:  # the new store in place, the old one not yet gone
            raise Killed
        return done

    monkeypatch.setattr(swap.os, "rename", moved("rename"))
    monkeypatch.setattr(swap.os, "replace", moved("replace"))
    monkeypatch.setattr(Path, "unlink", unlink)
    monkeypatch.setattr("attgmae.store.writer.swap.swap_in", swap_in)
    monkeypatch.setattr(swap, "exchange", exchange)
    keys = list(open_store(new_maps).keys)
    with pytest.raises(Killed):
        write_store(path, keys, expected.astype(np.float32), method="m",
                    labels=np.arange(100) % 5, overwrite=True, **LAYOUT)  # fmt: skip
    monkeypatch.undo()
    # At the kill: the old store, the new one, or a marked partial a rerun finishes; with the
    # exchange (Linux) never an empty name.
    partial = swap.partial_of(path)
    assert path.exists() or (partial / swap.MARKER).exists()
    if window == "exchanged" and fmt == "zarr":
        np.testing.assert_array_equal(open_store(path).read_all(), expected)
    write_store(path, keys, expected.astype(np.float32), method="m",
                labels=np.arange(100) % 5, overwrite=True, **LAYOUT)  # fmt: skip
    np.testing.assert_array_equal(open_store(path).read_all(), expected)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([path.name, f"new.{fmt}"])


# ---- one writer at a time --------------------------------------------------------------------


@pytest.fixture
def holder():
    """Another live process holding an output's lock; killed (-9) on demand."""
    procs = []

    def hold(target, inside=False):
        code = (
            "import sys, time; from attgmae.core.lock import OutputLock; "
            f"OutputLock({str(target)!r}, inside={inside}).acquire(); print('held', flush=True); "
            "time.sleep(300)"
        )
        proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "held"
        procs.append(proc)
        return proc

    yield hold
    for proc in procs:
        proc.kill()
        proc.wait()


def test_a_second_writer_is_named_and_refused_and_a_dead_ones_lock_taken_over(
    tmp_path, holder, capsys
):
    source = make_store(tmp_path / "src.zarr")
    out = tmp_path / "maps.zarr"
    proc = holder(out)
    assert maps_main(["import", str(source), str(out)]) == 2
    err = capsys.readouterr().err
    assert f"{out} is being written by another run (pid {proc.pid} on" in err
    assert not out.exists()
    proc.kill()  # SIGKILL: no clean-up ran, the system released the lock
    proc.wait()
    assert maps_main(["import", str(source), str(out)]) == 0


def test_a_killed_runs_forked_workers_do_not_keep_its_output_locked(tmp_path):
    import os
    import signal
    import time

    from attgmae.core.lock import OutputLock

    holder = (
        "import os, sys, time\n"
        "from attgmae.core.lock import OutputLock\n"
        "OutputLock(sys.argv[1]).acquire()\n"
        "child = os.fork()\n"
        "if child == 0:\n"
        "    time.sleep(60)\n"
        "    os._exit(0)\n"
        "print(child, flush=True)\n"
        "time.sleep(60)\n"
    )
    target = tmp_path / "maps.zarr"
    proc = subprocess.Popen([sys.executable, "-c", holder, str(target)], stdout=subprocess.PIPE)
    child = int(proc.stdout.readline())
    try:
        with pytest.raises(Exception, match="being written by another run"):
            OutputLock(target).acquire()
        proc.send_signal(signal.SIGKILL)  # the run dies; its forked worker lives on
        proc.wait(timeout=30)
        time.sleep(0.1)
        os.kill(child, 0)  # (still alive)
        OutputLock(target).acquire().release()  # the output is free at once
    finally:
        os.kill(child, signal.SIGKILL)


def test_generate_and_train_hold_their_outputs(example_root, tmp_path, holder, capsys):
    from attgmae.cli.train import main as train_main

    holder(tmp_path / "maps" / "random.zarr")
    argv = ["generate", str(example_root / "train"), "--out", str(tmp_path / "maps"),
            "--methods", "random", "--device", "cpu", "--no_progress"]
    assert maps_main(argv) == 2
    assert "random.zarr is being written by another run" in capsys.readouterr().err
    holder(tmp_path / "run", inside=True)
    argv = ["--data_path", str(example_root), "--guidance", "none", "--model",
            "mae_vit_tiny_patch16", "--epochs", "1", "--device", "cpu", "--output_dir",
            str(tmp_path / "run")]
    assert train_main(argv) == 2
    assert "run is being written by another run" in capsys.readouterr().err
    assert not (tmp_path / "run" / "log.txt").exists()


# ---- walking image folders -------------------------------------------------------------------


def test_every_image_format_imagefolder_lists_is_listed_and_read(tmp_path):
    """ImageFolder's extensions (the evaluations' reference loader): TIFF, PPM, PGM too, read as
    the same RGB pixels; hidden files (macOS' ._ copies) are not images."""
    from PIL import Image

    from attgmae.core.listing import list_images
    from attgmae.data.images import decode_rgb

    pixels = np.random.default_rng(0).integers(0, 256, (6, 5, 3), dtype=np.uint8)
    (tmp_path / "a").mkdir()
    for ext in ("png", "ppm", "tif", "TIFF", "bmp", "webp"):
        Image.fromarray(pixels).save(tmp_path / "a" / f"x.{ext}", lossless=True)
    Image.fromarray(pixels[..., 0]).save(tmp_path / "a" / "grey.pgm")
    (tmp_path / "a" / "._x.png").write_bytes(b"AppleDouble")
    keys = list_images(tmp_path)
    names = ("x.png", "x.ppm", "x.tif", "x.TIFF", "x.bmp", "x.webp", "grey.pgm")
    assert keys == sorted(f"a/{name}" for name in names)  # not a/._x.png
    for key in keys:
        want = np.repeat(pixels[..., :1], 3, axis=2) if key.endswith("pgm") else pixels
        np.testing.assert_array_equal(decode_rgb(tmp_path / key), want, err_msg=key)


def test_a_link_loop_is_followed_once_and_named(example_root, tmp_path):
    from attgmae.core.listing import ListingWarning, list_images

    root = tmp_path / "train"
    shutil.copytree(example_root / "train", root)
    expected = list_images(root)
    (root / "circle" / "up").symlink_to("..")  # train/circle/up -> train
    (root / "square" / "again").symlink_to(root / "square")  # a second loop, to itself
    with pytest.warns(ListingWarning, match=r"circle/up: links to a folder already listed"):
        assert list_images(root) == expected  # no duplicates, and it ends
    (root / "cross" / "elsewhere").symlink_to(example_root / "val" / "cross")  # a real folder
    assert len(list_images(root)) == len(expected) + 3


def test_an_unreadable_folder_is_an_error_or_a_recorded_skip(example_root, tmp_path,
                                                            monkeypatch, capsys):  # fmt: skip
    import os

    from attgmae.core import listing

    root = tmp_path / "train"
    shutil.copytree(example_root / "train", root)
    real_scandir = os.scandir

    def scandir(path=None):
        if isinstance(path, (str, Path)) and Path(path).name == "cross":  # no read permission
            # (chmod would not do: the tests may run as root)
            raise PermissionError(13, "Permission denied")
        return real_scandir(path)

    monkeypatch.setattr(listing.os, "scandir", scandir)
    with pytest.raises(InputError, match=r"train/cross: cannot be read.*--skip_unreadable"):
        listing.list_images(root)
    argv = ["generate", str(root), "--out", str(tmp_path / "m"), "--methods", "random",
            "--device", "cpu", "--no_progress", "--num_workers", "0"]
    assert maps_main(argv) == 2 and "train/cross: cannot be read" in capsys.readouterr().err
    assert maps_main([*argv, "--skip_unreadable"]) == 0
    assert "UNREADABLE\t" in capsys.readouterr().err
    assert len(open_store(tmp_path / "m" / "random.zarr")) == 18  # 6 cross images left out


# ---- training flags that make no sense -------------------------------------------------------


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--gamma", "0"], "--gamma must be > 0"),
        (["--gamma", "-1"], "--gamma must be > 0"),
        (["--mask_ratio", "0.999"], "leaves 0 of 196 patches visible"),
        (["--world_size", "4"], "--world_size 4, but 1 process"),
    ],
)
def test_training_refuses_nonsense_before_any_step(example_root, tmp_path, capsys, flags,
                                                    message):  # fmt: skip
    from attgmae.cli.train import main as train_main

    argv = ["--data_path", str(example_root), "--guidance", "random", "--model",
            "mae_vit_tiny_patch16", "--epochs", "1", "--device", "cpu", "--num_workers", "0",
            "--output_dir", str(tmp_path / "run"), *flags]
    assert train_main(argv) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run" / "checkpoint-last.pth").exists()


def test_a_diverged_loss_names_tau_and_gamma_when_the_weights_explode(example_root, tmp_path,
                                                                       capsys):  # fmt: skip
    from attgmae.cli.train import main as train_main

    argv = ["--data_path", str(example_root), "--guidance", "random", "--model",
            "mae_vit_tiny_patch16", "--epochs", "1", "--device", "cpu", "--num_workers", "0",
            "--batch_size", "8", "--output_dir", str(tmp_path / "run"), "--tau", "0.001",
            "--tau_schedule", "constant"]
    assert train_main(argv) == 1
    err = capsys.readouterr().err
    assert "gamma * exp(1 / tau)" in err and "tau 0.001" in err and "raise --tau" in err


def test_a_truncated_last_checkpoint_falls_back_to_the_newest_readable_one(
    example_root, tmp_path, capsys
):
    from attgmae.checkpoint import load_checkpoint
    from attgmae.cli.train import main as train_main

    out = tmp_path / "run"
    argv = ["--data_path", str(example_root), "--guidance", "random", "--model",
            "mae_vit_tiny_patch16", "--input_size", "64", "--device", "cpu", "--num_workers",
            "0", "--batch_size", "8", "--accum_iter", "1", "--output_dir", str(out),
            "--save_every", "1", "--auto_resume"]  # fmt: skip
    assert train_main([*argv, "--epochs", "2"]) == 0
    last, second = out / "checkpoint-last.pth", out / "checkpoint-1.pth"
    assert not last.samefile(second)  # two names, two files: damage to one spares the other
    last.write_bytes(last.read_bytes()[:1000])  # a disk that filled up, a copy cut short
    capsys.readouterr()
    assert train_main([*argv, "--epochs", "3"]) == 0
    err = capsys.readouterr().out
    assert "skipping unreadable checkpoint" in err and "checkpoint-last.pth" in err
    assert f"resumed from {second}" in err
    assert load_checkpoint(last)["epoch"] == 2  # trained on from epoch 2, not from scratch


# ---- imports that are not maps ---------------------------------------------------------------


def test_imports_of_things_that_are_not_maps_name_the_problem(tmp_path, capsys):
    import tarfile
    import zipfile

    np.savez(tmp_path / "empty.npz")
    np.savez(tmp_path / "zero.npz", **{"a/b": np.zeros((0, 0))})
    np.savez(tmp_path / "complex.npz", **{"a/b": np.ones((14, 14), dtype=np.complex64)})
    zipfile.ZipFile(tmp_path / "empty.zip", "w").close()
    tarfile.open(tmp_path / "empty.tar.gz", "w:gz").close()
    cases = {
        "empty.npz": "empty.npz: holds no maps",
        "zero.npz": "a/b: map is empty (0x0)",
        "complex.npz": "a/b: map holds complex values (complex64)",
        "empty.zip": f"{tmp_path / 'empty.zip'}: no map files",
        "empty.tar.gz": f"{tmp_path / 'empty.tar.gz'}: no map files",
    }
    for name, message in cases.items():
        out = tmp_path / f"{name}.zarr"
        assert maps_main(["import", str(tmp_path / name), str(out), "--resize"]) == 2, name
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err and "attg-import-" not in err, err
        assert not out.exists()
