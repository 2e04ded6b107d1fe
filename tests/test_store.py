"""The map store: layout, writer (resume, crash, two processes), reader, fork safety."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from attgmae.store import (
    STATUS_FAILED,
    STATUS_OK,
    MapStoreWriter,
    StoreError,
    normalize_maps,
    open_store,
    write_store,
)

SMALL = {"chunk_rows": 16, "shard_rows": 64}


def make_keys(n: int) -> list[str]:
    return sorted(f"n{i % 7:08d}/img_{i:05d}.JPEG" for i in range(n))


def make_maps(n: int, seed: int = 0) -> np.ndarray:
    return normalize_maps(np.random.default_rng(seed).random((n, 14, 14)))


def test_normalize_maps_min_max_and_constant_maps():
    maps = np.stack([np.arange(196.0).reshape(14, 14) * 3 + 5, np.full((14, 14), 7.0)])
    out = normalize_maps(maps)
    assert out[0].min() == 0 and out[0].max() == 1
    np.testing.assert_allclose(out[0], (maps[0] - 5) / (195 * 3))
    assert (out[1] == 0).all()


@pytest.mark.parametrize("suffix", [".zarr", ".h5"])
def test_roundtrip_lookup_and_attributes(tmp_path, suffix):
    keys, maps = make_keys(300), make_maps(300)
    labels = np.arange(300) % 7
    ok = np.ones(300, bool)
    ok[[3, 150]] = False
    path = write_store(
        tmp_path / f"s{suffix}",
        keys,
        maps,
        method="dino",
        attrs={"params": {"heads": "mean"}, "model": {"sha256": "abc"}},
        labels=labels,
        ok=ok,
        errors={keys[3]: "truncated", keys[150]: "empty"},
        **SMALL,
    )
    store = open_store(path)
    assert list(store.keys) == keys
    assert store.method == "dino" and store.attrs["params"] == {"heads": "mean"}
    assert store.attrs["model"] == {"sha256": "abc"} and store.attrs["grid"] == [14, 14]
    assert store.attrs["complete"] is True and store.maps_dtype == "float16"
    assert store.failed == {keys[3]: "truncated", keys[150]: "empty"}
    assert store.failed_keys() == [keys[3], keys[150]]
    assert (store.status[[3, 150]] == STATUS_FAILED).all() and store.ok_count() == 298
    np.testing.assert_array_equal(store.labels, labels)
    expected = np.where(ok[:, None, None], maps, 0).astype(np.float16).astype(np.float32)
    np.testing.assert_array_equal(store.get(keys[10]), expected[10])
    batch = [keys[200], keys[5], keys[77], keys[5]]  # any order, repeats allowed
    np.testing.assert_array_equal(store.get_batch(batch), expected[[200, 5, 77, 5]])
    table = store.load()
    np.testing.assert_array_equal(table.lookup(batch), expected[[200, 5, 77, 5]])
    assert table.index_of(["nope", keys[0], keys[-1]]).tolist() == [-1, 0, 299]
    with pytest.raises(KeyError, match="nope"):
        store.get_batch(["nope"])


def test_zarr_store_is_sharded_and_compressed(tmp_path):
    path = write_store(tmp_path / "s.zarr", make_keys(300), make_maps(300), method="m", **SMALL)
    shard_files = sorted(
        p for p in (path / "maps").rglob("*") if p.is_file() and p.name != "zarr.json"
    )
    assert len(shard_files) == 5  # ceil(300 / 64) shards, one file each
    import json

    codecs = json.dumps(json.loads((path / "maps" / "zarr.json").read_text()))
    assert "sharding_indexed" in codecs and "zstd" in codecs


def test_refuses_overwrite_and_bad_keys(tmp_path):
    keys, maps = make_keys(20), make_maps(20)
    path = write_store(tmp_path / "s.zarr", keys, maps, method="m")
    with pytest.raises(StoreError, match="--overwrite"):
        write_store(path, keys, maps, method="m")
    write_store(path, keys, maps * 0.5, method="m2", overwrite=True)
    assert open_store(path).method == "m2"
    with pytest.raises(StoreError, match="duplicate"):
        write_store(tmp_path / "d.zarr", ["a", "a"], make_maps(2), method="m")
    with pytest.raises(StoreError, match="not sorted"):
        write_store(tmp_path / "u.zarr", ["b", "a"], make_maps(2), method="m")
    with pytest.raises(StoreError, match=r"\.zarr, \.h5"):
        write_store(tmp_path / "x.npz", ["a"], make_maps(1), method="m")


def test_writer_rejects_nan_and_out_of_range(tmp_path):
    writer = MapStoreWriter(tmp_path / "s.zarr", make_keys(4), method="m", **SMALL)
    bad = make_maps(4)
    bad[2, 0, 0] = np.nan
    with pytest.raises(StoreError, match="NaN"):
        writer.write_chunk(0, bad, np.ones(4, bool))
    bad = make_maps(4) * 2
    with pytest.raises(StoreError, match=r"outside \[0, 1\]"):
        writer.write_chunk(0, bad, np.ones(4, bool))
    # a failed row may hold anything: it is stored as zeros
    bad = make_maps(4)
    bad[1] = np.nan
    ok = np.array([True, False, True, True])
    writer.write_chunk(0, bad, ok, {make_keys(4)[1]: "decode error"})
    writer.finish_rank()
    store = open_store(writer.finalize())
    assert (store.get_batch([store.keys[1]]) == 0).all() and store.status[1] == STATUS_FAILED


def test_incomplete_store_is_not_readable_and_finalize_needs_all_rows(tmp_path):
    writer = MapStoreWriter(tmp_path / "s.zarr", make_keys(100), method="m", **SMALL)
    writer.write_chunk(0, make_maps(16), np.ones(16, bool))
    with pytest.raises(StoreError, match="not written"):
        writer.finalize()
    with pytest.raises(StoreError, match="interrupted"):
        open_store(tmp_path / "s.zarr")


@pytest.mark.parametrize("suffix", [".zarr", ".h5"])
def test_crash_and_resume_keeps_written_rows(tmp_path, suffix):
    """A writer process SIGKILLed mid-run; the rerun computes only the missing chunks."""
    n, out = 200, tmp_path / f"s{suffix}"
    script = textwrap.dedent(f"""
        import os, signal, numpy as np
        from attgmae.store import MapStoreWriter, normalize_maps
        keys = sorted(f"n{{i % 7:08d}}/img_{{i:05d}}.JPEG" for i in range({n}))
        maps = normalize_maps(np.random.default_rng(0).random(({n}, 14, 14)))
        w = MapStoreWriter({str(out)!r}, keys, method="m", chunk_rows=16, shard_rows=64)
        for done, (chunk, start, stop) in enumerate(w.pending_chunks()):
            if done == 7:
                os.kill(os.getpid(), signal.SIGKILL)
            w.write_chunk(chunk, maps[start:stop], np.ones(stop - start, bool))
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True)
    assert proc.returncode == -9, proc.stderr.decode()
    assert not out.exists()
    keys, maps = make_keys(n), make_maps(n)
    writer = MapStoreWriter(out, keys, method="m", **SMALL)
    assert writer.resumed
    pending = writer.pending_chunks()
    assert [c for c, _, _ in pending] == list(range(7, 13))  # 13 chunks, 7 survived the crash
    for chunk, start, stop in pending:
        writer.write_chunk(chunk, maps[start:stop], np.ones(stop - start, bool))
    writer.finish_rank()
    store = open_store(writer.finalize())
    np.testing.assert_array_equal(store.read_all(), maps.astype(np.float16))
    assert not (tmp_path / f"s{suffix}.partial").exists()


def test_resume_refuses_a_partial_store_of_other_keys(tmp_path):
    MapStoreWriter(tmp_path / "s.zarr", make_keys(50), method="m", **SMALL)
    with pytest.raises(StoreError, match="other keys or parameters.*--overwrite"):
        MapStoreWriter(tmp_path / "s.zarr", make_keys(51), method="m", **SMALL)
    # --overwrite discards it; the same run with --overwrite still resumes
    writer = MapStoreWriter(tmp_path / "s.zarr", make_keys(51), method="m", overwrite=True, **SMALL)
    assert not writer.resumed
    writer.write_chunk(0, make_maps(16), np.ones(16, bool))
    again = MapStoreWriter(tmp_path / "s.zarr", make_keys(51), method="m", overwrite=True, **SMALL)
    assert again.resumed and [c for c, _, _ in again.pending_chunks()] == [1, 2, 3]


def test_two_processes_write_disjoint_whole_shards(tmp_path):
    """Two concurrent writers on one zarr store: every row lands, none is lost."""
    n, out = 1000, tmp_path / "s.zarr"
    keys, maps = make_keys(n), make_maps(n, seed=3)
    MapStoreWriter(out, keys, method="m", **SMALL)  # rank 0 prepares first
    script = textwrap.dedent(f"""
        import sys, numpy as np
        from attgmae.store import MapStoreWriter, normalize_maps
        rank = int(sys.argv[1])
        keys = sorted(f"n{{i % 7:08d}}/img_{{i:05d}}.JPEG" for i in range({n}))
        maps = normalize_maps(np.random.default_rng(3).random(({n}, 14, 14)))
        w = MapStoreWriter({str(out)!r}, keys, method="m", chunk_rows=16, shard_rows=64,
                           rank=rank, world_size=2)
        for chunk, start, stop in w.pending_chunks():
            w.write_chunk(chunk, maps[start:stop], np.ones(stop - start, bool))
        w.finish_rank()
    """)
    procs = [subprocess.Popen([sys.executable, "-c", script, str(r)]) for r in (0, 1)]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    writer = MapStoreWriter(out, keys, method="m", **SMALL)
    assert writer.pending_chunks() == []
    store = open_store(writer.finalize())
    np.testing.assert_array_equal(store.read_all(), maps.astype(np.float16))
    assert (store.status == STATUS_OK).all()


def test_a_rank_cannot_write_another_ranks_shard(tmp_path):
    keys = make_keys(200)
    MapStoreWriter(tmp_path / "s.zarr", keys, method="m", **SMALL)
    rank1 = MapStoreWriter(tmp_path / "s.zarr", keys, method="m", rank=1, world_size=2, **SMALL)
    assert all((chunk // 4) % 2 == 1 for chunk, _, _ in rank1.pending_chunks())
    with pytest.raises(StoreError, match="does not own shard 0"):
        rank1.write_chunk(0, make_maps(16), np.ones(16, bool))


class _StoreDataset(torch.utils.data.Dataset):
    def __init__(self, store, table, keys):
        self.store, self.table, self.keys = store, table, keys

    def __len__(self):
        return len(self.keys)

    def __getitem__(self, i):
        key = self.keys[i]
        return torch.from_numpy(self.store.get(key)), torch.from_numpy(self.table.lookup([key])[0])


@pytest.mark.parametrize("suffix", [".h5", ".zarr"])
def test_reads_in_forked_dataloader_workers(tmp_path, suffix):
    keys, maps = make_keys(64), make_maps(64)
    store = open_store(write_store(tmp_path / f"s{suffix}", keys, maps, method="m"))
    table = store.load()  # loaded once in the parent, shared with the forked workers
    loader = torch.utils.data.DataLoader(
        _StoreDataset(store, table, keys),
        batch_size=8,
        num_workers=2,
        multiprocessing_context="fork",
    )
    got_direct, got_table = zip(*loader)
    expected = torch.from_numpy(maps.astype(np.float16).astype(np.float32))
    assert torch.equal(torch.cat(got_direct), expected)
    assert torch.equal(torch.cat(got_table), expected)
    np.testing.assert_array_equal(store.get(keys[0]), expected[0].numpy())
