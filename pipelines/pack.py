"""``attg-maps pack``: an image folder and its map stores -> tar shards, one sample per image.

    keys (sorted) -> each store joined by key (``join_maps``: training's policies for missing,
    failed and changed maps) -> samples in key order (``attgmae.data.shards``) ->
    ``webdataset.ShardWriter``, shards of at most ``--shard_size`` samples -> the index

Shard i holds samples ``[i * N // S, (i + 1) * N // S)`` of the N keys (S shards: as even as
they can be, so that ranks and loader workers get equal shares). Each shard is written aside,
flushed and renamed into place, then recorded in ``<index>.progress`` (one JSON line each,
after a first line saying what is packed): a killed pack leaves whole shards only, and a
rerun of the same command continues after the last recorded one (a shard renamed but not yet
recorded is written again). The index is written last; until then the shards are not read.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from attgmae.core.errors import InputError
from attgmae.core.files import (
    fsync_path,
    remove_stale_temporaries,
    temporary_path,
    write_json_atomic,
    write_text_atomic,
)
from attgmae.core.identity import image_identities
from attgmae.core.listing import folder_labels, list_images
from attgmae.core.outputs import claim_output
from attgmae.data.pretrain_dataset import CHANGED_POLICIES, MISSING_POLICIES, join_maps
from attgmae.data.shards import (
    SHARDS_FORMAT,
    SHARDS_VERSION,
    check_method,
    encode_sample,
    index_path,
)
from attgmae.data.shared_table import join_summary, store_identity
from attgmae.store import open_store
from attgmae.store.layout import keys_digest


@dataclass
class PackConfig:
    images: str  # the image folder (ImageNet layout: labels from the class folders)
    maps: tuple[str, ...]  # stores, one map per sample from each
    out: str  # printf pattern of the shard files, e.g. 'shards/train-%06d.tar'
    shard_size: int = 1000  # samples per shard, at most
    missing_maps: str = "error"
    changed_images: str = "error"
    overwrite: bool = False


@dataclass
class PackResult:
    index: Path
    num_samples: int
    num_shards: int
    written: int  # shards written by this run (the others were there from a killed run)


def shard_bounds(num_samples: int, shard_size: int) -> list[tuple[int, int]]:
    """(first, stop) of each shard: as few as ``shard_size`` allows, as even as can be."""
    count = -(-num_samples // shard_size)
    return [(i * num_samples // count, (i + 1) * num_samples // count) for i in range(count)]


def check_config(cfg: PackConfig) -> None:
    problems = []
    if not Path(cfg.images).is_dir():
        problems.append(f"image folder {cfg.images} is not a directory")
    if not cfg.maps:
        problems.append("--maps needs at least one store")
    try:
        name = Path(cfg.out).name
        if cfg.out % 0 == cfg.out % 1 or name % 0 == name % 1 or not name.endswith(".tar"):
            raise ValueError
    except (TypeError, ValueError):
        problems.append(
            f"--out {cfg.out!r} must be a pattern such as 'shards/train-%06d.tar' "
            "(one %d placeholder in the file name, ending in .tar)"
        )
    if cfg.shard_size < 1:
        problems.append("--shard_size must be >= 1")
    if cfg.missing_maps not in MISSING_POLICIES:
        problems.append(f"--missing_maps must be one of {MISSING_POLICIES}")
    if cfg.changed_images not in CHANGED_POLICIES:
        problems.append(f"--changed_images must be one of {CHANGED_POLICIES}")
    if problems:
        raise InputError("; ".join(problems))


def _join_stores(cfg: PackConfig, keys: list[str]) -> tuple[dict, list[dict], str | None]:
    """({method: MapJoin}, the stores' index entries, digest of the images' identities)."""
    stores = [open_store(path) for path in cfg.maps]
    identities = None
    if any(store.image_identity is not None for store in stores):
        identities = image_identities(cfg.images, keys)  # once for every store
    joins, entries = {}, []
    for path, store in zip(cfg.maps, stores):
        method = check_method(store.method, path)
        if method in joins:
            raise InputError(f"two stores of {method} maps ({path}); pack one of each method")
        joins[method] = join_maps(
            keys, path, cfg.missing_maps, cfg.images, cfg.changed_images, identities
        )
        entries.append(
            {
                "method": method,
                "path": str(Path(path).resolve()),
                "identity": store_identity(store),
                **join_summary(joins[method], len(keys)),
            }
        )
    digest = None
    if identities is not None:
        digest = hashlib.sha256(np.ascontiguousarray(identities).tobytes()).hexdigest()
    return joins, entries, digest


def _recorded(progress: Path, identity: dict) -> list[dict]:
    """The shards a killed pack of the same identity recorded, in order ([] if none)."""
    try:
        lines = progress.read_text().splitlines()
    except FileNotFoundError:
        return []
    try:
        if not lines or json.loads(lines[0]) != identity:
            return []
    except ValueError:
        return []
    done = []
    for line in lines[1:]:
        try:
            done.append(json.loads(line))
        except ValueError:  # the line a kill cut short: that shard is written again
            break
    return done


class _HashingFile:
    """A binary file that hashes what is written through it (the tar stream's only call)."""

    def __init__(self, path):
        self.path = Path(path)
        self.file = open(path, "wb")  # noqa: SIM115 - closed by _ShardFiles.finished
        self.digest = hashlib.sha256()
        self.bytes = 0
        self.discarded = False  # an abandoned tar stream may still flush into it when collected

    def write(self, data) -> int:
        if self.discarded:
            return len(data)
        self.digest.update(data)
        self.bytes += len(data)
        return self.file.write(data)


class _ShardFiles:
    """ShardWriter's opener and post: each shard written aside, then renamed into place."""

    def __init__(self, progress: Path, bounds, folder: Path, start: int):
        self.progress, self.bounds, self.folder = progress, bounds, folder
        self.shard = start  # the shard being written
        self.open: dict[str, _HashingFile] = {}

    def opener(self, name: str) -> _HashingFile:
        remove_stale_temporaries(name)  # what a killed pack left beside it
        self.open[name] = _HashingFile(temporary_path(name))
        return self.open[name]

    def finished(self, name: str) -> None:
        handle = self.open.pop(name)
        handle.file.flush()
        os.fsync(handle.file.fileno())
        handle.file.close()
        os.replace(handle.path, name)
        fsync_path(self.folder)
        first, stop = self.bounds[self.shard]
        entry = {
            "file": Path(name).name,
            "first": first,
            "count": stop - first,
            "bytes": handle.bytes,
            "sha256": handle.digest.hexdigest(),
        }
        with open(self.progress, "a", encoding="utf-8") as log:
            log.write(json.dumps(entry) + "\n")
            log.flush()
            os.fsync(log.fileno())
        self.shard += 1

    def discard(self) -> None:
        """A failed pack: the shard in writing is removed (the whole ones stay)."""
        for handle in self.open.values():
            handle.discarded = True
            handle.file.close()
            handle.path.unlink(missing_ok=True)
        self.open.clear()


def run_pack(cfg: PackConfig, log=print) -> PackResult:
    """Pack (or finish packing) the images with their maps; InputError on bad input."""
    check_config(cfg)
    keys = list_images(cfg.images)
    if not keys:
        raise InputError(f"no images under {cfg.images}")
    class_names, labels = folder_labels(keys)
    joins, stores, identities_digest = _join_stores(cfg, keys)
    bounds = shard_bounds(len(keys), cfg.shard_size)
    identity = {  # what is packed: a rerun of the same continues a killed pack
        "images": str(Path(cfg.images).resolve()),
        "num_samples": len(keys),
        "keys_sha256": keys_digest(keys),
        "image_identities_sha256": identities_digest,
        "stores": [{k: s[k] for k in ("method", "path", "identity")} for s in stores],
        "missing_maps": cfg.missing_maps,
        "changed_images": cfg.changed_images,
        "shard_size": cfg.shard_size,
        "pattern": Path(cfg.out).name,
    }
    index = index_path(cfg.out)
    progress = index.with_name(index.name + ".progress")
    with claim_output(index, "--out", "file"):  # (its path checked, its lock held)
        index.parent.mkdir(parents=True, exist_ok=True)
        if index.exists() and not cfg.overwrite:
            if _packed_from(index) == identity:
                log(f"{index}: these shards are packed already; nothing to do")
                return PackResult(index, len(keys), len(bounds), 0)
            raise InputError(
                f"{index} holds shards of another pack; pass --overwrite to replace "
                "them, or choose another --out"
            )
        index.unlink(missing_ok=True)  # (--overwrite) no index over shards being replaced
        done = _still_whole([] if cfg.overwrite else _recorded(progress, identity), index.parent)
        if done:
            log(f"continuing a killed pack: {len(done)} of {len(bounds)} shards are written")
        write_text_atomic(progress, "".join(json.dumps(x) + "\n" for x in [identity, *done]))
        written = _write_shards(cfg, keys, labels, joins, bounds, len(done), progress, log)
        write_json_atomic(
            index,
            {
                "format": SHARDS_FORMAT,
                "version": SHARDS_VERSION,
                "num_samples": len(keys),
                "keys_sha256": identity["keys_sha256"],
                "classes": class_names,
                "stores": stores,
                "missing_maps": cfg.missing_maps,
                "changed_images": cfg.changed_images,
                "shards": _recorded(progress, identity),
                "packed_from": identity,
            },
        )
        progress.unlink()
    log(f"packed {len(keys)} images in {len(bounds)} shards ({written} written now); index {index}")
    return PackResult(index, len(keys), len(bounds), written)


def _packed_from(index: Path):
    try:
        return json.loads(index.read_text()).get("packed_from")
    except (OSError, ValueError):
        return None


def _still_whole(done: list[dict], folder: Path) -> list[dict]:
    """The recorded shards up to the first one gone or of another size."""
    whole = []
    for entry in done:
        path = folder / entry["file"]
        if not path.is_file() or path.stat().st_size != entry["bytes"]:
            break
        whole.append(entry)
    return whole


def _write_shards(cfg, keys, labels, joins, bounds, start: int, progress: Path, log) -> int:
    """Write shards ``start..`` with webdataset's ShardWriter; -> how many."""
    if start >= len(bounds):
        return 0
    from webdataset import ShardWriter  # imports torch: only when packing

    files = _ShardFiles(progress, bounds, Path(cfg.out).parent, start)
    root = Path(cfg.images)
    zero = np.zeros(next(iter(joins.values())).maps.shape[1:], dtype=np.float16)
    writer = ShardWriter(
        cfg.out,
        maxcount=sys.maxsize,
        maxsize=float("inf"),
        start_shard=start,
        verbose=0,
        opener=files.opener,
        post=files.finished,
        encoder=False,
        mtime=0,
    )
    try:
        for shard in range(start, len(bounds)):
            if shard > start:
                writer.next_stream()
            for i in range(*bounds[shard]):
                try:
                    image = (root / keys[i]).read_bytes()
                except OSError as err:
                    raise InputError(
                        f"{root / keys[i]}: cannot be read ({err.strerror}); fix or "
                        "remove it and rerun (the whole shards stay)"
                    ) from None
                maps = {}
                for method, join in joins.items():
                    row = join.rows[i]
                    maps[method] = join.maps[row] if row >= 0 else zero  # -1: missing, uniform
                writer.write(encode_sample(i, keys[i], int(labels[i]), image, maps))
            if (shard + 1) % 100 == 0:
                log(f"pack: {shard + 1}/{len(bounds)} shards")
        writer.close()  # the last shard's post
    except BaseException:
        files.discard()
        raise
    return len(bounds) - start
