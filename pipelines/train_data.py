"""What ``attg-train`` trains on: the images joined with their maps (one table per node, mapped
by its ranks and workers: ``attgmae.data.shared_table``), sampled per rank, or tar shards
streamed (``train_shards``); and the batch arithmetic (accumulation to the paper's effective
batch, the lr it implies)."""

from __future__ import annotations

from dataclasses import dataclass

from torch.utils.data import DataLoader

from attgmae.core.distributed import DistInfo
from attgmae.core.errors import InputError
from attgmae.core.listing import split_root
from attgmae.data.pretrain_dataset import EpochSampler, PretrainDataset, list_train_keys
from attgmae.data.shards import is_shard_source
from attgmae.data.shared_table import SharedTable, open_node_table
from attgmae.data.transforms import JointTransform
from attgmae.pipelines.train_config import TrainConfig, resolve_accum


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
    else:
        join, dataset, sampler, loader, iters_per_epoch = _folder_source(
            cfg, info, device, num_patches, log
        )
    accum_iter = resolve_accum(cfg.accum_iter, cfg.batch_size, info.world_size, iters_per_epoch)
    eff_batch_size = cfg.batch_size * accum_iter * info.world_size
    base_lr = cfg.lr if cfg.lr is not None else cfg.blr * eff_batch_size / 256
    return TrainData(
        join, dataset, sampler, loader, iters_per_epoch, accum_iter, eff_batch_size, base_lr
    )


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
    )
    return join, dataset, sampler, loader, iters_per_epoch
