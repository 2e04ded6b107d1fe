"""Unpacking a map archive (.zip, .tar, .tar.gz) safely into a scratch folder.

Member by member, streamed: every name is checked to land inside the folder (no links, no
devices), every declared size against the archive's real size before it is written
(``limits``), and no member may hold more than it declared. The scratch folder is the caller's
(``attg-maps import`` puts it beside its output, under the output's lock, so a rerun after a
kill removes what the killed run left: ``core.files.remove_stale_temporaries``).
"""

from __future__ import annotations

import shutil
import tarfile
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .layout import StoreError
from .limits import ExpansionBudget

ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz")
BLOCK_BYTES = 1 << 20


def is_archive(path: Path) -> bool:
    """An archive to unpack (a ``.zarr.zip`` is read in place, not unpacked)."""
    lower = str(path).lower()
    return path.is_file() and lower.endswith(ARCHIVE_SUFFIXES) and not lower.endswith(".zarr.zip")


def _target(path: Path, dest: Path, name: str) -> Path:
    target = (dest / name).resolve()
    dest_resolved = dest.resolve()
    if dest_resolved not in target.parents and target != dest_resolved:
        raise StoreError(f"{path}: archive member {name!r} points outside the archive")
    return target


def _copy_member(path: Path, name: str, source, target: Path, declared: int) -> None:
    """Stream one member to ``target``, never more than the ``declared`` bytes."""
    target.parent.mkdir(parents=True, exist_ok=True)
    written = 0
    with open(target, "wb") as out:
        while block := source.read(min(BLOCK_BYTES, declared - written + 1)):
            written += len(block)
            if written > declared:
                raise StoreError(
                    f"{path}: archive member {name!r} holds more than the {declared:,} bytes it "
                    "declares: a damaged or crafted archive"
                )
            out.write(block)


def _extract_zip(path: Path, dest: Path) -> None:
    budget = ExpansionBudget(path, path.stat().st_size)
    with zipfile.ZipFile(path) as archive:
        members = archive.infolist()
        targets = [_target(path, dest, info.filename) for info in members]
        for info in members:  # the central directory: every size is known before any is read
            budget.add(info.filename, info.file_size, info.compress_size)
        for info, target in zip(members, targets):
            if info.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            with archive.open(info) as source:
                _copy_member(path, info.filename, source, target, info.file_size)


def _extract_tar(path: Path, dest: Path) -> None:
    budget = ExpansionBudget(path, path.stat().st_size)
    with tarfile.open(path) as archive:
        for member in archive:  # one header at a time: a bomb stops at the member that shows it
            target = _target(path, dest, member.name)
            if member.isdir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            if not member.isfile():
                raise StoreError(f"{path}: archive member {member.name!r} is a link or device")
            budget.add(member.name, member.size)
            with archive.extractfile(member) as source:
                _copy_member(path, member.name, source, target, member.size)


def safe_extract(path: Path, dest: Path) -> None:
    """Extract a zip or tar into ``dest``; StoreError naming the archive (and member) otherwise."""
    dest.mkdir(parents=True, exist_ok=True)
    try:
        if str(path).lower().endswith(".zip"):
            _extract_zip(path, dest)
        else:
            _extract_tar(path, dest)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, tarfile.TarError, EOFError) as err:
        raise StoreError(f"{path}: cannot read archive ({err})") from None
    except (OSError, RuntimeError, NotImplementedError) as err:  # bad CRC, unknown compression
        raise StoreError(f"{path}: cannot read archive ({type(err).__name__}: {err})") from None


@contextmanager
def unpacked(source: Path, scratch: Path) -> Iterator[Path]:
    """The path to read: ``source`` itself, or what an archive holds (its single item, or the
    folder of its items), extracted into the folder ``scratch`` (made here, removed after)."""
    if not is_archive(source):
        yield source
        return
    try:
        safe_extract(source, scratch)
        entries = [p for p in scratch.iterdir() if not p.name.startswith(".")]
        if (scratch / "zarr.json").exists():
            yield scratch  # a zipped zarr group not named .zarr.zip
        elif len(entries) == 1:
            # one file or store inside, or one folder wrapping the tree (as `tar czf x.tgz maps/`)
            yield entries[0]
        else:
            yield scratch
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
