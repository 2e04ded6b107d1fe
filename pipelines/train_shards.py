"""``attg-train --data_path 'shards/train-{000000..000099}.tar'``: training on tar shards.

The maps come from the samples (no store is read); ``--maps`` names the method among those the
shards hold. The policies for images without a map or changed since their maps were applied
when packing (``attg-maps pack``): a run on the shards must ask for the same, as it would have
to from the folder.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from torch.utils.data import DataLoader

from attgmae.core.distributed import DistInfo
from attgmae.core.errors import InputError
from attgmae.data.shard_stream import ShardTrainStream, plan_streams
from attgmae.data.shards import ShardSet, open_shards
from attgmae.data.transforms import JointTransform
from attgmae.pipelines.train_config import TrainConfig
from attgmae.pipelines.train_data import join_note


@dataclass
class ShardMaps:
    """The guidance of a run on shards (``TrainData.join``): whose maps."""

    method: str


def shard_method(cfg: TrainConfig, shards: ShardSet) -> str:
    """The method ``--maps`` names: one of the shards' (a store path's name names its method)."""
    name = Path(str(cfg.maps)).name
    for suffix in (".zarr.zip", ".zarr", ".h5", ".hdf5"):
        if name.endswith(suffix) and name[: -len(suffix)] in shards.methods:
            return name[: -len(suffix)]
    shards.store(name)  # ShardError naming the methods there are
    return name


def check_policies(cfg: TrainConfig, shards: ShardSet, store: dict) -> None:
    """A run on shards must ask for the pack's treatment of missing and changed maps."""
    method, packed = store["method"], shards.index
    if store["missing"] and cfg.missing_maps != "uniform":
        raise InputError(
            f"{store['missing']} of {store['num_keys']} images in the shards have no "
            f"{method} map (first: {store['first_missing'][0]}; packed with --missing_maps "
            "uniform, as zero maps): pass --missing_maps uniform to train them with uniform "
            "weights"
        )
    if store["changed"] and cfg.changed_images != packed["changed_images"]:
        held = "zero maps" if packed["changed_images"] == "uniform" else "their old maps"
        raise InputError(
            f"{store['changed']} images in the shards changed since their {method} maps were "
            f"computed (first: {store['first_changed'][0]}); the shards hold {held} for them "
            f"(packed with --changed_images {packed['changed_images']}): pass --changed_images "
            f"{packed['changed_images']}, or pack again after `attg-maps generate`"
        )


def shard_source(cfg: TrainConfig, info: DistInfo, device, num_patches: int, log):
    """(join, dataset, sampler, loader, iterations per epoch) of a run on tar shards."""
    shards = open_shards(cfg.data_path)
    join = method = None
    if cfg.guidance == "store":
        method = shard_method(cfg, shards)
        store = shards.store(method)
        check_policies(cfg, shards, store)
        join = ShardMaps(method)
        log(join_note(store, cfg, f"the shards ({store['path']})"))
    workers = max(1, cfg.num_workers)
    plan = plan_streams(shards.counts, info.world_size, workers, cfg.batch_size)
    stream = ShardTrainStream(
        shards, plan, info.rank, JointTransform(cfg.input_size, cfg.aug), num_patches,
        cfg.guidance, method, cfg.seed, cfg.shuffle_buffer, cfg.skip_bad_images,
    )  # fmt: skip
    used = plan.quota * workers * info.world_size
    log(
        f"{shards.num_samples} images in {len(shards.paths)} shards: {info.world_size} rank(s) "
        f"x {workers} stream(s) of {plan.shards_per_stream} shard(s), {used} samples an epoch "
        f"(shuffle buffer {cfg.shuffle_buffer})"
    )
    # Not persistent: each epoch's workers get the stream as set_epoch left it.
    loader = DataLoader(
        stream,
        batch_size=cfg.batch_size,
        num_workers=cfg.num_workers,
        pin_memory=cfg.pin_mem and device.type == "cuda",
        drop_last=True,
    )
    return join, stream, stream, loader, plan.iters_per_epoch
