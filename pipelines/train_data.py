"""What ``attg-train`` trains on: the images joined with their maps (one table per node, mapped
by its ranks and workers: ``attgmae.data.shared_table``), sampled per rank, or tar shards
streamed (``train_shards``); and the batch arithmetic (accumulation to the paper's effective
batch, the lr it implies)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from attgmae.core.distributed import DistInfo
from attgmae.core.errors import InputError
from attgmae.core.listing import split_root
from attgmae.core.signals import ignore_stop_signals
from attgmae.data.pretrain_dataset import EpochSampler, PretrainDataset, list_train_keys
from attgmae.data.shards import is_shard_source, open_shards
from attgmae.data.shared_table import SharedTable, open_node_table
from attgmae.data.transforms import JointTransform
from attgmae.pipelines.train_config import TrainConfig, resolve_accum
from attgmae.store import open_store


@dataclass
class TrainData:
    join: SharedTable | None  # the map store joined with the images (guided runs; .method)
    dataset: PretrainDataset
    sampler: EpochSampler  # (shards: the stream, whose set_epoch(epoch, start) is the same)
    loader: DataLoader
    iters_per_epoch: int  # per rank
    accum_iter: int
    eff_batch_size: int  # samples per optimizer step, all ranks together
    base_lr: float  # the absolute lr: --lr, or blr * effective batch / 256
    identity: dict  # what the run trains on, as resuming compares it (images, maps, streams)


def join_note(summary: dict, cfg: TrainConfig, source) -> str:
    """The log line of a join (``shared_table.join_summary``'s counts), for a store or shards."""
    total = summary["num_keys"]
    note = f"{summary['joined']}/{total} images joined with {source} ({summary['method']} maps)"
    if summary["missing"]:
        note += f"; {summary['missing']} without a map train with uniform weights"
    if summary["changed"]:
        how = "uniform weights" if cfg.changed_images == "uniform" else "their old maps"
        note += (f"; {summary['changed']} changed since their maps were computed train with "
                 f"{how} (--changed_images {cfg.changed_images}; first: "
                 f"{summary['first_changed'][0]})")  # fmt: skip
    if summary.get("extra"):
        note += f"; {summary['extra']} maps match no training image (ignored)"
    return note


def _node_table(cfg: TrainConfig, info: DistInfo, image_root, log) -> SharedTable:
    """The node's table of the training keys, joined with the store for guided runs: local
    rank 0 lists the images (--skip_bad_images also leaves out folders and images that cannot
    be read, warned about) and builds or checks it; every rank maps it."""
    guided = cfg.guidance == "store"
    table = open_node_table(
        lambda: list_train_keys(cfg.data_path, [] if cfg.skip_bad_images else None)[1],
        info,
        log=log,
        store_path=cfg.maps if guided else None,
        image_root=image_root if guided else None,
        missing_policy=cfg.missing_maps,
        changed_policy=cfg.changed_images,
        table_dir=cfg.table_dir,
    )
    if guided:
        log(join_note(table.summary, cfg, cfg.maps))
    return table


def build_train_data(cfg: TrainConfig, info: DistInfo, device, num_patches: int, log) -> TrainData:
    if is_shard_source(cfg.data_path):  # a brace pattern of tar shards, as webdataset expands it
        from attgmae.pipelines.train_shards import shard_source

        join, dataset, sampler, loader, iters_per_epoch = shard_source(
            cfg, info, device, num_patches, log
        )
        identity = _shards_identity(cfg, info)
    else:
        join, dataset, sampler, loader, iters_per_epoch, keys_sha256 = _folder_source(
            cfg, info, device, num_patches, log
        )
        identity = {
            "images": f"{len(dataset)} images, keys sha256 {keys_sha256[:16]}",
            "maps": store_identity(cfg.maps, join) if join is not None else None,
        }
    accum_iter = resolve_accum(cfg.accum_iter, cfg.batch_size, info.world_size, iters_per_epoch)
    eff_batch_size = cfg.batch_size * accum_iter * info.world_size
    base_lr = cfg.lr if cfg.lr is not None else cfg.blr * eff_batch_size / 256
    return TrainData(
        join, dataset, sampler, loader, iters_per_epoch, accum_iter, eff_batch_size, base_lr,
        identity,
    )  # fmt: skip


def _shards_identity(cfg: TrainConfig, info: DistInfo) -> dict:
    """What a run on shards trains on, as resuming compares it: the packed images and maps, and
    how the streams cut them (a resume continues each stream where it stood: the same ranks,
    streams and shuffle buffer)."""
    from attgmae.pipelines.train_shards import shard_method

    shards = open_shards(cfg.data_path)
    index, maps = shards.index, None
    if cfg.guidance == "store":
        store = shards.store(shard_method(cfg, shards))
        maps = f"{store['method']} maps packed, store {str(store['identity'])[:16]}"
    streams = max(1, cfg.num_workers)
    return {
        "images": f"{index['num_samples']} packed images, keys sha256 {index['keys_sha256'][:16]}",
        "maps": maps,
        "streams": f"{info.world_size} rank(s) x {streams} stream(s), shuffle buffer "
        f"{cfg.shuffle_buffer}",
    }


def _folder_source(cfg: TrainConfig, info: DistInfo, device, num_patches: int, log):
    """<data_path>/train's images and the node's table: (join, dataset, sampler, loader,
    iterations per epoch)."""
    image_root = split_root(cfg.data_path, "train")
    table = _node_table(cfg, info, image_root, log)
    join = table if cfg.guidance == "store" else None
    dataset = PretrainDataset(
        image_root,
        table.keys,
        JointTransform(cfg.input_size, cfg.aug),
        num_patches=num_patches,
        guidance=cfg.guidance,
        join=join,
        seed=cfg.seed,
        skip_bad_images=cfg.skip_bad_images,
    )
    sampler = EpochSampler(len(dataset), info.world_size, info.rank, seed=cfg.seed)
    iters_per_epoch = sampler.num_samples // cfg.batch_size
    if iters_per_epoch == 0:
        raise InputError(
            f"--batch_size {cfg.batch_size} is larger than the {sampler.num_samples} "
            f"images each of the {info.world_size} process(es) gets: lower it"
        )
    loader = DataLoader(
        dataset,
        batch_size=cfg.batch_size,
        sampler=sampler,
        num_workers=cfg.num_workers,
        pin_memory=cfg.pin_mem and device.type == "cuda",
        drop_last=True,
        persistent_workers=cfg.num_workers > 0,
        worker_init_fn=ignore_stop_signals,  # the main process answers SIGTERM / SIGUSR1
    )
    return join, dataset, sampler, loader, iters_per_epoch, table.built_from["keys_sha256"]


def store_identity(path, join: SharedTable) -> str:
    """A map store as a run defined by it knows it, wherever the store has moved: its method,
    size and a digest of its content (of the checksums its attributes record, else of the maps
    as joined)."""
    attrs = open_store(path).attrs
    sums = attrs.get("checksums")
    if sums:
        content = hashlib.sha256(json.dumps(sums, sort_keys=True).encode()).hexdigest()
    else:
        content = hashlib.sha256(np.ascontiguousarray(join.maps.array).tobytes()).hexdigest()
    rows = attrs.get("num_rows", len(join.maps.array))
    return f"{attrs.get('method', join.method)} store of {rows} maps, content sha256 {content[:16]}"


def gather_on_main(keys: list[str], info: DistInfo) -> list[str]:
    """Every rank's ``keys`` (undecodable images), on rank 0; the other ranks get []."""
    if info.distributed:
        gathered = [None] * info.world_size
        torch.distributed.all_gather_object(gathered, keys)
        keys = [k for part in gathered for k in part]
    return keys if info.is_main else []


def record_bad_images(out_dir, keys: list[str], log) -> None:
    """Append an epoch's undecodable images (all ranks') to ``out_dir/bad_images.txt``."""
    with open(Path(out_dir) / "bad_images.txt", "a", encoding="utf-8") as f:
        f.writelines(k + "\n" for k in keys)
    log(f"skipped {len(keys)} undecodable images (listed in bad_images.txt)")
