"""One writer per output, and resources running out (docs/reliability.md): every command claims
its output before any work (the path checked, the lock held), a refused write is one line naming
the path and the fix with the last good state kept, and a reader that stops reading ends a
command quietly."""

from __future__ import annotations

import errno
import fnmatch
import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from attgmae.checkpoint import load_checkpoint
from attgmae.cli._args import run_main
from attgmae.cli.eval import main as eval_main
from attgmae.cli.maps import main as maps_main
from attgmae.cli.train import main as train_main
from attgmae.core import files, torchfile
from attgmae.core.files import atomic_path
from attgmae.core.lock import OutputLock
from attgmae.store import open_store, write_store
from attgmae.store.layout import normalize_maps


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A small valid store (8 maps), read-only for the tests."""
    keys = sorted(f"n0000000{i % 2}/img_{i}.JPEG" for i in range(8))
    maps = normalize_maps(np.random.default_rng(0).random((8, 14, 14)))
    return write_store(tmp_path_factory.mktemp("store") / "maps.zarr", keys, maps, method="m")


@pytest.fixture
def paths(example_root, objects_root, tiny_mae_checkpoints, store):
    return {"example": example_root, "objects": objects_root,
            "ckpt": tiny_mae_checkpoints[0], "store": store}  # fmt: skip


# command -> (main, argv with OUT for the output, the output's kind, the name given to OUT)
def _evals(command, data="example", *extra):
    argv = [command, "--checkpoint", "{ckpt}", "--data_path", "{" + data + "}", "--output_dir",
            "OUT", "--device", "cpu", *extra]  # fmt: skip
    return eval_main, argv, "folder", "out"


COMMANDS = {
    "finetune": _evals("finetune"),
    "linprobe": _evals("linprobe"),
    "knn": _evals("knn"),
    "segment": _evals("segment", "objects", "--dataset", "folder"),
    "taskonomy": _evals("taskonomy", "example", "--tasks", "depth_euclidean"),
    "train": (train_main, ["--data_path", "{example}", "--guidance", "none", "--model",
                           "mae_vit_tiny_patch16", "--epochs", "1", "--device", "cpu",
                           "--output_dir", "OUT"], "folder", "out"),  # fmt: skip
    "generate": (maps_main, ["generate", "{example}/train", "--out", "OUT", "--methods", "random",
                             "--device", "cpu", "--no_progress"], "folder", "out"),  # fmt: skip
    "import": (maps_main, ["import", "{store}", "OUT"], "store", "out.zarr"),
    "make-example": (maps_main, ["make-example", "OUT", "--train_per_class", "1"], "folder", "out"),
    "export": (maps_main, ["export", "{store}", "OUT", "--overwrite"], "file", "out.zarr.zip"),
    "show": (maps_main, ["show", "{store}", "--images", "{example}/train", "--keys", "k", "-o",
                         "OUT"], "file", "out.png"),  # fmt: skip
    "compare": (maps_main, ["compare", "--stores", "{store}", "--images", "{example}/train", "-o",
                            "OUT"], "file", "out.png"),  # fmt: skip
}
LOCKING = ["finetune", "linprobe", "knn", "segment", "taskonomy", "train", "generate", "import",
           "make-example"]  # fmt: skip


def _run(command, out, paths, capsys) -> tuple[int, str]:
    main, argv, _, _ = COMMANDS[command]
    argv = [str(out) if a == "OUT" else a.format(**{k: str(v) for k, v in paths.items()})
            for a in argv]  # fmt: skip
    code = main(argv)
    return code, capsys.readouterr().err


def _one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


# ---- one writer per output ---------------------------------------------------------------------


@pytest.mark.parametrize("command", LOCKING)
def test_every_command_refuses_an_output_another_run_holds(command, paths, tmp_path, capsys):
    _, _, kind, name = COMMANDS[command]
    out = tmp_path / name
    held = out / "random.zarr" if command == "generate" else out  # generate: one lock a store
    lock = OutputLock(held, "test", inside=kind == "folder" and command != "generate").acquire()
    try:
        code, err = _run(command, out, paths, capsys)
    finally:
        lock.release()
    assert code == 2, err
    line = _one_error_line(err)
    assert f"{held} is being written by another run (pid {os.getpid()} on" in line
    left = [p for p in tmp_path.rglob("*") if not p.is_dir()]
    assert left == [lock.path], left  # nothing but the lock's own file


# ---- an output path that cannot be written ------------------------------------------------------


def _read_only_below(monkeypatch, folder: Path) -> None:
    """Creating a file below ``folder`` fails as on a read-only mount (root ignores chmod)."""
    real_open = os.open

    def refuse(path, flags, *args, **kwargs):
        if flags & os.O_CREAT and Path(os.path.abspath(path)).is_relative_to(folder):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", refuse)


CASES = ["parent is a file", "output of the wrong kind", "name too long", "read-only"]


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("command", list(COMMANDS))
def test_an_unwritable_output_is_one_line_and_exit_2(command, case, paths, tmp_path, capsys,
                                                     monkeypatch):  # fmt: skip
    _, _, kind, name = COMMANDS[command]
    if case == "parent is a file":
        (tmp_path / "file").write_text("a file")
        out, expected = tmp_path / "file" / name, f"{tmp_path / 'file'} is a file, not a folder"
    elif case == "output of the wrong kind":
        out = tmp_path / name
        if kind == "file":
            out.mkdir()
            expected = f"{out} is a folder, not a file"
        else:
            out.write_text("a file")
            expected = f"{out} is a file, not a folder"
    elif case == "name too long":
        out, expected = tmp_path / ("x" * 300 + name), "bytes long, more than the"
    else:
        (tmp_path / "ro").mkdir()
        _read_only_below(monkeypatch, tmp_path / "ro")
        out, expected = tmp_path / "ro" / name, f"cannot write {tmp_path / 'ro' / name}"
    before = sorted(p.name for p in tmp_path.rglob("*"))
    code, err = _run(command, out, paths, capsys)
    assert code == 2, err
    line = _one_error_line(err)
    assert expected in line, line
    assert "choose" in line  # what to do
    assert sorted(p.name for p in tmp_path.rglob("*")) == before  # nothing written


# ---- the atomic writer: a refused write names the target, keeps the old file --------------------


@pytest.mark.parametrize(
    "code, exit_code, advice",
    [
        (errno.ENOSPC, 1, "free space"),
        (errno.EDQUOT, 1, "quota"),
        (errno.EROFS, 2, "read-only"),
        (errno.EACCES, 2, "permission"),
        (errno.ENAMETOOLONG, 2, "shorter"),
    ],
)
def test_a_refused_write_keeps_the_old_file_and_names_the_target(tmp_path, code, exit_code,
                                                                 advice):  # fmt: skip
    from attgmae.core.errors import AttgError, write_error

    target = tmp_path / "result.json"
    target.write_text("old")
    with pytest.raises(AttgError) as caught:
        with atomic_path(target) as tmp:
            tmp.write_text("half of the new")
            raise OSError(code, os.strerror(code), str(tmp))
    message = str(caught.value)
    assert message.startswith(f"cannot write {target}: {os.strerror(code)}") and advice in message
    assert caught.value.exit_code == exit_code
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result.json"]  # no temporary left
    other = write_error(OSError(code, os.strerror(code), "/scratch/x"), target)
    assert f"cannot write {target} (/scratch/x):" in str(other)  # the file that failed, too
    copy = OSError(code, os.strerror(code), "/src/checkpoint-1.pth", None, str(tmp))
    assert str(write_error(copy, target)).startswith(f"cannot write {target}: ")  # (a copy's)


class _FillsUp(io.FileIO):
    """A file on a disk with ``room`` bytes left: a write beyond them fails with ENOSPC."""

    room = 0

    def write(self, data):
        if self.tell() + len(data) > self.room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return super().write(data)


@pytest.mark.parametrize("room", [0, 1 << 20])  # the first write fails; one midway does
def test_a_full_disk_under_torch_save_names_the_file_and_keeps_the_old_one(tmp_path, monkeypatch,
                                                                           room):  # fmt: skip
    """Given a path, or given a file that fills midway, torch.save reports a full disk as a
    RuntimeError of its own ("unexpected pos"); the one writer says what happened."""
    from attgmae.core.errors import AttgError

    target = tmp_path / "checkpoint-last.pth"
    torch.save({"w": torch.zeros(3)}, target)
    monkeypatch.setattr(_FillsUp, "room", room)
    monkeypatch.setattr(torchfile, "open", lambda path, mode: _FillsUp(path, mode), raising=False)
    with pytest.raises(AttgError, match=f"cannot write {target}: No space left on device"):
        torchfile.save_torch_file({"w": torch.ones(1_000_000)}, target)  # the one writer
    assert torch.equal(torch.load(target)["w"], torch.zeros(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-last.pth"]


@pytest.fixture
def disk_full(monkeypatch):
    """``disk_full(pattern, after=0)``: atomic writes of files whose names match ``pattern``
    succeed ``after`` times, then the disk is full: flushing the written file fails with ENOSPC,
    as on a real full disk (inside ``atomic_path``, the lowest level every writer shares)."""
    real = files.fsync_path

    def arm(pattern: str, after: int = 0):
        seen = [0]

        def fsync(path):
            name = Path(path).name
            target = name[1:].split(".tmp-")[0] if ".tmp-" in name else None
            if target is not None and fnmatch.fnmatch(target, pattern):
                seen[0] += 1
                if seen[0] > after:
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
            return real(path)

        monkeypatch.setattr(files, "fsync_path", fsync)
        return seen

    return arm


def _no_space(err: str, path: Path) -> None:
    line = _one_error_line(err)
    assert f"cannot write {path}: No space left on device; free space" in line, line


FAST_TRAIN = ["--guidance", "none", "--model", "mae_vit_tiny_patch16", "--input_size", "32",
              "--device", "cpu", "--num_workers", "0", "--batch_size", "8", "--accum_iter", "1",
              "--epochs", "2", "--print_freq", "100"]  # fmt: skip


def test_a_full_disk_while_training_keeps_the_last_checkpoint(example_root, tmp_path, disk_full,
                                                              capsys):  # fmt: skip
    out = tmp_path / "run"
    disk_full("checkpoint-1.pth")  # epoch 0's checkpoints are written, epoch 1's is not
    code = train_main(["--data_path", str(example_root), "--output_dir", str(out), *FAST_TRAIN])
    assert code == 1
    _no_space(capsys.readouterr().err, out / "checkpoint-1.pth")
    assert load_checkpoint(out / "checkpoint-last.pth")["epoch"] == 0  # whole, loadable
    assert not [p for p in out.iterdir() if ".tmp-" in p.name]


def test_a_full_disk_while_fine_tuning_keeps_the_last_checkpoint(
    example_root, tiny_mae_checkpoints, tmp_path, disk_full, capsys
):
    out = tmp_path / "ft"
    disk_full("checkpoint-1.pth")
    argv = ["finetune", "--checkpoint", str(tiny_mae_checkpoints[0]), "--data_path",
            str(example_root), "--output_dir", str(out), "--device", "cpu", "--num_workers", "0",
            "--input_size", "32", "--epochs", "2", "--warmup_epochs", "0", "--batch_size", "8",
            "--print_freq", "100"]  # fmt: skip
    assert eval_main(argv) == 1
    _no_space(capsys.readouterr().err, out / "checkpoint-1.pth")
    assert load_checkpoint(out / "checkpoint-last.pth")["epoch"] == 0
    assert not (out / "finetune.json").exists()


def test_a_full_disk_while_generating_keeps_the_staged_chunks(example_root, tmp_path, disk_full,
                                                             capsys):  # fmt: skip
    argv = ["generate", str(example_root / "train"), "--methods", "random", "--device", "cpu",
            "--no_progress", "--chunk_rows", "8"]  # fmt: skip
    assert maps_main([*argv, "--out", str(tmp_path / "straight")]) == 0
    out = tmp_path / "maps"
    written = disk_full("chunk_*.npz", after=1)  # 24 images: chunk 0 staged, chunk 1 refused
    assert maps_main([*argv, "--out", str(out)]) == 1
    staged = out / "random.zarr.partial" / "staging"
    _no_space(capsys.readouterr().err, staged / "chunk_0000001.npz")
    assert written[0] == 2 and (staged / "chunk_0000000.npz").is_file()
    disk_full("none")  # space again
    assert maps_main([*argv, "--out", str(out)]) == 0  # resumes from the staged chunk
    a, b = open_store(tmp_path / "straight" / "random.zarr"), open_store(out / "random.zarr")
    np.testing.assert_array_equal(a.read_all(), b.read_all())


def test_a_full_disk_while_importing_or_exporting_keeps_the_old_store(
    store, tmp_path, disk_full, monkeypatch, capsys
):
    from attgmae.store.backends import ZarrBackend

    out = tmp_path / "maps.zarr"
    assert maps_main(["import", str(store), str(out)]) == 0
    before = open_store(out).read_all()

    def no_space(*args):  # zarr writing a shard in place, as on a full disk (no file named)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with monkeypatch.context() as patch:
        patch.setattr(ZarrBackend, "write_rows", staticmethod(no_space))
        assert maps_main(["import", str(store), str(out), "--overwrite"]) == 1
    _no_space(capsys.readouterr().err, out)
    disk_full("*")  # every file written aside (meta.json first)
    assert maps_main(["import", str(store), str(out), "--overwrite"]) == 1
    line = _one_error_line(capsys.readouterr().err)
    assert "No space left on device; free space" in line and str(out) in line
    np.testing.assert_array_equal(open_store(out).load().maps, before)  # checked, whole
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")) == [
        "maps.zarr"
    ]
    export = tmp_path / "maps.zarr.zip"
    assert maps_main(["export", str(out), str(export)]) == 1
    _no_space(capsys.readouterr().err, export)
    assert not export.exists() and not Path(f"{export}.sha256").exists()


def test_a_full_disk_while_writing_knn_results_is_named(example_root, tiny_mae_checkpoints,
                                                        tmp_path, disk_full, capsys):  # fmt: skip
    out = tmp_path / "knn"
    disk_full("knn_*.json")
    argv = ["knn", "--checkpoint", str(tiny_mae_checkpoints[0]), "--data_path",
            str(example_root), "--output_dir", str(out), "--device", "cpu", "--num_workers", "0",
            "--input_size", "32", "--nb_knn", "5"]  # fmt: skip
    assert eval_main(argv) == 1
    _no_space(capsys.readouterr().err, out / "knn_mae_seed0.json")
    assert not (out / "knn_mae_seed0.json").exists()


# ---- the last net and a reader that stopped reading --------------------------------------------


def test_an_os_error_no_layer_named_is_one_line_and_exit_1(capsys):
    def fails(argv):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/data/out/x.h5")

    assert run_main(fails) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: /data/out/x.h5: No space left on device (free space")
    assert len(err.splitlines()) == 1

    def worker_pipe(argv):  # a broken pipe that is not stdout's is an error, not a quiet 0
        raise BrokenPipeError(errno.EPIPE, os.strerror(errno.EPIPE))

    assert run_main(worker_pipe) == 1
    assert capsys.readouterr().err == "error: Broken pipe\n"


def test_a_reader_that_stops_reading_ends_the_command_quietly(store):
    """``attg-maps verify STORE | head -1``: stdout is a pipe whose reader has gone."""
    read_end, write_end = os.pipe()
    os.close(read_end)  # head has read its line and left
    try:
        command = [sys.executable, "-m", "attgmae.cli.maps", "verify", str(store)]
        done = subprocess.run(
            command, stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=120
        )
    finally:
        os.close(write_end)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""  # no traceback, no "Exception ignored" at exit


def test_a_folder_a_failed_run_made_is_removed_and_no_second_run_slips_in(tmp_path, monkeypatch):
    from attgmae.core.errors import InputError
    from attgmae.core.lock import OutputLockedError
    from attgmae.core.outputs import claim_output

    made, kept = tmp_path / "made", tmp_path / "kept"
    kept.mkdir()
    for folder in (made, kept):
        with pytest.raises(InputError), claim_output(folder, "--output_dir"):
            raise InputError("bad input found late")
    assert not made.exists() and sorted(p.name for p in kept.iterdir()) == [".lock"]

    # A run that opened the lock file just before its holder removed it takes the lock only
    # under the name: the file it opened is gone, so it locks the new one, which a third run
    # then finds held.
    first = OutputLock(made, inside=True).acquire()
    opened_before = os.open(first.path, os.O_RDWR)
    first.release(drop_empty_folder=True)
    assert not made.exists()
    real_open = os.open
    pending = [opened_before]

    def open_once_stale(path, flags, *args):
        if pending and Path(path) == first.path:
            return pending.pop()
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", open_once_stale)
    second = OutputLock(made, inside=True).acquire()
    monkeypatch.undo()
    assert not pending  # (it did meet the stale file)
    with pytest.raises(OutputLockedError):
        OutputLock(made, inside=True).acquire()
    second.release()
