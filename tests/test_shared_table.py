"""One joined map table per node: built once, then mapped; a damaged or stale table is rebuilt,
never used; a worker started by spawn receives the table's path, not a copy of its arrays."""

from __future__ import annotations

import json
import os
import pickle

import numpy as np
import pytest

from attgmae.core.distributed import DistInfo
from attgmae.data import shared_table
from attgmae.data.pretrain_dataset import MapJoinError, PretrainDataset, join_maps
from attgmae.data.shared_table import (
    MANIFEST,
    SharedTable,
    TableReplacedError,
    check_table,
    open_node_table,
    prepare_table,
)
from attgmae.data.transforms import JointTransform
from attgmae.store import write_store

KEYS = sorted(f"n{c:08d}/n{c:08d}_{i}.JPEG" for c in range(3) for i in range(7))


@pytest.fixture
def store(tmp_path):
    """A store of more keys than are trained (the extra ones must stay out of the table), one
    map failed."""
    rng = np.random.default_rng(0)
    keys = sorted([*KEYS, "zz/extra.JPEG"])
    maps = rng.random((len(keys), 14, 14)).astype(np.float32)
    ok = np.ones(len(keys), dtype=bool)
    ok[4] = False
    path = tmp_path / "maps.zarr"
    write_store(path, keys, maps, method="test", ok=ok, errors={keys[4]: "boom"})
    return path


def _table(store, **kw):
    folder = prepare_table(np.asarray(KEYS), store, missing_policy="uniform", log=lambda m: None,
                           **kw)  # fmt: skip
    return folder, SharedTable(folder)


def _same_as_join(table: SharedTable, store) -> None:
    """The table serves each key the map the in-memory join serves."""
    join = join_maps(np.asarray(KEYS), store, "uniform")
    assert [k.decode() for k in table.keys[:]] == KEYS
    for i in range(len(KEYS)):
        a = table.maps[table.rows[i]] if table.rows[i] >= 0 else None
        b = join.maps[join.rows[i]] if join.rows[i] >= 0 else None
        assert (a is None and b is None) or np.array_equal(a, b)
    assert table.summary["missing"] == 1 and table.summary["extra"] == 1


def test_a_table_is_built_once_then_mapped_without_building(store, monkeypatch):
    folder, table = _table(store)
    assert folder.parent == store.parent  # beside the store: its folder is writable
    assert check_table(folder, json.loads((folder / MANIFEST).read_text())["built_from"]) is None
    _same_as_join(table, store)
    assert len(table.maps) == len(KEYS) - 1  # only the maps the images use
    inodes = {p.name: p.stat().st_ino for p in folder.iterdir()}

    def no_join(*args, **kwargs):
        raise AssertionError("a valid table was built again")

    monkeypatch.setattr(shared_table, "join_maps", no_join)
    again, table = _table(store)  # a second run on this node
    assert again == folder and {p.name: p.stat().st_ino for p in folder.iterdir()} == inodes
    _same_as_join(table, store)

    # another local rank: it never lists nor builds, and maps the folder local rank 0 made
    monkeypatch.setattr(shared_table, "max_across_ranks", lambda value, info: value)
    monkeypatch.setattr(shared_table, "_node_folder", lambda found, info: folder)

    def no_listing():
        raise AssertionError("local rank 1 listed the images")

    rank1 = open_node_table(no_listing, DistInfo(rank=1, world_size=2, local_rank=1))
    _same_as_join(rank1, store)


def test_each_rank_maps_its_own_nodes_table(monkeypatch):
    import socket

    import torch.distributed as dist

    here = socket.gethostname()
    seen = [("other-node", 0, "/other/t"), (here, 1, None), (here, 0, "/mine/t"), (here, 2, None)]
    monkeypatch.setattr(dist, "all_gather_object", lambda out, mine: out.__setitem__(
        slice(None), seen))  # fmt: skip
    info = DistInfo(rank=3, world_size=4, local_rank=2)
    assert str(shared_table._node_folder(None, info)) == "/mine/t"


def _truncate(path):
    path.write_bytes(path.read_bytes()[:-200])


def _flip_a_byte(path):
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    "damage",
    [
        lambda f: _truncate(f / "maps.npy"),
        lambda f: _flip_a_byte(f / "rows.npy"),  # same size: only the checksum tells
        lambda f: _flip_a_byte(f / "keys.npy"),
        lambda f: (f / "maps.npy").unlink(),
        lambda f: (f / MANIFEST).unlink(),  # a build killed before its manifest
        lambda f: (f / MANIFEST).write_text("{"),
    ],
    ids=["truncated", "rows-flipped", "keys-flipped", "file-missing", "no-manifest",
         "manifest-broken"],
)  # fmt: skip
def test_a_damaged_table_is_rebuilt_never_used(store, damage):
    folder, _ = _table(store)
    source = json.loads((folder / MANIFEST).read_text())["built_from"]
    damage(folder)
    assert check_table(folder, source) is not None  # not usable as it is
    messages = []
    again = prepare_table(np.asarray(KEYS), store, missing_policy="uniform", log=messages.append)
    assert again == folder and "building it" in messages[0]
    assert check_table(folder, source) is None
    _same_as_join(SharedTable(folder), store)


def test_a_stale_table_is_rebuilt(store, tmp_path):
    folder, _ = _table(store)
    # the store regenerated with other maps: the table holds the old ones, and must not serve
    keys = sorted([*KEYS, "zz/extra.JPEG"])
    other = np.random.default_rng(1).random((len(keys), 14, 14)).astype(np.float32)
    write_store(store, keys, other, method="test", overwrite=True)
    messages = []
    prepare_table(np.asarray(KEYS), store, missing_policy="uniform", log=messages.append)
    assert "stale: built from another store_identity" in messages[0]
    table = SharedTable(folder)
    assert np.array_equal(table.maps[table.rows[2]], join_maps(KEYS, store).maps[2])
    assert table.summary["missing"] == 0

    # the images replaced since: a rebuild that finds them changed stops, as the join does
    images = tmp_path / "images"
    for key in keys:
        (images / key).parent.mkdir(parents=True, exist_ok=True)
        (images / key).write_bytes(b"x")
    ids = np.array([[1, os.stat(images / k).st_mtime_ns] for k in keys], dtype=np.int64)
    write_store(store, keys, other, method="test", overwrite=True, image_identity=ids)
    prepare_table(np.asarray(KEYS), store, image_root=images, log=lambda m: None)
    (images / KEYS[3]).write_bytes(b"yy")  # another size
    with pytest.raises(MapJoinError, match="changed since their maps"):
        prepare_table(np.asarray(KEYS), store, image_root=images, log=lambda m: None)


def test_a_spawned_worker_gets_the_path_not_the_arrays(store, tmp_path):
    _, table = _table(store, table_dir=tmp_path / "tables")
    dataset = PretrainDataset(tmp_path, table.keys, JointTransform(32), 4, "store", table)
    shipped = pickle.dumps(dataset)  # what spawn / forkserver send a DataLoader worker
    assert len(shipped) < 4096 and table.maps[:].nbytes > 4096
    copy = pickle.loads(shipped)
    assert np.array_equal(copy.join.maps[:], table.maps[:]) and copy.key(5) == KEYS[5]

    # another run rebuilt the table meanwhile: a worker refuses it rather than mix two tables
    maps_file = table.maps.path
    data = np.load(maps_file)
    os.replace(maps_file, maps_file.with_name("old.npy"))
    np.save(maps_file, data)
    with pytest.raises(TableReplacedError, match="was replaced"):
        pickle.loads(shipped).join.maps[0]
