"""The image-map join, the per-sample determinism and the resumable distributed sampler."""

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from attgmae.data.example import write_example
from attgmae.data.pretrain_dataset import (
    EpochSampler,
    MapJoinError,
    PretrainDataset,
    join_maps,
    list_train_keys,
)
from attgmae.data.transforms import JointTransform
from attgmae.store import normalize_maps, open_store, write_store


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    base = tmp_path_factory.mktemp("train_data")
    root = write_example(base / "ex", n_train_per_class=3, n_val_per_class=1)
    _, keys = list_train_keys(root)
    rng = np.random.default_rng(0)
    maps = normalize_maps(rng.random((len(keys), 14, 14)).astype(np.float32))
    ok = np.ones(len(keys), dtype=bool)
    ok[5] = False  # one failed map computation
    store = base / "maps.zarr"
    # extra keys that match no image shift every row: the join must go by key, not position
    extra = ["a_extra/x.JPEG", "d_extra/y.JPEG"]
    store_keys = sorted([*keys, *extra])
    rows = {k: i for i, k in enumerate(keys)}
    store_maps = np.stack([maps[rows[k]] if k in rows else np.ones((14, 14), np.float32)
                           for k in store_keys])
    store_ok = np.array([ok[rows[k]] if k in rows else True for k in store_keys])
    write_store(store, store_keys, store_maps, method="test", ok=store_ok,
                errors={keys[5]: "boom"})
    return root, keys, store, maps


def test_join_by_key_not_by_position(data):
    root, keys, store, maps = data
    with pytest.raises(MapJoinError, match=f"1 of {len(keys)} training images have no map"):
        join_maps(keys, store, "error")
    join = join_maps(keys, store, "uniform")
    assert list(join.missing) == [keys[5]] and join.extra == 2
    ds = PretrainDataset(root / "train", keys, JointTransform(224), 196, "store", join)
    table = open_store(store)
    for i in (0, 3, 7, 11):
        expected = table.get(keys[i])
        assert torch.allclose(ds[(i, 0)]["map"], torch.from_numpy(expected), atol=1e-3)
        np.testing.assert_allclose(expected, maps[i], atol=1e-3)  # float16 storage
    assert torch.all(ds[(5, 0)]["map"] == 0)  # failed map -> uniform weights
    assert join.maps.dtype == np.float16 and join.rows.dtype == np.int64


def test_samples_depend_only_on_seed_epoch_index(data):
    root, keys, store, _ = data
    join = join_maps(keys, store, "uniform")
    ds = PretrainDataset(root / "train", keys, JointTransform(224), 196, "store", join, seed=3)
    a, b, c = ds[(4, 1)], ds[(4, 1)], ds[(4, 2)]
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["noise"], b["noise"])
    assert not torch.equal(a["noise"], c["noise"])  # a new epoch draws new masks and crops
    sampler = EpochSampler(len(ds), seed=3)
    batches = []
    for workers in (0, 2):
        loader = DataLoader(ds, batch_size=4, sampler=sampler, num_workers=workers)
        batches.append([b for b in loader])
    for x, y in zip(*batches):
        assert torch.equal(x["image"], y["image"]) and torch.equal(x["box"], y["box"])
        assert torch.equal(x["noise"], y["noise"]) and torch.equal(x["map"], y["map"])


@pytest.mark.parametrize("length, world", [(16, 2), (13, 4), (12, 3)])
def test_sampler_ranks_split_the_one_process_order(length, world):
    single = EpochSampler(length, seed=5)
    single.set_epoch(2)
    order = [i for i, _ in single]
    ranks = [EpochSampler(length, world, r, seed=5) for r in range(world)]
    for s in ranks:
        s.set_epoch(2)
    per_rank = [[i for i, e in s] for s in ranks]
    assert all(len(p) == -(-length // world) for p in per_rank)
    # step k of every rank together = samples k*world .. k*world + world - 1 of the single order
    merged = [per_rank[r][k] for k in range(len(per_rank[0])) for r in range(world)]
    assert merged[:length] == order and sorted(set(merged)) == list(range(length))
    resumed = EpochSampler(length, world, 1, seed=5)
    resumed.set_epoch(2, start=2)
    assert [i for i, _ in resumed] == per_rank[1][2:] and len(resumed) == len(per_rank[1]) - 2
    single.set_epoch(3)
    assert [i for i, _ in single] != order and {e for _, e in single} == {3}


def test_non_ascii_keys(tmp_path):
    folder = tmp_path / "train" / "café"
    folder.mkdir(parents=True)
    Image.fromarray(np.full((40, 50, 3), 200, np.uint8)).save(folder / "naïve ünï.png")
    _, keys = list_train_keys(tmp_path)
    ds = PretrainDataset(tmp_path / "train", keys, JointTransform(32), 4, "random")
    sample = ds[(0, 0)]
    assert ds.key(0) == "café/naïve ünï.png" and sample["image"].shape == (3, 32, 32)
    assert sample["map"].shape == (14, 14) and sample["bad"] == ""
