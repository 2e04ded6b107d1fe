"""Resumable, multi-process-safe writing of one map store.

How a store comes to be (docs/store-format.md has the picture):

1. ``<out>.partial/`` is created by rank 0: the empty store in ``store.zarr`` / ``store.h5`` with
   keys and labels filled, then ``meta.json`` (what is being written: key digest, method,
   parameters; its presence means the partial store is set up).
2. Rows are computed in chunks of CHUNK_ROWS. Each finished chunk is staged atomically as
   ``staging/chunk_NNNNNNN.npz``: a crash loses at most the chunk in flight, and a restart asks
   ``pending_chunks()`` for what is still missing.
3. Shards (SHARD_ROWS rows, one file per array in zarr) belong to ranks by ``shard % world_size``.
   A shard is written into the store only whole, once all its chunks are staged, then marked by
   ``staging/shard_NNNNN.done.json`` (which also keeps its failures). Zarr tolerates concurrent
   writers only when they write whole shards: each shard is written by its one owner as soon as
   it is complete. HDF5 has no concurrent writers at all: with several ranks, rank 0 writes every
   shard in ``finalize``.
4. ``finalize()`` (rank 0, after every rank's ``finish_rank()``) marks the store complete and
   renames it into place: a reader never sees a half-written store under the final name.

Each row also keeps the identity (size, mtime) of its image when its map was computed, staged
with the chunk. Given ``images_root``, rank 0 compares those of a resumed partial store (and,
with ``update``, of the complete store being updated) with the images now, and recomputes the
chunks of the images that changed (``refresh.py``); ``changed`` names them.
"""

from __future__ import annotations

import datetime as _dt
import json
import shutil
from pathlib import Path

import numpy as np

from attgmae.core.files import atomic_path, refused_writes_named, write_json_atomic
from attgmae.core.identity import UNKNOWN
from attgmae.core.provenance import software_versions

from . import checksums, refresh, swap
from .backends import backend_for
from .layout import (
    CHUNK_ROWS,
    FORMAT_NAME,
    FORMAT_VERSION,
    GRID,
    IMAGE_IDENTITY,
    SHARD_ROWS,
    StoreError,
    check_keys,
    keys_as_bytes,
    keys_digest,
    store_format,
)
from .values import checked_rows

STORE_PACKAGES = ("attgmae", "zarr", "h5py", "numpy")
DONE_VERSION = 2  # shard_NNNNN.done.json: {"version", "failed", "data_digests"}


class MapStoreWriter:
    """Write the maps of one method for a fixed, sorted list of keys.

    With several processes, construct on rank 0 first and on the other ranks after a barrier
    (rank 0 creates or resumes the partial store; the others attach to it).
    """

    def __init__(
        self,
        path,
        keys,
        *,
        method: str,
        attrs: dict | None = None,
        labels=None,
        overwrite: bool = False,
        fmt: str | None = None,
        rank: int = 0,
        world_size: int = 1,
        chunk_rows: int = CHUNK_ROWS,
        shard_rows: int = SHARD_ROWS,
        images_root=None,
        update: bool = False,
    ):
        self.path = Path(str(path).rstrip("/"))
        self.fmt = store_format(self.path, fmt)
        if self.path.name.lower().endswith(".zip"):
            raise StoreError(
                f"{self.path}: stores are written as .zarr or .h5; a .zarr.zip is "
                "made from a finished store with `attg-maps export`"
            )
        self.backend = backend_for(self.fmt)
        self.partial = swap.partial_of(self.path)
        self.staging = self.partial / "staging"
        self.inner = swap.inner_of(self.path, self.fmt)
        self.keys = check_keys(keys, str(self.path))
        if not self.keys:
            raise StoreError(f"{self.path}: no keys to write")
        if shard_rows % chunk_rows:
            raise StoreError("shard_rows must be a multiple of chunk_rows")
        self.labels = None if labels is None else np.asarray(labels, dtype=np.int64)
        if self.labels is not None and len(self.labels) != len(self.keys):
            raise StoreError(f"{self.path}: {len(self.labels)} labels for {len(self.keys)} keys")
        self.method = method
        self.attrs = dict(attrs or {})
        self.overwrite = overwrite
        self.images_root = images_root  # compare the images' identities (rank 0)
        self.update = update  # a complete store at path may be updated: its changed rows redone
        self.changed: list[str] = []  # keys whose image changed since their map was computed
        self.created = False  # whether this writer made the partial store (else resumed it)
        self.rank, self.world_size = rank, world_size
        self.chunk_rows, self.shard_rows = chunk_rows, shard_rows
        self.chunks_per_shard = shard_rows // chunk_rows
        self.num_rows = len(self.keys)
        self.num_chunks = -(-self.num_rows // chunk_rows)
        self.num_shards = -(-self.num_rows // shard_rows)
        # What a partial store must agree with to be resumed.
        self.identity = {
            "format": self.fmt,
            "method": method,
            "params": self.attrs.get("params", {}),
            "num_rows": self.num_rows,
            "keys_sha256": keys_digest(self.keys),
            "chunk_rows": chunk_rows,
            "shard_rows": shard_rows,
        }
        if rank == 0:
            self._prepare()
        else:
            self._attach()

    # ---- setup -------------------------------------------------------------------------------
    def _prepare(self) -> None:
        swap.finish_interrupted(self.path, self.fmt)  # a finished store whose swap was killed
        if self.path.exists() and not (self.overwrite or self.update):
            raise StoreError(f"{self.path} already exists; pass --overwrite to replace it")
        meta_path = self.partial / "meta.json"
        self.resumed = False
        if self.partial.exists():
            meta = json.loads(meta_path.read_text()) if meta_path.exists() else None
            if meta == self.identity:
                self.resumed = True
                if not self.inner.exists():  # staged by a version that made HDF5 files last
                    self._create_inner()
                elif IMAGE_IDENTITY not in self.backend.array_info(self.inner):
                    self.backend.add_identity(  # made by a version without image identities
                        self.inner, self.num_rows, self.chunk_rows, self.shard_rows
                    )
            elif meta is not None and not self.overwrite:
                raise StoreError(
                    f"{self.partial} holds an interrupted run with other keys or parameters "
                    f"(method {meta.get('method')!r}, {meta.get('num_rows')} rows); pass "
                    "--overwrite to discard it"
                )
            else:  # creation itself was interrupted, or --overwrite: nothing to keep
                shutil.rmtree(self.partial)
        if not self.resumed:
            try:
                self.staging.mkdir(parents=True)
                self._create_inner()
                # meta.json last: its presence means the partial store is fully set up.
                write_json_atomic(meta_path, self.identity, indent=1, sort_keys=True)
            except BaseException:  # (a full disk, Ctrl-C) what this run just made goes again
                shutil.rmtree(self.partial, ignore_errors=True)
                raise
            self.created = True
        if self.images_root is not None:
            self.changed = refresh.redo_changed_images(self)

    def _create_inner(self) -> None:
        with refused_writes_named(self.path):  # (a full disk: named, not a zarr traceback)
            self.backend.create(
                self.inner,
                self.keys,
                self.labels,
                self._store_attrs(complete=False),
                self.chunk_rows,
                self.shard_rows,
            )

    def _attach(self) -> None:
        meta_path = self.partial / "meta.json"
        if not meta_path.exists() or json.loads(meta_path.read_text()) != self.identity:
            raise StoreError(
                f"rank {self.rank}: {self.partial} was not prepared by rank 0 for this run "
                "(construct the writer on rank 0 first, then barrier)"
            )
        self.resumed = True

    def _store_attrs(self, complete: bool, failed: dict | None = None,
                     checksums: dict | None = None) -> dict:  # fmt: skip
        attrs = {
            **self.attrs,
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "method": self.method,
            "params": self.attrs.get("params", {}),
            "grid": [GRID, GRID],
            "num_rows": self.num_rows,
            "keys_sha256": self.identity["keys_sha256"],
            "software": {**software_versions(STORE_PACKAGES), **self.attrs.get("software", {})},
            "complete": complete,
        }
        attrs.pop("checksums", None)  # an imported store's are recomputed, never copied
        if checksums is not None:
            attrs["checksums"] = checksums
        if failed is not None:
            attrs["failed"] = failed
            attrs["num_failed"] = len(failed)
            # An imported export keeps its creation time, so its attributes come back identical.
            attrs["created"] = self.attrs.get("created") or _dt.datetime.now(
                _dt.timezone.utc
            ).isoformat(timespec="seconds")
        return attrs

    # ---- bookkeeping -------------------------------------------------------------------------
    def chunk_of_row(self, row: int) -> int:
        return row // self.chunk_rows

    def _chunk_file(self, chunk: int) -> Path:
        return self.staging / f"chunk_{chunk:07d}.npz"

    def _shard_done_file(self, shard: int) -> Path:
        return self.staging / f"shard_{shard:05d}.done.json"

    def chunk_rows_range(self, chunk: int) -> tuple[int, int]:
        start = chunk * self.chunk_rows
        return start, min(start + self.chunk_rows, self.num_rows)

    def _shard_chunks(self, shard: int) -> range:
        first = shard * self.chunks_per_shard
        return range(first, min(first + self.chunks_per_shard, self.num_chunks))

    def owns_shard(self, shard: int) -> bool:
        return shard % self.world_size == self.rank

    def _shard_done(self, shard: int) -> bool:
        return self._shard_done_file(shard).exists()

    def _shard_staged(self, shard: int) -> bool:
        return all(self._chunk_file(c).exists() for c in self._shard_chunks(shard))

    def _writes_shards_now(self) -> bool:
        """Whether this process may write its shards as they complete (else rank 0 writes them
        all in finalize): always with zarr, and with HDF5 when it is the only process."""
        return self.backend.concurrent_writes or self.world_size == 1

    def pending_chunks(self) -> list[tuple[int, int, int]]:
        """(chunk index, first row, end row) of every chunk this rank still has to compute."""
        pending = []
        for shard in range(self.num_shards):
            if not self.owns_shard(shard) or self._shard_done(shard):
                continue
            for chunk in self._shard_chunks(shard):
                if not self._chunk_file(chunk).exists():
                    pending.append((chunk, *self.chunk_rows_range(chunk)))
        return pending

    # ---- writing -----------------------------------------------------------------------------
    def _checked_rows(self, start: int, stop: int, maps, ok) -> tuple[np.ndarray, np.ndarray]:
        return checked_rows(self.keys, start, stop, maps, ok)

    def _check_owner(self, shard: int) -> None:
        if not self.owns_shard(shard):
            raise StoreError(f"rank {self.rank} does not own shard {shard}")

    @staticmethod
    def _image_identity(image_identity, rows: int) -> np.ndarray:
        """int64 [rows, 2] (size, mtime_ns) per image; UNKNOWN when not given."""
        if image_identity is None:
            return np.full((rows, 2), UNKNOWN, dtype=np.int64)
        image_identity = np.asarray(image_identity, dtype=np.int64)
        if image_identity.shape != (rows, 2):
            shape = list(image_identity.shape)
            raise StoreError(f"image identity of shape {shape}, expected [{rows}, 2]")
        return image_identity

    def write_chunk(self, chunk: int, maps, ok, errors: dict | None = None,
                    image_identity=None) -> None:  # fmt: skip
        """Stage one chunk: maps [n, 14, 14] in [0, 1] (rows with ok=False are stored as zeros);
        image_identity int64 [n, 2]: each image's (size, mtime_ns) as stat'ed before decoding."""
        if not 0 <= chunk < self.num_chunks:
            raise StoreError(f"chunk {chunk} out of range (0..{self.num_chunks - 1})")
        shard = chunk // self.chunks_per_shard
        self._check_owner(shard)
        start, stop = self.chunk_rows_range(chunk)
        maps, status = self._checked_rows(start, stop, maps, ok)
        self._stage(chunk, maps, status, errors, self._image_identity(image_identity, stop - start))
        if self._writes_shards_now() and self._shard_staged(shard):
            self._flush_shard(shard)

    def _stage(self, chunk: int, maps16, status, errors, image_identity) -> None:
        """Stage a chunk's checked rows (any rank's chunk: ``refresh`` restages them on rank 0)."""
        errors = {str(k): str(v) for k, v in (errors or {}).items()}
        with atomic_path(self._chunk_file(chunk)) as tmp:
            np.savez(tmp, maps=maps16, status=status, errors=np.array(json.dumps(errors)),
                     image_identity=image_identity)  # fmt: skip

    def write_shard(self, shard: int, maps, ok, errors: dict | None = None,
                    image_identity=None) -> None:  # fmt: skip
        """Write one whole shard at once from memory (staged as chunks when rank 0 is to write
        it in finalize)."""
        self._check_owner(shard)
        start = shard * self.shard_rows
        stop = min(start + self.shard_rows, self.num_rows)
        errors = {str(k): str(v) for k, v in (errors or {}).items()}
        image_identity = self._image_identity(image_identity, stop - start)
        if self._writes_shards_now():
            maps, status = self._checked_rows(start, stop, maps, ok)
            self._write_shard_rows(shard, maps, status, errors, image_identity)
            return
        for chunk in self._shard_chunks(shard):
            first, last = self.chunk_rows_range(chunk)
            names = set(self.keys[first:last])
            self.write_chunk(
                chunk,
                maps[first - start : last - start],
                ok[first - start : last - start],
                {k: v for k, v in errors.items() if k in names},
                image_identity[first - start : last - start],
            )

    def write_all(self, maps, ok=None, errors: dict | None = None, image_identity=None) -> None:
        """Every shard of this rank from in-memory maps [N, 14, 14] (import, tests)."""
        maps = np.asarray(maps)
        ok = np.ones(len(maps), dtype=bool) if ok is None else np.asarray(ok, dtype=bool)
        image_identity = self._image_identity(image_identity, len(maps))
        errors = errors or {}
        for shard in range(self.num_shards):
            if not self.owns_shard(shard):
                continue
            start = shard * self.shard_rows
            stop = min(start + self.shard_rows, self.num_rows)
            shard_errors = {k: errors[k] for k in self.keys[start:stop] if k in errors}
            self.write_shard(shard, maps[start:stop], ok[start:stop], shard_errors,
                             image_identity[start:stop])  # fmt: skip

    def _write_shard_rows(self, shard: int, maps, status, errors: dict, image_identity) -> None:
        """Write a shard's rows and mark it done, keeping its failures and the checksums of the
        rows as written (``checksums.chunk_data_digests``)."""
        with refused_writes_named(self.path):
            self.backend.write_rows(
                self.inner, shard * self.shard_rows, maps, status, image_identity
            )
        done = {
            "version": DONE_VERSION,
            "failed": errors,
            "data_digests": checksums.chunk_data_digests(maps, status, self.chunk_rows),
        }
        write_json_atomic(self._shard_done_file(shard), done, indent=1, sort_keys=True)

    def _shard_record(self, shard: int) -> tuple[dict, list[str]]:
        """(failures, data digests) of a written shard. A shard marked by an older version
        holds its failures only: its digests are taken from the rows as they were written."""
        done = json.loads(self._shard_done_file(shard).read_text())
        if done.get("version") == DONE_VERSION:
            return done["failed"], done["data_digests"]
        start = shard * self.shard_rows
        rows = np.arange(start, min(start + self.shard_rows, self.num_rows))
        maps = self.backend.read_maps(self.inner, rows)
        status = self.backend.read_meta(self.inner)["status"][rows]
        return done, checksums.chunk_data_digests(maps, status, self.chunk_rows)

    def _staged_identity(self, chunk: int) -> np.ndarray:
        """int64 [n, 2] image identities of a staged chunk (UNKNOWN if staged without them)."""
        with np.load(self._chunk_file(chunk)) as staged:
            if "image_identity" in staged.files:
                return staged["image_identity"]
        start, stop = self.chunk_rows_range(chunk)
        return self._image_identity(None, stop - start)

    def _load_chunks(self, chunks) -> tuple[np.ndarray, np.ndarray, dict, np.ndarray]:
        maps, status, errors, identity = [], [], {}, []
        for chunk in chunks:
            with np.load(self._chunk_file(chunk)) as staged:
                maps.append(staged["maps"])
                status.append(staged["status"])
                errors.update(json.loads(str(staged["errors"])))
            identity.append(self._staged_identity(chunk))
        return np.concatenate(maps), np.concatenate(status), errors, np.concatenate(identity)

    def _flush_shard(self, shard: int) -> None:
        """Write one whole shard from its staged chunks; idempotent if interrupted."""
        chunks = self._shard_chunks(shard)
        maps, status, errors, identity = self._load_chunks(chunks)
        self._write_shard_rows(shard, maps, status, errors, identity)
        for chunk in chunks:
            self._chunk_file(chunk).unlink(missing_ok=True)

    def finish_rank(self) -> None:
        """Write this rank's remaining whole shards; every chunk it owns must be staged."""
        missing = [c for c in self.pending_chunks() if not self._chunk_file(c[0]).exists()]
        if missing:
            raise StoreError(f"rank {self.rank}: {len(missing)} chunks not written yet")
        if self._writes_shards_now():
            for shard in range(self.num_shards):
                if self.owns_shard(shard) and not self._shard_done(shard):
                    self._flush_shard(shard)

    def finalize(self) -> Path:
        """Write what is left, mark complete and move into place (rank 0 only, after every
        rank's finish_rank)."""
        if self.rank != 0:
            raise StoreError("finalize() runs on rank 0 only")
        not_done = [s for s in range(self.num_shards) if not self._shard_done(s)]
        unstaged = [s for s in not_done if not self._shard_staged(s)]
        if unstaged:
            raise StoreError(f"{self.path}: shards {unstaged[:5]} not written; cannot finalize")
        for shard in not_done:  # every shard with several HDF5 ranks; none with zarr
            self._flush_shard(shard)
        failed: dict = {}
        data_digests: list[str] = []
        for shard in range(self.num_shards):
            shard_failed, shard_digests = self._shard_record(shard)
            failed.update(shard_failed)
            data_digests += shard_digests
        record = checksums.record(
            data_digests, keys_as_bytes(self.keys), self.labels, self.chunk_rows
        )
        attrs = self._store_attrs(True, dict(sorted(failed.items())), record)
        with refused_writes_named(self.path):
            self.backend.update_attrs(self.inner, attrs)
            swap.swap_in(self.path, self.fmt)
        return self.path

    def discard_own_partial(self) -> None:
        """Remove the partial store if this writer created it and it is not finalized (what an
        in-memory write leaves when it fails: nothing worth resuming, nobody else's work)."""
        if self.rank == 0 and self.created and not (self.partial / swap.MARKER).exists():
            shutil.rmtree(self.partial, ignore_errors=True)


def write_store(path, keys, maps, *, method: str, attrs: dict | None = None, labels=None, ok=None,
                errors: dict | None = None, image_identity=None, overwrite: bool = False,
                fmt: str | None = None, **layout) -> Path:  # fmt: skip
    """Write a whole store in one process from in-memory maps [N, 14, 14] (import, tests).

    ``layout`` may set chunk_rows / shard_rows (tests use small ones to get many shards). A
    failure (or Ctrl-C) removes the partial store only if this call made it and it is not
    finalized yet: another run's partial store is never touched, a finalized one is finished.
    """
    writer = MapStoreWriter(path, keys, method=method, attrs=attrs, labels=labels,
                            overwrite=overwrite, fmt=fmt, **layout)  # fmt: skip
    try:
        writer.write_all(maps, ok, errors, image_identity)
        writer.finish_rank()
        return writer.finalize()
    except BaseException:
        writer.discard_own_partial()
        raise
