"""Reading map stores: by key, by batch of keys, or all at once into memory.

``MapStore`` holds only metadata and opens the files per read, so it is safe to create before
DataLoader workers fork (HDF5 handles must not cross a fork). ``MapTable`` is the whole store in
two numpy arrays (keys as fixed-width UTF-8 bytes, maps as float16): no per-key Python objects, so
forked workers share its pages instead of copying them (1.28M maps are ~500 MB).

A reader sees one whole store: what is at the path is stamped at open (``backends.stamp``: the
inode, and a zarr folder's ``zarr.json``) and checked again after every read, so a store
replaced meanwhile (``--overwrite``, a finished rerun) is a StoreReplacedError, never one
store's keys with another's maps. Loading checks the maps' shape (at open) and values (finite,
in [0, 1]) always, and their checksums when the store has them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from . import checksums
from .backends import backend_for, check_rows, stamp
from .layout import (
    FORMAT_NAME,
    GRID,
    KEYS,
    MAPS,
    STATUS_FAILED,
    STATUS_OK,
    StoreError,
    keys_as_bytes,
    store_format,
)
from .values import rows_outside_unit_range

OPEN_TRIES = 3  # a store replaced while being opened is opened again, this many times at most


class StoreReplacedError(StoreError):
    """The store at the path was replaced between two reads: rerun to read the new one whole."""


class MissingKeysError(StoreError, KeyError):
    """Keys a store holds no map for: bad input (exit 2), and a KeyError for lookups."""

    __str__ = BaseException.__str__  # the message as written, not KeyError's quoted repr


# Odd 64-bit multipliers, one per 8-byte word of a key (multilinear hashing); fixed so that a
# table hashes the same in every process.
_WORD_MULTIPLIERS = np.random.default_rng(20250226).integers(1, 2**63, 64, dtype=np.uint64) | 1


def _key_codes(key_bytes: np.ndarray) -> np.ndarray:
    """uint64 [N] hash of fixed-width key bytes (same value for the same key at any width)."""
    width = -(-key_bytes.dtype.itemsize // 8) * 8
    if width // 8 > len(_WORD_MULTIPLIERS):
        raise StoreError(f"keys longer than {8 * len(_WORD_MULTIPLIERS)} bytes")
    words = np.ascontiguousarray(key_bytes.astype(f"S{width}")).view(np.uint64)
    words = words.reshape(len(key_bytes), width // 8)
    codes = np.zeros(len(key_bytes), dtype=np.uint64)
    with np.errstate(over="ignore"):
        for j in range(words.shape[1]):  # a few words per key: a short loop over columns
            codes += words[:, j] * _WORD_MULTIPLIERS[j]
        codes ^= codes >> np.uint64(29)
        codes *= np.uint64(0xBF58476D1CE4E5B9)
        codes ^= codes >> np.uint64(32)
    return codes


class MapTable:
    """All maps of a store in memory; lookup by key through a sorted table of 64-bit key hashes.

    A binary search over 1.28M byte strings costs ~1 ms per 256 keys; over uint64 hashes it is
    ~50x cheaper. Every hit is confirmed against the key itself, so a hash collision can only
    send a lookup to the slow exact search, never to a wrong map.
    """

    def __init__(self, keys, maps: np.ndarray):
        self.keys = keys_as_bytes(keys)  # [N] sorted UTF-8 bytes
        self.maps = maps  # float16 [N, 14, 14]
        codes = _key_codes(self.keys)
        self._order = np.argsort(codes, kind="stable")  # [N] rows by hash
        self._sorted_codes = codes[self._order]

    def __len__(self) -> int:
        return len(self.keys)

    def _exact_rows(self, query: np.ndarray) -> np.ndarray:
        rows = np.minimum(np.searchsorted(self.keys, query), len(self.keys) - 1)
        return np.where(self.keys[rows] == query, rows, -1)

    def index_of(self, keys) -> np.ndarray:
        """int64 [B] row of each key, -1 where the key is not in the table."""
        query = keys_as_bytes(list(keys))
        if len(self.keys) == 0 or len(query) == 0:
            return np.full(len(query), -1, dtype=np.int64)
        codes = _key_codes(query)
        pos = np.minimum(np.searchsorted(self._sorted_codes, codes), len(self.keys) - 1)
        rows = self._order[pos]
        same_code = self._sorted_codes[pos] == codes
        found = same_code & (self.keys[rows] == query)
        collided = np.flatnonzero(same_code & ~found)
        rows = np.where(found, rows, -1).astype(np.int64)
        if len(collided):
            rows[collided] = self._exact_rows(query[collided])
        return rows

    def lookup(self, keys) -> np.ndarray:
        """float32 [B, 14, 14]; KeyError naming the first missing keys."""
        keys = list(keys)
        rows = self.index_of(keys)
        if (rows < 0).any():
            missing = [keys[i] for i in np.flatnonzero(rows < 0)[:5]]
            raise MissingKeysError(
                f"no map for {len(np.flatnonzero(rows < 0))} keys, e.g. {missing}"
            )
        return self.maps[rows].astype(np.float32)


class MapStore:
    """A complete store on disk (zarr v3 directory or HDF5 file)."""

    def __init__(self, path, allow_incomplete: bool = False, fmt: str | None = None):
        self.path = Path(str(path).rstrip("/"))
        self.fmt = store_format(self.path, fmt)
        self._backend = backend_for(self.fmt)
        if not self.path.exists():
            partial = Path(str(self.path) + ".partial")
            hint = (
                f" ({partial} exists: a run was interrupted; rerun it to finish)"
                if partial.exists()
                else ""
            )
            raise StoreError(f"no map store at {self.path}{hint}")
        meta = self._read_meta()
        self.attrs: dict = meta["attrs"]
        if self.attrs.get("format") != FORMAT_NAME:
            raise StoreError(
                f"{self.path}: not an attgmae map store (use `attg-maps import` to convert it)"
            )
        if not self.attrs.get("complete", False) and not allow_incomplete:
            raise StoreError(f"{self.path}: store is incomplete; rerun the command that writes it")
        self._key_bytes = keys_as_bytes(meta["key_bytes"])  # [N] sorted UTF-8 bytes
        self.labels = meta["labels"]
        self.status = meta["status"]
        self.num_rows = meta["num_rows"]
        self.maps_shape = meta["maps_shape"]
        self.maps_dtype = meta["maps_dtype"]
        if self.attrs.get("num_rows", self.num_rows) != self.num_rows:
            raise StoreError(
                f"{self.path}: its attributes say {self.attrs.get('num_rows')} rows, its arrays "
                f"hold {self.num_rows}: a damaged or crafted store; regenerate it, or import it "
                "again from a good copy"
            )
        if tuple(self.maps_shape[1:]) != (GRID, GRID):
            grid = "x".join(str(n) for n in self.maps_shape[1:]) or "scalar"
            raise StoreError(
                f"{self.path}: its maps are {grid}, not {GRID}x{GRID}: not a map store this "
                "software wrote (or a damaged one); `attg-maps import --resize` converts maps of "
                "another size into a new store"
            )
        self.failed: dict = self.attrs.get("failed", {})
        self._keys = None
        self._index = None  # key -> row table, built on the first get()
        self._image_identity = False  # not read yet (None: the store has none)

    def _read_meta(self) -> dict:
        """Everything but the maps, as one store: the stamp is the same before and after."""
        for _ in range(OPEN_TRIES):
            try:
                self._stamp = stamp(self.path)
                check_rows(self.path, self._backend.array_info(self.path))  # before allocating
                meta = self._backend.read_meta(self.path)
            except StoreError:
                raise
            except KeyError as err:
                raise StoreError(f"{self.path}: not a map store (missing arrays: {err})") from None
            except Exception as err:  # zarr/h5py raise many types for damaged files
                if self._replaced():
                    continue
                raise StoreError(
                    f"{self.path}: cannot read ({type(err).__name__}: {err})"
                ) from None
            if not self._replaced():
                return meta
        raise StoreReplacedError(
            f"{self.path} was replaced {OPEN_TRIES} times while opening it; rerun"
        )

    def _replaced(self) -> bool:
        try:
            return stamp(self.path) != self._stamp
        except OSError:  # nothing there now: replaced, the new store not in place yet
            return True

    def check_not_replaced(self) -> None:
        """StoreReplacedError when another store is at the path now than at open."""
        if self._replaced():
            raise StoreReplacedError(
                f"{self.path} was replaced while reading it (a run finished or --overwrite "
                "replaced it): what was read may mix two stores and was dropped; rerun"
            )

    def _read(self, read, what: str = "maps"):
        """``read()`` from the files, then the stamp checked: the same store as at open."""
        try:
            value = read()
        except Exception as err:  # zarr / h5py / zipfile raise many types for damaged data
            self.check_not_replaced()
            raise StoreError(
                f"{self.path}: the {what} cannot be read ({type(err).__name__}: {err}); the "
                "store is damaged: regenerate it, or import it again from a good copy"
            ) from None
        self.check_not_replaced()
        return value

    @property
    def image_identity(self):
        """int64 [N, 2] (size, mtime_ns) of each image when its map was computed (-1: not
        recorded), or None for a store written before stores recorded them."""
        if self._image_identity is False:
            self._image_identity = self._read(
                lambda: self._backend.read_identity(self.path), "image identities"
            )
        return self._image_identity

    @property
    def keys(self) -> np.ndarray:
        """Keys as an object array of str (decoded on first use; training never needs it). A
        damaged key that is no longer UTF-8 shows U+FFFD where its bytes broke."""
        if self._keys is None:
            self._keys = np.array(
                [k.decode("utf-8", "replace") for k in self._key_bytes.tolist()], dtype=object
            )
        return self._keys

    @property
    def key_bytes(self) -> np.ndarray:
        """Keys as fixed-width UTF-8 bytes [N] (sorted, no Python objects)."""
        return self._key_bytes

    @property
    def method(self) -> str:
        return self.attrs.get("method", "?")

    def __len__(self) -> int:
        return self.num_rows

    def ok_count(self) -> int:
        return int((self.status == STATUS_OK).sum())

    def failed_keys(self) -> list[str]:
        return [self.keys[i] for i in np.flatnonzero(self.status == STATUS_FAILED)]

    def get(self, key: str) -> np.ndarray:
        return self.get_batch([key])[0]

    def get_batch(self, keys) -> np.ndarray:
        """float32 [B, 14, 14] in the order of ``keys``."""
        keys = list(keys)
        rows = self._table_index().index_of(keys)
        if (rows < 0).any():
            missing = [keys[i] for i in np.flatnonzero(rows < 0)[:5]]
            raise MissingKeysError(f"{self.path}: no map for {missing}")
        # HDF5 reads want sorted, unique rows: read those once, then place them (a key may repeat).
        unique_rows, position = np.unique(rows, return_inverse=True)
        maps = self.read_rows(unique_rows)  # [U, 14, 14]
        return maps[position].astype(np.float32)

    def _table_index(self) -> MapTable:
        if self._index is None:
            self._index = MapTable(self._key_bytes, None)
        return self._index

    def read_all(self) -> np.ndarray:
        """The maps as stored (float16 [N, 14, 14]), values unchecked (``verify`` reports them);
        StoreError when the stored bytes cannot be decoded (damage) or the store was replaced."""
        return self._read(lambda: self._backend.read_maps(self.path, None))

    def read_rows(self, rows) -> np.ndarray:
        """The maps of the sorted, unique int ``rows`` as stored, their values checked."""
        rows = np.asarray(rows, dtype=np.int64)
        maps = self._read(lambda: self._backend.read_maps(self.path, rows))
        self._check_values(maps, rows)
        return maps

    def _check_values(self, maps, rows=None) -> None:
        """StoreError naming the rows whose maps are not finite values in [0, 1]."""
        bad = rows_outside_unit_range(maps)
        if not len(bad):
            return
        rows = bad if rows is None else np.asarray(rows)[bad]
        keys = ", ".join(self._key_bytes[r].decode("utf-8", "replace") for r in rows[:5])
        raise StoreError(
            f"{self.path}: {len(rows)} maps hold NaN/Inf or values outside [0, 1] (rows "
            f"{', '.join(str(int(r)) for r in rows[:5])}: {keys}): not maps this software "
            "wrote. Import the source again with `attg-maps import` (which normalizes each map), "
            "or regenerate the store; `attg-maps verify` lists them all"
        )

    @property
    def has_checksums(self) -> bool:
        return "checksums" in self.attrs

    def damage(self, maps=None) -> list[str]:
        """Each damaged key range, in words naming the rows, keys and file ([] when every chunk
        matches the checksums recorded at writing; [] too for a store written without them:
        see ``has_checksums``). ``maps``: the float16 maps if already read."""
        if not self.has_checksums:
            return []
        maps = self.read_all() if maps is None else maps
        problems = []
        found = checksums.damaged_chunks(
            self.attrs["checksums"], maps, self.status, self._key_bytes, self.labels
        )
        for start, stop, what in found:
            array = MAPS if what == "data" else KEYS
            first, last = (self._key_bytes[i].decode("utf-8", "replace") for i in (start, stop - 1))
            parts = "maps / status" if what == "data" else "keys / labels"
            problems.append(
                f"rows {start}-{stop - 1} ({first} .. {last}): the {parts} differ from the "
                f"checksums recorded when the store was written, in "
                f"{self._backend.file_of(self.path, array, start)}"
            )
        return problems

    def load(self, check: bool = True) -> MapTable:
        """The whole store in memory (read once, no file left open). ``check``: compare every
        chunk with its checksum first; StoreError naming the damaged rows and file. The values
        are checked in any case."""
        maps = self.read_all()
        damaged = self.damage(maps) if check else []
        if damaged:
            more = f" (and {len(damaged) - 1} more ranges)" if len(damaged) > 1 else ""
            raise StoreError(
                f"{self.path} is damaged: {damaged[0]}{more}. Regenerate the store, or import it "
                "again from a good copy; `attg-maps verify` lists every damaged range"
            )
        self._check_values(maps)  # always: a store without checksums (or crafted) may hold any
        return MapTable(self._key_bytes, maps)


def open_store(path, allow_incomplete: bool = False, fmt: str | None = None) -> MapStore:
    """Open a complete store; ``fmt`` ('zarr' or 'h5') when the name has no telling suffix."""
    return MapStore(path, allow_incomplete=allow_incomplete, fmt=fmt)
