"""The map store's layout: names, versions, attributes, and the M_norm rule.

One store = the 14x14 guidance maps of one method for one image set, as a zarr v3 group
(``*.zarr``, default) or an HDF5 file (``*.h5``/``*.hdf5``) with the same arrays and attributes.
See docs/store-format.md.
"""

from __future__ import annotations

import hashlib

import numpy as np

from attgmae.core.constants import MAP_GRID as GRID
from attgmae.core.errors import InputError
from attgmae.core.minmax import minmax_numpy

MAP_SHAPE = (GRID, GRID)
FORMAT_NAME = "attgmae-maps"
FORMAT_VERSION = 2  # 2 added IMAGE_IDENTITY; version 1 stores read as before, without it
READABLE_VERSIONS = (1, 2)

MAPS = "maps"  # float16 [N, 14, 14], M_norm in [0, 1]
KEYS = "keys"  # UTF-8 strings [N], sorted, unique
STATUS = "status"  # uint8 [N]: STATUS_OK or STATUS_FAILED (the map is then all zeros)
LABELS = "labels"  # int64 [N], optional; -1 when the image has no class folder
# int64 [N, 2]: (size in bytes, mtime in ns) of each image when its map was computed, -1 when
# not recorded (imports, version 1 stores): an image replaced since is named (core/identity.py).
IMAGE_IDENTITY = "image_identity"

STATUS_MISSING = 0
STATUS_OK = 1
STATUS_FAILED = 2

# Rows per compressed chunk (the unit of reading) and per shard (the unit of writing and of files):
# ImageNet-1k's 1,281,167 maps make 40 shard files per array.
CHUNK_ROWS = 1024
SHARD_ROWS = 32768

ZARR_SUFFIXES = (".zarr", ".zarr.zip")  # .zarr.zip: a published export, read in place
H5_SUFFIXES = (".h5", ".hdf5")


class StoreError(InputError):
    """A store that cannot be opened, written or trusted; the message says what to do."""


class RefusedFileError(StoreError):
    """A file refused whatever layout it claims: a decompression bomb, arrays that disagree on
    their rows, an HDF5 file reaching outside itself (never retried as another layout)."""


def store_format(path, fmt: str | None = None) -> str:
    """'zarr' or 'h5', from ``fmt`` or the path's suffix."""
    if fmt is not None:
        if fmt not in ("zarr", "h5"):
            raise StoreError(f"unknown store format {fmt!r}: use 'zarr' or 'h5'")
        return fmt
    name = str(path).rstrip("/").lower()
    if name.endswith(ZARR_SUFFIXES):
        return "zarr"
    if name.endswith(H5_SUFFIXES):
        return "h5"
    raise StoreError(f"{path}: a store path must end in .zarr, .h5 or .hdf5")


def normalize_maps(maps) -> np.ndarray:
    """Per-image min-max normalization to [0, 1] (M_norm), in float64 arithmetic cast to float32
    last; a constant map becomes all zeros. maps: [B, ...] array-like -> float32 of the same
    shape."""
    return minmax_numpy(maps)


def keys_digest(keys) -> str:
    """sha256 of the key list: identifies the image set a store (or a partial one) belongs to."""
    digest = hashlib.sha256()
    for key in keys:
        digest.update(key.encode("utf-8") if isinstance(key, str) else bytes(key))
        digest.update(b"\n")
    return digest.hexdigest()


def check_keys(keys, where) -> list[str]:
    """Keys as a list of str; raises StoreError naming the problem if not sorted and unique."""
    keys = [k.decode("utf-8") if isinstance(k, bytes) else str(k) for k in keys]
    for prev, cur in zip(keys, keys[1:]):
        if cur == prev:
            raise StoreError(f"{where}: duplicate key {cur!r}")
        if cur < prev:
            raise StoreError(f"{where}: keys are not sorted ({prev!r} comes before {cur!r})")
    return keys


def keys_as_bytes(keys) -> np.ndarray:
    """Keys as a fixed-width UTF-8 bytes array: compact, fork-shareable, and binary-searchable
    (UTF-8 byte order is code-point order, so sorted str keys stay sorted)."""
    if isinstance(keys, np.ndarray) and keys.dtype.kind == "S":
        return keys
    encoded = [
        k if isinstance(k, bytes) else str(k).encode("utf-8")
        for k in np.asarray(keys, dtype=object).tolist()
    ]
    if not encoded:
        return np.zeros(0, dtype="S1")
    return np.array(encoded, dtype=bytes)
