"""``attg-maps export``: a store as one publishable file (``.zarr.zip`` or ``.h5``) + OUT.sha256.

Under the output's lock (one exporter at a time). Scratch (a copy in another format) is written
beside the output under a hidden temporary name, so a kill -9 leaves nothing in TMPDIR and the
next export of the same output removes what the killed one left
(``core.files.remove_stale_temporaries``).
"""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path

import numpy as np

from attgmae.core.files import (
    atomic_path,
    file_sha256,
    remove_stale_temporaries,
    temporary_path,
    write_text_atomic,
)
from attgmae.core.outputs import claim_output

from .layout import H5_SUFFIXES, STATUS_FAILED, StoreError
from .reader import open_store
from .writer import write_store


def export_store(store_path, out, overwrite: bool = False) -> tuple[Path, Path]:
    """Write a store (any kind: ``.zarr``, ``.zarr.zip``, ``.h5``) as one publishable file
    (``.zarr.zip`` or ``.h5``) plus ``OUT.sha256``. The store is checked against its checksums
    first: a damaged store is never published, nor one replaced while it was read."""
    out = Path(out)
    lower = out.name.lower()
    if not lower.endswith((".zarr.zip", *H5_SUFFIXES)):
        raise StoreError(f"{out}: export name must end in .zarr.zip or .h5")
    if out.resolve() == Path(store_path).resolve():
        raise StoreError(f"{out} is the store being exported: choose another output name")
    with claim_output(out, "OUT", "file"):
        remove_stale_temporaries(out)
        remove_stale_temporaries(Path(f"{out}.sha256"))
        if out.exists() and not overwrite:
            raise StoreError(f"{out} already exists; pass --overwrite to replace it")
        store = open_store(store_path)
        store.load()  # reads every chunk and checks it (StoreError naming the damage)
        scratch = temporary_path(out, suffix=".scratch")
        try:
            with atomic_path(out) as tmp:
                if lower.endswith(".zarr.zip"):
                    folder = store.path
                    if store.fmt != "zarr" or not store.path.is_dir():  # not a folder to zip
                        folder = _copy_store(store, scratch / "store.zarr")
                    _zip_dir(folder, tmp)
                else:
                    shutil.move(_copy_store(store, scratch / "store.h5"), tmp)
                store.check_not_replaced()  # the files zipped are the store checked above
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        manifest = write_text_atomic(Path(f"{out}.sha256"), f"{file_sha256(out)}  {out.name}\n")
    return out, manifest


def _copy_store(store, dest: Path) -> Path:
    ok = store.status != STATUS_FAILED
    return write_store(
        dest,
        list(store.keys),
        store.read_all().astype(np.float32),
        method=store.method,
        attrs=dict(store.attrs),
        labels=store.labels,
        ok=ok,
        errors=store.failed,
        image_identity=store.image_identity,
    )


def _zip_dir(folder: Path, out: Path) -> None:
    # Chunks are zstd-compressed already: store them as is (ZIP_STORED), which zarr reads fastest.
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                archive.write(path, path.relative_to(folder).as_posix())
