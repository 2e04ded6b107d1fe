"""Maps of images that changed since they were computed are computed again (``attg-maps
generate``), the writer's part of it (``MapStoreWriter(images_root=...)`` calls it on rank 0
while preparing, before the other ranks attach).

Every row keeps (size, mtime_ns) of its image as stat'ed before decoding. What a resumed partial
store holds, and with ``update`` what the complete store being updated holds, is compared with
the images now (``attgmae.core.identity.changed_images``):

- a staged chunk holding a changed image is deleted, so it is computed again;
- a written shard holding one is unwritten: its other chunks are staged again from the written
  rows, then its done marker is removed;
- with ``update``, every chunk the partial store does not hold yet and whose images are all
  unchanged is staged from the complete store, so only the chunks of changed images are
  computed (a chunk's batches are fixed, so its other rows come out bit-identical).

Each step leaves a state a rerun repeats it from: restaged chunks are written atomically before
the done marker goes, and the identities that told of the change stay until the row is redone.
"""

from __future__ import annotations

import numpy as np

from attgmae.core.identity import UNKNOWN, changed_images

from .reader import open_store


def redo_changed_images(writer) -> list[str]:
    """Unstage the chunks of changed images (and stage the rest from the complete store when
    updating one); returns the changed keys."""
    complete = open_store(writer.path) if writer.update and writer.path.exists() else None
    recorded = _recorded_identity(writer, complete)
    changed = changed_images(writer.images_root, writer.keys, recorded)
    rows = np.searchsorted(np.asarray(writer.keys, dtype=object), np.asarray(changed, dtype=object))
    redo = sorted({writer.chunk_of_row(int(row)) for row in rows})
    _unstage(writer, redo)
    if complete is not None:
        _stage_from_complete(writer, complete, set(redo))
    return changed


def _recorded_identity(writer, complete) -> np.ndarray:
    """int64 [N, 2]: the identity of the image each row's map will come from if it is not
    computed again: the partial store's staged or written rows, else the complete store's."""
    recorded = np.full((writer.num_rows, 2), UNKNOWN, dtype=np.int64)
    if complete is not None and complete.image_identity is not None:
        recorded[:] = complete.image_identity
    done = [shard for shard in range(writer.num_shards) if writer._shard_done(shard)]
    written = writer.backend.read_identity(writer.inner) if done else None
    for shard in done if written is not None else ():
        rows = slice(shard * writer.shard_rows, (shard + 1) * writer.shard_rows)
        recorded[rows] = written[rows]
    for chunk in range(writer.num_chunks):
        if writer._chunk_file(chunk).exists():
            start, stop = writer.chunk_rows_range(chunk)
            recorded[start:stop] = writer._staged_identity(chunk)
    return recorded


def _unstage(writer, chunks) -> None:
    """Make ``chunks`` pending again."""
    by_shard: dict[int, set[int]] = {}
    for chunk in chunks:
        by_shard.setdefault(chunk // writer.chunks_per_shard, set()).add(chunk)
    status = identity = None
    for shard, redo in by_shard.items():
        if writer._shard_done(shard):
            failed, _ = writer._shard_record(shard)
            if status is None:  # the written rows' status and identities, read once
                status = writer.backend.read_meta(writer.inner)["status"]
                identity = writer.backend.read_identity(writer.inner)
            for chunk in writer._shard_chunks(shard):
                if chunk in redo:
                    continue
                start, stop = writer.chunk_rows_range(chunk)
                maps16 = writer.backend.read_maps(writer.inner, np.arange(start, stop))
                errors = {k: failed[k] for k in writer.keys[start:stop] if k in failed}
                writer._stage(chunk, maps16, status[start:stop], errors, identity[start:stop])
            writer._shard_done_file(shard).unlink()
        for chunk in redo:
            writer._chunk_file(chunk).unlink(missing_ok=True)


def _stage_from_complete(writer, complete, redo: set[int]) -> None:
    """Stage every chunk the partial store lacks, except ``redo``, from the complete store."""
    recorded = complete.image_identity
    if recorded is None:
        recorded = np.full((writer.num_rows, 2), UNKNOWN, dtype=np.int64)
    for shard in range(writer.num_shards):
        if writer._shard_done(shard):
            continue
        wanted = [c for c in writer._shard_chunks(shard)
                  if c not in redo and not writer._chunk_file(c).exists()]  # fmt: skip
        if not wanted:
            continue
        first = writer.chunk_rows_range(wanted[0])[0]
        last = writer.chunk_rows_range(wanted[-1])[1]
        maps16 = complete.read_rows(np.arange(first, last))  # float16 as stored, checked
        for chunk in wanted:
            start, stop = writer.chunk_rows_range(chunk)
            failed = complete.failed
            errors = {k: failed[k] for k in writer.keys[start:stop] if k in failed}
            writer._stage(chunk, maps16[start - first : stop - first],
                          complete.status[start:stop], errors, recorded[start:stop])  # fmt: skip
