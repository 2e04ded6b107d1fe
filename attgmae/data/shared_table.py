"""One joined map table per node: written once as memory-mapped ``.npy`` files, mapped by every
rank and loader worker of the node.

``join_maps`` gives each process its own copy of the table (0.88 GiB per rank measured on
ImageNet-1k, linear in images), and a loader worker started by spawn or forkserver (Python
3.14's default) receives yet another, pickled. Here local rank 0 of each node builds the
joined table once, or finds it built and checks it, and every process maps the same files:
their pages are the page cache's, held once per node however many processes read them.

A table is a folder: ``keys.npy`` (the training keys, fixed-width UTF-8), and for guided runs
``rows.npy`` (int64, each image's row in ``maps.npy``, -1 for a zero map) and ``maps.npy``
(float16 [M, 14, 14], the maps the images use), then ``table.json``, written last: what the
table was built from (the store's identity, the training keys, the images' identities, the
policies, the format version) and each file's size and sha256. Each file is written aside and
renamed into place (``core.files.atomic_path``); before a rebuild the manifest is removed
first, so a table is either vouched for by its manifest or rebuilt. A table that is stale (its
manifest disagrees with what it would be built from now) or damaged (a file missing, of
another size, another checksum, dtype or shape) is rebuilt, never used.

``MappedArray`` pickles as its path: a spawned worker maps the file itself, and refuses it
when the file was replaced since the parent mapped it.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import socket
import tempfile
import time
from pathlib import Path

import numpy as np

from attgmae.core.distributed import DistInfo, max_across_ranks
from attgmae.core.errors import AttgError, InputError
from attgmae.core.files import (
    atomic_path,
    file_sha256,
    fsync_path,
    remove_stale_temporaries,
    write_json_atomic,
)
from attgmae.core.identity import image_identities
from attgmae.core.lock import OutputLock, OutputLockedError
from attgmae.data.pretrain_dataset import MapJoin, join_maps
from attgmae.store import open_store
from attgmae.store.layout import keys_as_bytes, keys_digest

TABLE_FORMAT = "attgmae-joined-table"
TABLE_VERSION = 1
MANIFEST = "table.json"
# Where a table goes when the store's folder is not writable and no --table_dir is given (None:
# the system's temporary folder, node-local on most clusters); tests point it elsewhere.
DEFAULT_TABLE_DIR: Path | None = None
LOCK_WAIT_S = 3600.0  # how long a builder waits for another run building the same table


class TableReplacedError(AttgError):
    """A table file was replaced (another run rebuilt it) while this run was mapping it."""


def _stamp(path) -> tuple:
    info = os.stat(path)
    return (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns)


class MappedArray:
    """A read-only ``.npy`` array mapped from its file (``np.load(mmap_mode='r')``), indexed like
    the array. Pickles as its path and the file's stamp (device, inode, size, mtime): a process
    that unpickles it maps the file itself, and a file replaced since is refused."""

    def __init__(self, path, stamp: tuple | None = None):
        self.path = Path(path)
        self._stamp = stamp
        self._array = None

    @property
    def array(self) -> np.ndarray:
        if self._array is None:
            before = _stamp(self.path)
            array = np.load(self.path, mmap_mode="r", allow_pickle=False)
            after = _stamp(self.path)
            if before != after or (self._stamp is not None and after != self._stamp):
                raise TableReplacedError(
                    f"{self.path} was replaced while this run used it (another run rebuilt the "
                    "table): rerun, or give concurrent runs their own --table_dir"
                )
            self._array, self._stamp = array, after
        return self._array

    @property
    def shape(self) -> tuple:
        return self.array.shape

    @property
    def dtype(self) -> np.dtype:
        return self.array.dtype

    def __len__(self) -> int:
        return len(self.array)

    def __getitem__(self, index):
        return self.array[index]

    def __getstate__(self) -> dict:
        self.array  # noqa: B018 - stamp the file the parent maps before handing it on
        return {"path": str(self.path), "stamp": self._stamp}

    def __setstate__(self, state: dict) -> None:
        self.path, self._stamp, self._array = Path(state["path"]), tuple(state["stamp"]), None


class SharedTable:
    """An opened table: ``keys`` (and ``rows`` and ``maps`` when guided) as MappedArrays, the
    manifest's ``built_from`` and ``join`` summary (counts and first keys)."""

    def __init__(self, folder):
        self.folder = Path(folder)
        manifest = json.loads((self.folder / MANIFEST).read_text())
        self.built_from: dict = manifest["built_from"]
        self.summary: dict = manifest["join"]
        self.arrays = {
            name: MappedArray(self.folder / entry["file"])
            for name, entry in manifest["files"].items()
        }
        for name, entry in manifest["files"].items():  # cheap: the headers only
            array = self.arrays[name]
            if list(array.shape) != entry["shape"] or array.dtype.str != entry["dtype"]:
                raise TableReplacedError(
                    f"{array.path}: not the file {self.folder / MANIFEST} "
                    "describes (replaced meanwhile?): rerun"
                )
        self.keys = self.arrays["keys"]
        self.rows = self.arrays.get("rows")
        self.maps = self.arrays.get("maps")

    @property
    def method(self) -> str:
        return self.summary.get("method", "?")

    def __len__(self) -> int:
        return len(self.keys)


# ----------------------------------------------------------------------------- identity, place


def store_identity(store) -> str:
    """sha256 of a store's attributes: its method, parameters, keys digest, creation time and,
    for every store written since checksums exist, the checksums of all its chunks."""
    return hashlib.sha256(json.dumps(store.attrs, sort_keys=True).encode()).hexdigest()


def built_from(
    keys, store_path=None, image_root=None, missing_policy="error", changed_policy="error"
) -> tuple[dict, np.ndarray | None]:
    """(what a table of ``keys`` joined with the store would be built from, the images' current
    identities or None). The images are stat'ed (one ``os.stat`` each) only when the store
    recorded identities, as ``join_maps`` compares them."""
    source = {"keys_sha256": keys_digest(keys), "num_keys": len(keys), "store": None}
    if store_path is None:
        return source, None
    store = open_store(store_path)
    identities = None
    if image_root is not None and store.image_identity is not None:
        identities = image_identities(image_root, keys)
    source.update(
        store=str(Path(store_path).resolve()),
        store_identity=store_identity(store),
        store_rows=len(store),
        image_identities_sha256=None
        if identities is None
        else hashlib.sha256(np.ascontiguousarray(identities).tobytes()).hexdigest(),
        missing_maps=missing_policy,
        changed_images=changed_policy,
    )
    return source, identities


def table_folder(source: dict, table_dir=None) -> Path:
    """``--table_dir`` when given; else beside the store when its folder is writable; else the
    node's temporary folder. The name tells the training set, store and policies apart."""
    naming = {k: source.get(k) for k in ("keys_sha256", "store", "missing_maps", "changed_images")}
    name = hashlib.sha256(json.dumps(naming, sort_keys=True).encode()).hexdigest()[:16]
    store = Path(source["store"]) if source["store"] else None
    if table_dir is not None:
        base = Path(table_dir)
    elif store is not None and os.access(store.parent, os.W_OK):
        base = store.parent
    else:
        base = DEFAULT_TABLE_DIR or Path(tempfile.gettempdir()) / "attgmae-tables"
    return base / f"{store.name if store else 'keys'}.table-{name}"


# ----------------------------------------------------------------------------- check, build


def check_table(folder, source: dict) -> str | None:
    """None when the table in ``folder`` may be used for ``source``; else why not, in words."""
    folder = Path(folder)
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except FileNotFoundError:
        return "not built yet (no manifest)"
    except (OSError, ValueError) as err:
        return f"its manifest cannot be read ({err})"
    if manifest.get("format") != TABLE_FORMAT or manifest.get("version") != TABLE_VERSION:
        return f"made by another version ({manifest.get('format')} {manifest.get('version')})"
    recorded = manifest.get("built_from", {})
    differ = sorted(k for k in set(source) | set(recorded) if source.get(k) != recorded.get(k))
    if differ:
        return f"stale: built from another {', '.join(differ)}"
    for entry in manifest.get("files", {}).values():
        path = folder / entry["file"]
        if not path.is_file():
            return f"{path.name} is missing"
        if path.stat().st_size != entry["bytes"]:
            return (
                f"{path.name} holds {path.stat().st_size} bytes, its manifest says "
                f"{entry['bytes']} (truncated or damaged)"
            )
        if file_sha256(path) != entry["sha256"]:
            return f"{path.name}: its content differs from its checksum (damaged)"
        try:
            array = np.load(path, mmap_mode="r", allow_pickle=False)
        except ValueError as err:
            return f"{path.name} cannot be read as an array ({err})"
        if list(array.shape) != entry["shape"] or array.dtype.str != entry["dtype"]:
            return f"{path.name} is not the array its manifest describes"
    return None


def table_arrays(keys, join: MapJoin | None) -> dict:
    """The arrays of a table: the keys, and only the maps the images use (a store of more
    images than are trained keeps its other maps out of the table)."""
    arrays = {"keys": keys_as_bytes(keys)}
    if join is not None:
        used, rows = np.unique(join.rows[join.rows >= 0], return_inverse=True)
        arrays["rows"] = np.full(len(join.rows), -1, dtype=np.int64)
        arrays["rows"][join.rows >= 0] = rows
        maps = np.asarray(join.maps)
        # every map used (the usual whole-set join: used is 0..M-1): no second copy of them
        arrays["maps"] = maps if len(used) == len(maps) else np.ascontiguousarray(maps[used])
    return arrays


def join_summary(join: MapJoin | None, num_keys: int, shown: int = 5) -> dict:
    """The counts of a join (what the run logs), kept in the manifest."""
    if join is None:
        return {"num_keys": num_keys}
    return {
        "num_keys": num_keys,
        "method": join.method,
        "joined": num_keys - len(join.missing),
        "missing": len(join.missing),
        "first_missing": [str(k) for k in join.missing[:shown]],
        "changed": len(join.changed),
        "first_changed": list(join.changed[:shown]),
        "extra": join.extra,
    }


def write_table(folder, source: dict, arrays: dict, summary: dict) -> Path:
    """Write a table's files aside and rename each into place, the manifest last (removed
    first: a table being rebuilt is never vouched for). Call it holding the table's lock."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / MANIFEST).unlink(missing_ok=True)
    fsync_path(folder)
    files = {}
    for name, array in arrays.items():
        path = folder / f"{name}.npy"
        remove_stale_temporaries(path)  # what a killed build left
        with atomic_path(path) as tmp:
            np.save(tmp, array, allow_pickle=False)
            files[name] = {
                "file": path.name,
                "bytes": tmp.stat().st_size,
                "sha256": file_sha256(tmp),
                "dtype": array.dtype.str,
                "shape": list(array.shape),
            }
    write_json_atomic(
        folder / MANIFEST,
        {
            "format": TABLE_FORMAT,
            "version": TABLE_VERSION,
            "built_from": source,
            "join": summary,
            "files": files,
            "built": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "host": socket.gethostname(),
        },
    )
    return folder


def _locked(folder: Path, log) -> OutputLock:
    """The table's lock, waiting while another run (another job on this node, or another node
    on a shared file system) builds or checks the same table."""
    lock, waited = OutputLock(folder, "--table_dir"), False
    deadline = time.monotonic() + LOCK_WAIT_S
    while True:
        try:
            return lock.acquire()
        except OutputLockedError as err:
            if time.monotonic() > deadline:
                raise
            if not waited:
                log(f"waiting: {err}")
                waited = True
            time.sleep(1.0)


def prepare_table(
    keys,
    store_path=None,
    image_root=None,
    missing_policy="error",
    changed_policy="error",
    table_dir=None,
    log=print,
) -> Path:
    """The folder of a valid table of ``keys`` (joined with the store at ``store_path``, when
    given): found and checked, or built (``join_maps``, then ``write_table``). One process a
    node calls it; MapJoinError and StoreError as ``join_maps`` raises them."""
    source, identities = built_from(keys, store_path, image_root, missing_policy, changed_policy)
    folder = table_folder(source, table_dir)
    lock = _locked(folder, log)
    try:
        reason = check_table(folder, source)
        if reason is None:
            log(f"joined table {folder}: built before, checked, mapped")
            return folder
        log(f"joined table {folder}: {reason}; building it")
        started = time.perf_counter()
        join = None
        if store_path is not None:
            join = join_maps(
                keys, store_path, missing_policy, image_root, changed_policy, identities
            )
        write_table(folder, source, table_arrays(keys, join), join_summary(join, len(keys)))
        log(f"joined table {folder}: built in {time.perf_counter() - started:.1f} s")
        return folder
    finally:
        lock.release()


def open_node_table(list_keys, info: DistInfo, log=print, **table) -> SharedTable:
    """Every rank's view of its node's table. Local rank 0 calls ``list_keys()`` -> the keys
    and ``prepare_table(keys, **table)``; the others wait for it, learn where the table is, and
    map it. An error on any node's local rank 0 stops every rank."""
    folder, error = None, None
    if info.local_rank == 0:
        try:
            folder = prepare_table(list_keys(), log=log, **table)
        except Exception as err:  # noqa: BLE001 - re-raised below, once every rank knows
            error = err
        _release_freed_heap()
    if max_across_ranks(int(error is not None), info):
        raise error or InputError(
            "the joined map table could not be prepared (local rank 0's error says why)"
        )
    return SharedTable(_node_folder(folder, info))


def _release_freed_heap() -> None:
    """Hand the heap the join freed back to the system (glibc keeps it otherwise: 0.19 of the
    0.33 GiB a 1.28M-key build leaves, measured), so that local rank 0 trains as lean as the
    other ranks; a no-op without glibc."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _node_folder(folder: Path | None, info: DistInfo) -> Path:
    """The folder that local rank 0 of this process's node prepared."""
    if not info.distributed:
        return folder
    import torch.distributed as dist

    here = socket.gethostname()
    mine = (here, info.local_rank, None if folder is None else str(folder))
    gathered = [None] * info.world_size
    dist.all_gather_object(gathered, mine)
    for host, local_rank, path in gathered:
        if host == here and local_rank == 0 and path is not None:
            return Path(path)
    raise InputError(
        f"no local rank 0 runs on {here}: launch with torchrun or srun, which number the ranks "
        "of each node from 0 (LOCAL_RANK, SLURM_LOCALID)"
    )
