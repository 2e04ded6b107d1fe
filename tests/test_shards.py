"""Tar shards (webdataset) of the example set: `attg-maps pack` writes what training's join
gives, checksummed and whole shards only; `attg-train` on the shards trains exactly as on the
folder for the same sample order; ranks and workers split the shards without overlap and a
resumed epoch continues with the same batches; `attg-maps generate` on the shards writes the
stores it writes from the folder."""

from __future__ import annotations

import hashlib
import shutil
import tarfile
from functools import partial

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from attgmae.checkpoint import load_checkpoint
from attgmae.cli.maps import main as maps_main
from attgmae.cli.train import main as train_main
from attgmae.core.listing import folder_labels, list_images
from attgmae.data import shard_stream
from attgmae.data.pretrain_dataset import BadImageError, EpochSampler
from attgmae.data.shard_access import ShardReader
from attgmae.data.shard_stream import ShardTrainStream, plan_streams
from attgmae.data.shards import ShardError, decode_sample, open_shards
from attgmae.data.transforms import JointTransform
from attgmae.pipelines import pack, train_data
from attgmae.store import open_store, write_store

FAST = ["--model", "mae_vit_tiny_patch16", "--input_size", "32", "--device", "cpu",
        "--print_freq", "1", "--accum_iter", "1", "--epochs", "1", "--warmup_epochs", "0",
        "--batch_size", "8", "--num_workers", "0"]  # fmt: skip


@pytest.fixture(scope="module")
def packed(tmp_path_factory, make_truth_example):
    """(example root, its store, the shard pattern of 4 shards of 4 images)."""
    base = tmp_path_factory.mktemp("shards")
    root, maps = make_truth_example(base, 4, 1)
    out = base / "shards" / "train-%06d.tar"
    argv = ["pack", str(root / "train"), "--maps", str(maps), "--out", str(out)]
    assert maps_main([*argv, "--shard_size", "5"]) == 0
    return root, maps, str(base / "shards" / "train-{000000..000003}.tar")


def test_pack_holds_what_the_join_gives(packed):
    root, maps, pattern = packed
    shards = open_shards(pattern)
    keys = list_images(root / "train")
    assert shards.counts == [4, 4, 4, 4] and shards.num_samples == len(keys) == 16
    store, labels = open_store(maps), folder_labels(keys)[1]
    reader = ShardReader(shards)
    for row, key in enumerate(keys):
        sample = reader.sample(row)
        assert (sample.index, sample.key, sample.label) == (row, key, labels[row])
        assert sample.image == (root / "train" / key).read_bytes()  # the file's own bytes
        assert np.array_equal(sample.maps["imported"], store.read_rows([row])[0])
    assert shards.index["stores"][0]["identity"] and shards.index["keys_sha256"]


def test_a_damaged_sample_is_refused(packed, tmp_path):
    _, _, pattern = packed
    shard = open_shards(pattern).paths[1]
    with tarfile.open(shard) as tar:
        image = next(m for m in tar.getmembers() if m.name.endswith(".jpeg"))
    data = bytearray(shard.read_bytes())
    data[image.offset_data + 100] ^= 0xFF  # one bit in the image, sizes unchanged
    bad = tmp_path / shard.name
    bad.write_bytes(bytes(data))
    from webdataset.tariterators import tarfile_samples

    members = next(iter(tarfile_samples([{"url": str(bad)}])))
    with pytest.raises(ShardError, match=r"train-000001.tar: sample 0000000004: its jpeg differs"):
        decode_sample(members, bad.name)


def test_a_killed_pack_leaves_whole_shards_and_a_rerun_continues(packed, tmp_path, monkeypatch):
    root, maps, _ = packed
    argv = ["pack", str(root / "train"), "--maps", str(maps), "--shard_size", "5", "--out"]
    real = pack.encode_sample

    def killed_at_9(index, *args):
        if index == 9:  # inside the third shard
            raise KeyboardInterrupt
        return real(index, *args)

    monkeypatch.setattr(pack, "encode_sample", killed_at_9)
    out = tmp_path / "a" / "train-%06d.tar"
    assert maps_main([*argv, str(out)]) != 0  # Ctrl-C, or a kill
    folder = out.parent
    left = sorted(p.name for p in folder.iterdir())
    assert left == [".train-index.json.lock", "train-000000.tar", "train-000001.tar",
                    "train-index.json.progress"]  # fmt: skip
    for name in left[1:3]:
        with tarfile.open(folder / name) as tar:
            assert len(tar.getmembers()) == 4 * 5  # whole: 4 samples of 5 members
    monkeypatch.setattr(pack, "encode_sample", real)
    assert maps_main([*argv, str(out)]) == 0  # continues with shard 2
    assert maps_main([*argv, str(tmp_path / "b" / "train-%06d.tar")]) == 0  # in one go
    for i in range(4):
        a, b = (tmp_path / d / f"train-{i:06d}.tar" for d in "ab")
        assert hashlib.sha256(a.read_bytes()).digest() == hashlib.sha256(b.read_bytes()).digest()
    assert not (folder / "train-index.json.progress").exists()


def _train(data_path, out, capsys, *extra):
    """-> (the loss of each iteration as printed, the weights at the end)."""
    capsys.readouterr()
    assert train_main(["--data_path", str(data_path), "--output_dir", str(out), *FAST,
                       *map(str, extra)]) == 0  # fmt: skip
    losses = [line.split(" loss ")[1].split()[0] for line in capsys.readouterr().out.splitlines()
              if line.startswith("Epoch [0] [")]  # fmt: skip
    return losses, load_checkpoint(out / "checkpoint-last.pth")["model"]


def test_training_on_shards_equals_training_on_the_folder(packed, tmp_path, monkeypatch, capsys):
    root, maps, pattern = packed
    # the same order on both sides: the folder's sampler unshuffled, the shards in their order
    # through a buffer of one sample
    monkeypatch.setattr(train_data, "EpochSampler", partial(EpochSampler, shuffle=False))
    monkeypatch.setattr(shard_stream, "shard_order", lambda n, seed, epoch: np.arange(n))
    folder = _train(root, tmp_path / "folder", capsys, "--maps", maps)
    shards = _train(pattern, tmp_path / "shards", capsys, "--maps", "imported",
                    "--shuffle_buffer", 1)  # fmt: skip
    assert folder[0] == shards[0] and len(folder[0]) == 2 and folder[0][0] != folder[0][1]
    assert all(torch.equal(folder[1][name], shards[1][name]) for name in folder[1])


def test_a_run_on_shards_killed_mid_epoch_resumes_to_the_sample(packed, tmp_path, capsys):
    _, _, pattern = packed
    common = ["--maps", "imported", "--batch_size", 2, "--num_workers", 2, "--shuffle_buffer", 5]
    whole = _train(pattern, tmp_path / "whole", capsys, *common)
    killed = tmp_path / "killed"
    _train(pattern, killed, capsys, *common, "--ckpt_every_steps", 3, "--stop_after_iters", 3)
    resumed = _train(pattern, killed, capsys, *common, "--auto_resume")
    assert len(whole[0]) == 8 and resumed[0] == whole[0][3:]  # 2 workers, resumed at an odd step
    assert all(torch.equal(whole[1][name], resumed[1][name]) for name in whole[1])


def test_training_on_shards_keeps_the_packs_policies(packed, tmp_path, capsys):
    root, _, _ = packed
    keys = list_images(root / "train")
    partial_store = tmp_path / "some.zarr"  # no map for the first image
    write_store(partial_store, keys[1:], np.zeros((len(keys) - 1, 14, 14)), method="some")
    out = tmp_path / "s" / "train-%06d.tar"
    assert maps_main(["pack", str(root / "train"), "--maps", str(partial_store), "--out",
                      str(out), "--missing_maps", "uniform"]) == 0  # fmt: skip
    capsys.readouterr()

    def train(data_path, *flags):
        argv = ["--data_path", data_path, "--output_dir", tmp_path / "out", *flags, *FAST]
        assert train_main([str(a) for a in argv]) == 2
        return capsys.readouterr().err

    pattern = tmp_path / "s" / "train-000000.tar"
    assert "1 of 16 images in the shards have no some map" in train(pattern, "--maps", "some")
    assert "the shards hold no tokencut maps (they hold: some)" in train(
        pattern, "--maps", "tokencut"
    )
    assert "nowhere-index.json not found" in train(tmp_path / "nowhere-{0..1}.tar",
                                                   "--guidance", "none")  # fmt: skip


def _stream(pattern, world, workers, rank=0, batch=2):
    shards = open_shards(pattern)
    plan = plan_streams(shards.counts, world, workers, batch)
    return ShardTrainStream(shards, plan, rank, JointTransform(32), 4, "store", "imported",
                            seed=3, shuffle_buffer=3)  # fmt: skip


def test_ranks_and_workers_read_disjoint_shards(packed):
    _, _, pattern = packed
    epochs = []
    for epoch in (0, 1):
        seen = []
        for rank in (0, 1):
            stream = _stream(pattern, 2, 2, rank)
            stream.set_epoch(epoch)
            for worker in (0, 1):
                indices = [int(m["__key__"]) for m in stream.raw_samples(worker)]
                assert len(indices) == stream.plan.quota == 4
                seen += indices
        assert sorted(seen) == list(range(16))  # every sample once, by one stream
        epochs.append(seen)
    assert epochs[0] != epochs[1]  # another order, another split, each epoch
    stream = _stream(pattern, 1, 3)  # 3 streams of 1 shard: one shard left out, not the same
    left_out = []
    for epoch in range(4):
        stream.set_epoch(epoch)
        used = {int(m["__key__"]) // 4 for w in range(3) for m in stream.raw_samples(w)}
        left_out.append(({0, 1, 2, 3} - used).pop())
    assert len(set(left_out)) > 1


def test_a_resumed_epoch_continues_with_the_same_batches(packed, monkeypatch):
    _, _, pattern = packed
    stream = _stream(pattern, 1, 2)
    loader = DataLoader(stream, batch_size=2, num_workers=2)
    stream.set_epoch(5)
    whole = [(b["index"].tolist(), b["noise"]) for b in loader]
    assert len(whole) == stream.plan.iters_per_epoch == 8
    stream.set_epoch(5, start=3 * 2)  # 3 iterations done
    resumed = [(b["index"].tolist(), b["noise"]) for b in loader]
    assert [i for i, _ in resumed] == [i for i, _ in whole[3:]]
    assert all(torch.equal(a, b) for (_, a), (_, b) in zip(resumed, whole[3:]))

    decoded = []  # what is skipped is read, not decoded
    real = shard_stream.decode_rgb_bytes
    monkeypatch.setattr(shard_stream, "decode_rgb_bytes", lambda *a: decoded.append(1) or real(*a))
    single = _stream(pattern, 1, 1)
    single.set_epoch(0, start=5 * 2)
    assert len(list(single)) == 16 - 10 and len(decoded) == 6


def test_generate_on_shards_writes_the_folders_stores(packed, tmp_path):
    root, _, pattern = packed
    first = open_shards(pattern).paths[0]  # 4 images
    listed = tmp_path / "four.txt"
    listed.write_text("".join(k + "\n" for k in ShardReader(open_shards(str(first))).keys()))
    common = ["--methods", "dino,random", "--random_weights", "--device", "cpu",
              "--num_workers", "0", "--no_progress"]  # fmt: skip
    assert maps_main(["generate", str(root / "train"), "--file_list", str(listed), "--out",
                      str(tmp_path / "folder"), *common]) == 0  # fmt: skip
    assert maps_main(["generate", str(first), "--out", str(tmp_path / "shards"), *common]) == 0
    for method in ("dino", "random"):
        a, b = (open_store(tmp_path / d / f"{method}.zarr") for d in ("folder", "shards"))
        assert list(a.keys) == list(b.keys) and len(a.keys) == 4
        assert np.array_equal(a.read_all(), b.read_all()) and np.array_equal(a.labels, b.labels)
    shutil.rmtree(tmp_path / "shards")


def test_shard_items_for_the_gpu_decoder_are_the_folders(packed):
    """--decode gpu over shards: the same payloads (a JPEG's bytes) as over the folder."""
    from attgmae.data.map_inputs import DecodedImages
    from attgmae.data.shard_access import ShardImages

    root, _, pattern = packed
    shards = open_shards(pattern)
    keys = ShardReader(shards).keys()
    folder = DecodedImages(root / "train", keys, on_device="decode")
    packed_images = ShardImages(shards, keys, on_device="decode")
    for row in (0, len(keys) - 1):
        got, want = packed_images[row][1], folder[row][1]
        assert got.dim() == 1 and torch.equal(got, want)


def test_an_undecodable_image_in_shards_stops_or_is_stood_in_for(example_root, tmp_path):
    images = tmp_path / "train"
    keys = list_images(example_root / "train")[:4]
    for key in keys:
        (images / key).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(example_root / "train" / key, images / key)
    (images / keys[0]).write_bytes(b"not a jpeg")  # the first: no good image before it
    write_store(tmp_path / "m.zarr", keys, np.zeros((4, 14, 14)), method="m")
    out = tmp_path / "s" / "t-%06d.tar"
    assert maps_main(["pack", str(images), "--maps", str(tmp_path / "m.zarr"), "--out",
                      str(out)]) == 0  # fmt: skip
    shards = open_shards(str(tmp_path / "s" / "t-000000.tar"))
    plan = plan_streams(shards.counts, 1, 1, 2)

    def stream(skip):
        return ShardTrainStream(shards, plan, 0, JointTransform(32), 4, "store", "m", 0, 1, skip)

    with pytest.raises(BadImageError, match=f"{keys[0]}.*--skip_bad_images"):
        list(stream(False))
    samples = list(stream(True))
    assert [s["index"] for s in samples] == [1, 1, 2, 3]  # the next good image stands in
    assert [s["bad"] for s in samples] == [keys[0], "", "", ""]


def test_the_next_commands_after_a_run_on_shards_name_an_image_folder(tmp_path):
    """k-NN and the linear probe read train/ and val/ folders: not the training shards."""
    from attgmae.pipelines.train_config import TrainConfig
    from attgmae.pipelines.train_launch import finished_message

    on_shards = TrainConfig(data_path="shards/train-{000000..000009}.tar", epochs=2)
    text = finished_message(on_shards, tmp_path)
    assert "--data_path IMAGES" in text and ".tar" not in text
    on_folder = TrainConfig(data_path="/data/in1k")
    assert "--data_path /data/in1k" in finished_message(on_folder, tmp_path)
