"""Unpacking a map archive (.zip, .tar, .tar.gz) safely into a temporary folder."""

from __future__ import annotations

import tarfile
import tempfile
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .layout import StoreError

ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz")


def is_archive(path: Path) -> bool:
    return path.is_file() and str(path).lower().endswith(ARCHIVE_SUFFIXES)


def safe_extract(path: Path, dest: Path) -> None:
    """Extract a zip or tar, refusing members that would land outside ``dest`` and links."""
    dest_resolved = dest.resolve()

    def check(name: str) -> None:
        target = (dest / name).resolve()
        if dest_resolved not in target.parents and target != dest_resolved:
            raise StoreError(f"{path}: archive member {name!r} points outside the archive")

    try:
        if str(path).lower().endswith(".zip"):
            with zipfile.ZipFile(path) as archive:
                for name in archive.namelist():
                    check(name)
                archive.extractall(dest)
        else:
            with tarfile.open(path) as archive:
                for member in archive.getmembers():
                    check(member.name)
                    if not (member.isfile() or member.isdir()):
                        raise StoreError(
                            f"{path}: archive member {member.name!r} is a link or device"
                        )
                archive.extractall(dest)
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError) as err:
        raise StoreError(f"{path}: cannot read archive ({err})") from None


@contextmanager
def unpacked(source: Path) -> Iterator[Path]:
    """The path to read: ``source`` itself, or what an archive holds (its single item, or the
    folder of its items), in a temporary folder removed afterwards."""
    if not is_archive(source):
        yield source
        return
    with tempfile.TemporaryDirectory(prefix="attg-import-") as tmp:
        root = Path(tmp)
        safe_extract(source, root)
        entries = [p for p in root.iterdir() if not p.name.startswith(".")]
        if (root / "zarr.json").exists():
            yield root  # a zipped zarr group (our .zarr.zip exports)
        elif len(entries) == 1:
            # one file or store inside, or one folder wrapping the tree (as `tar czf x.tgz maps/`)
            yield entries[0]
        else:
            yield root
