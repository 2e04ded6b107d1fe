"""What ``attg-train`` trains on: the images joined with their maps, sampled per rank, and the
batch arithmetic (accumulation to the paper's effective batch, the lr it implies)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from attgmae.core.distributed import DistInfo
from attgmae.core.errors import InputError
from attgmae.core.signals import ignore_stop_signals
from attgmae.data.pretrain_dataset import (
    EpochSampler,
    MapJoin,
    PretrainDataset,
    join_maps,
    list_train_keys,
)
from attgmae.data.transforms import JointTransform
from attgmae.pipelines.train_config import TrainConfig, resolve_accum
from attgmae.store import open_store
from attgmae.store.layout import keys_digest


@dataclass
class TrainData:
    join: MapJoin | None  # the map store joined with the images (guided runs)
    dataset: PretrainDataset
    sampler: EpochSampler
    loader: DataLoader
    iters_per_epoch: int  # per rank
    accum_iter: int
    eff_batch_size: int  # samples per optimizer step, all ranks together
    base_lr: float  # the absolute lr: --lr, or blr * effective batch / 256
    identity: dict  # what the run trains on, as resuming compares it (images, maps)


def _join(cfg: TrainConfig, image_root, keys, log) -> MapJoin | None:
    if cfg.guidance != "store":
        return None
    join = join_maps(keys, cfg.maps, cfg.missing_maps, image_root, cfg.changed_images)
    joined = len(keys) - len(join.missing)
    note = f"{joined}/{len(keys)} images joined with {cfg.maps} ({join.method} maps)"
    if len(join.missing):
        note += f"; {len(join.missing)} without a map train with uniform weights"
    if join.changed:
        how = "uniform weights" if cfg.changed_images == "uniform" else "their old maps"
        note += (f"; {len(join.changed)} changed since their maps were computed train with "
                 f"{how} (--changed_images {cfg.changed_images}; first: "
                 f"{join.changed[0]})")  # fmt: skip
    if join.extra:
        note += f"; {join.extra} maps match no training image (ignored)"
    log(note)
    return join


def build_train_data(cfg: TrainConfig, info: DistInfo, device, num_patches: int, log) -> TrainData:
    # --skip_bad_images also leaves out folders and images that cannot be read (warned about).
    image_root, keys = list_train_keys(cfg.data_path, [] if cfg.skip_bad_images else None)
    join = _join(cfg, image_root, keys, log)
    dataset = PretrainDataset(
        image_root,
        keys,
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
    accum_iter = resolve_accum(cfg.accum_iter, cfg.batch_size, info.world_size, iters_per_epoch)
    eff_batch_size = cfg.batch_size * accum_iter * info.world_size
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
    base_lr = cfg.lr if cfg.lr is not None else cfg.blr * eff_batch_size / 256
    identity = {
        "images": f"{len(keys)} images, keys sha256 {keys_digest(keys)[:16]}",
        "maps": store_identity(cfg.maps, join) if join is not None else None,
    }
    return TrainData(
        join, dataset, sampler, loader, iters_per_epoch, accum_iter, eff_batch_size, base_lr,
        identity,
    )  # fmt: skip


def store_identity(path, join: MapJoin) -> str:
    """A map store as a run defined by it knows it, wherever the store has moved: its method,
    size and a digest of its content (of the checksums its attributes record, else of the maps
    as loaded)."""
    attrs = open_store(path).attrs
    sums = attrs.get("checksums")
    if sums:
        content = hashlib.sha256(json.dumps(sums, sort_keys=True).encode()).hexdigest()
    else:
        content = hashlib.sha256(join.maps.tobytes()).hexdigest()
    rows = attrs.get("num_rows", len(join.maps))
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
