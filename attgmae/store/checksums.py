"""Content checksums of a store, per chunk of rows, so damage is found and named by key range.

Recorded when a store is finalized (attribute ``checksums``), recomputed by ``attg-maps verify``
and whenever a store is loaded for training. Two sha256 digests per chunk of ``rows`` rows:

- ``data``: the rows' maps as stored (float16, C order) followed by their status bytes;
- ``keys``: the rows' keys as fixed-width UTF-8 (``key_width`` bytes, NUL-padded) followed by
  their labels (int64), when the store has labels.

The data digests are taken from the rows as the writer hands them to the format (``chunk_data
_digests``), the key digests from the key list at finalize: what is on disk is compared with what
was meant to be written, so damage in writing, copying or storage shows alike. A bit flipped
anywhere in the maps, status, keys or labels changes a digest (or breaks decoding, which readers
report as damage too).
"""

from __future__ import annotations

import hashlib

import numpy as np

ALGORITHM = "sha256"


def chunk_data_digests(maps16: np.ndarray, status: np.ndarray, rows: int) -> list[str]:
    """float16 [n, 14, 14] and uint8 [n] -> one hex digest per ``rows`` rows."""
    maps16 = np.ascontiguousarray(maps16, dtype=np.float16)
    status = np.ascontiguousarray(status, dtype=np.uint8)
    digests = []
    for start in range(0, len(maps16), rows):
        digest = hashlib.sha256(maps16[start : start + rows].tobytes())
        digest.update(status[start : start + rows].tobytes())
        digests.append(digest.hexdigest())
    return digests


def chunk_key_digests(key_bytes: np.ndarray, labels, rows: int, width: int) -> list[str]:
    """Fixed-width UTF-8 keys [N] (and int64 labels [N] or None) -> one hex digest per chunk.
    A key longer than ``width`` (a damaged one) is cut, so its chunk no longer matches."""
    fixed = np.ascontiguousarray(key_bytes.astype(f"S{width}"))
    labels = None if labels is None else np.ascontiguousarray(labels, dtype=np.int64)
    digests = []
    for start in range(0, len(fixed), rows):
        digest = hashlib.sha256(fixed[start : start + rows].tobytes())
        if labels is not None:
            digest.update(labels[start : start + rows].tobytes())
        digests.append(digest.hexdigest())
    return digests


def record(data_digests: list[str], key_bytes: np.ndarray, labels, rows: int) -> dict:
    """The ``checksums`` attribute of a finalized store."""
    width = max(1, key_bytes.dtype.itemsize)
    return {
        "algorithm": ALGORITHM,
        "rows": rows,
        "key_width": width,
        "data": data_digests,
        "keys": chunk_key_digests(key_bytes, labels, rows, width),
    }


def damaged_chunks(checksums: dict, maps16, status, key_bytes, labels) -> list[tuple]:
    """(first row, end row, 'data' or 'keys') of every chunk whose content does not match."""
    rows = int(checksums["rows"])
    found = {
        "data": chunk_data_digests(maps16, status, rows),
        "keys": chunk_key_digests(key_bytes, labels, rows, int(checksums["key_width"])),
    }
    damaged = []
    for what, digests in found.items():
        recorded = checksums.get(what, [])
        for chunk in range(max(len(digests), len(recorded))):
            mine = digests[chunk] if chunk < len(digests) else None
            theirs = recorded[chunk] if chunk < len(recorded) else None
            if mine != theirs:
                damaged.append((chunk * rows, min((chunk + 1) * rows, len(status)), what))
    return sorted(damaged)
