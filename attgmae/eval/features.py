"""Frozen-encoder features of an image folder split: batched extraction and an on-disk cache.

A split is ``<data_root>/<split>/<class>/<image>`` (ImageFolder layout); labels are the class
folders, with the class list taken from ``train`` so ``val`` uses the same indices. Features are
extracted once on Resize(256, bicubic) + CenterCrop(224) (``EvalPixels``: uint8 pixels out of
the loader workers, normalized on the device), bf16 autocast on CUDA (fp32 on CPU), and cached
raw (not normalized: the linear probe's BatchNorm wants them raw; k-NN normalizes).

The cache never serves stale features. A file in ``features_dir`` is named by a digest of
everything that defines its features (``feature_description``: the checkpoint's sha256 and the
entry its weights were read from, the resolved encoder architecture, how positions were
resized, pooling, precision, device type, transform, image root and list, a code version),
holds that description and is used only when it matches exactly; it also records every image's
identity (size, mtime: ``attgmae.core.identity``), and a changed image is named in the log and
the split recomputed. Under torchrun every rank extracts its share of a split and rank 0
gathers the features (DINO's eval_knn), then alone reads and writes the cache.
"""

from __future__ import annotations

import hashlib
import json
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from attgmae.core.device import resolve_precision
from attgmae.core.distributed import DistInfo, all_gather_rows, main_value
from attgmae.core.errors import InputError
from attgmae.core.identity import changed_images, image_identities
from attgmae.core.listing import folder_labels, list_split, split_root
from attgmae.core.progress import Progress
from attgmae.core.signals import ignore_stop_signals
from attgmae.core.torchfile import CheckpointError, load_torch_file, save_torch_file
from attgmae.data import pil_exact
from attgmae.data.images import ImageDecodeError, decode_rgb
from attgmae.data.packed import PackedBatch
from attgmae.data.transforms import normalize_images
from attgmae.eval.transforms import DeviceEvalPixels, EvalPixels
from attgmae.models.tokens import features as encoder_features

CACHE_VERSION = 4  # 2: the whole description and images' identities; 3: uint8 pixels; 4: exact
FLUSH_BYTES = 256 << 20  # features held on the device before one copy to the host


@dataclass
class ImageSplit:
    """The images of one split: keys relative to ``root``, labels into ``class_names``."""

    root: Path
    keys: list[str]
    labels: np.ndarray  # int64 [N]
    class_names: list[str]


def check_data_root(data_root, checkpoint=None) -> None:
    """Fail early, naming what is missing: the checkpoint file, ``train/`` or ``val/``."""
    if checkpoint is not None and not Path(checkpoint).is_file():
        raise InputError(f"checkpoint {checkpoint} not found")
    for split in ("train", "val"):
        split_root(data_root, split)


def image_split(data_root, split: str, class_names: list[str] | None = None) -> ImageSplit:
    """List ``data_root/split``; ``class_names`` (from train) fixes the label of each folder."""
    root, keys = list_split(data_root, split)
    names, labels = folder_labels(keys)
    loose = [k for k, y in zip(keys, labels) if y < 0]
    if loose:
        raise InputError(
            f"{root}: {len(loose)} images are not inside a class folder, e.g. "
            f"{loose[0]}; put each image in {root}/<class>/"
        )
    if class_names is not None:
        index = {name: i for i, name in enumerate(class_names)}
        unknown = sorted(set(names) - set(index))
        if unknown:
            raise InputError(f"{root}: class folders not in train/: {unknown[:5]}")
        labels = np.array([index[names[y]] for y in labels], dtype=np.int64)
        names = list(class_names)
    return ImageSplit(root, keys, labels, names)


def check_class_count(split: ImageSplit, nb_classes: int | None) -> None:
    """MAE's ``--nb_classes``, when given, must be the number of class folders, which decide it
    here (MAE would size its head by the flag and train on the folders' labels)."""
    if nb_classes is not None and nb_classes != len(split.class_names):
        raise InputError(
            f"--nb_classes {nb_classes}, but {split.root} has {len(split.class_names)} class "
            "folders, which set the classes here: drop --nb_classes or fix the folder"
        )


def load_rgb_array(path) -> np.ndarray:
    """An evaluation image, uint8 RGB [H, W, 3], read by the project's one decoder
    (``decode_rgb``: as torchvision's ImageFolder loader reads it, which DINO's eval_knn.py and
    MAE's main_linprobe.py use; no EXIF rotation). Raises InputError naming the file when it
    cannot be decoded (a one-argument error survives the trip out of a DataLoader worker).
    """
    try:
        return decode_rgb(path)
    except ImageDecodeError as err:
        raise InputError(f"cannot read image {err}; remove or replace it and rerun") from None


def load_rgb(path) -> Image.Image:
    """``load_rgb_array`` as a PIL image, for the torchvision PIL transforms."""
    return Image.fromarray(load_rgb_array(path))


class LabelledImages(Dataset):
    """(image tensor, label, index) for the ``indices`` of an ImageSplit. A transform with
    ``takes_array`` (``EvalPixels``) gets the decoded array, any other a PIL image."""

    def __init__(self, split: ImageSplit, transform, indices=None):
        self.split = split
        self.transform = transform
        self.indices = np.arange(len(split.keys)) if indices is None else np.asarray(indices)

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, i):
        row = int(self.indices[i])
        image = load_rgb_array(self.split.root / self.split.keys[row])
        if not getattr(self.transform, "takes_array", False):
            image = Image.fromarray(image)
        return self.transform(image), int(self.split.labels[row]), row


def make_loader(
    dataset, batch_size, num_workers, device, shuffle=False, drop_last=False, generator=None
):
    """A DataLoader of ``dataset``, collated by its transform's ``collate`` where it has one
    (``DeviceEvalPixels``: full-size images packed in one buffer)."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        drop_last=drop_last,
        num_workers=num_workers,
        pin_memory=torch.device(device).type == "cuda",
        persistent_workers=False,
        generator=generator,
        collate_fn=getattr(getattr(dataset, "transform", None), "collate", None),
        # SIGTERM / SIGUSR1 are the main process's to answer (runs that resume save first)
        worker_init_fn=ignore_stop_signals,
    )


def autocast_for(device, precision: str = "auto"):
    """The autocast context of ``resolve_precision(precision, device)``."""
    device = torch.device(device)
    if resolve_precision(precision, device) == "fp32":
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


@torch.no_grad()
def extract_features(model, loader, device, pool="cls", precision="auto", progress=None):
    """Features of every image the loader yields -> (float32 [N, D] on CPU, labels [N], img/s).

    Batches of uint8 pixels (``EvalPixels``) are normalized on the device, packed full-size
    images (``DeviceEvalPixels``) resized and cropped there first; float batches are taken as
    normalized. Rows are placed by the dataset row index each batch carries, so the
    order is the split's. On CUDA nothing waits for the device per batch: features stay there
    and come to the host about every ``FLUSH_BYTES`` (one wait per many batches), so the next
    batches' uploads and forwards queue up while the workers decode.
    """
    device = torch.device(device)
    dataset = loader.dataset
    num_rows = len(dataset.split.keys)
    on_host, on_device, device_bytes = [], [], 0
    row_batches, label_batches = [], []
    start, seen = time.perf_counter(), 0
    for imgs, targets, rows in loader:
        if isinstance(imgs, PackedBatch):
            imgs = dataset.transform.on_device(imgs, device)
        imgs = imgs.to(device, non_blocking=True)
        if imgs.dtype == torch.uint8:
            imgs = normalize_images(imgs)
        with autocast_for(device, precision):
            out = encoder_features(model, imgs, pool).float()  # [B, D], left on the device
        on_device.append(out)
        device_bytes += out.numel() * 4
        if device_bytes >= FLUSH_BYTES:
            on_host.append(torch.cat(on_device).cpu())
            on_device, device_bytes = [], 0
        row_batches.append(rows)
        label_batches.append(targets)
        seen += imgs.shape[0]
        if progress is not None:
            progress(seen)
    if on_device:
        on_host.append(torch.cat(on_device).cpu())
    if not on_host:
        raise RuntimeError("feature extraction did not cover every image")
    out = torch.cat(on_host)
    img_per_s = seen / max(time.perf_counter() - start, 1e-9)
    feats = torch.zeros(num_rows, out.shape[1], dtype=torch.float32)
    labels = torch.full((num_rows,), -1, dtype=torch.int64)
    filled = torch.zeros(num_rows, dtype=torch.bool)
    all_rows = torch.cat(row_batches)
    feats[all_rows], labels[all_rows], filled[all_rows] = out, torch.cat(label_batches), True
    rows = torch.as_tensor(dataset.indices, dtype=torch.long)
    if not bool(filled[rows].all()):
        raise RuntimeError("feature extraction did not cover every image")
    return feats[rows], labels[rows], img_per_s


def l2_normalize(feats: torch.Tensor) -> torch.Tensor:
    """Rows scaled to unit length ([N, D] -> [N, D]), so dot products are cosine similarities."""
    return F.normalize(feats, dim=1, p=2)


# How the checkpoint's positions meet the input grid (``attgmae.models.encoder``): part of what
# defines the features; bump CACHE_VERSION when that code, the decoder or the pooling changes.
POSITION_HANDLING = (
    "absolute positions resampled bicubic without antialiasing to the input grid (MAE's "
    "interpolate_pos_embed); BEiT's relative tables by BEiT's spline"
)
# Rows per collective when the ranks' shares of a split are gathered (8192 x 1024 floats x 8
# ranks: 256 MB in flight on each rank).
GATHER_ROWS = 8192


def resolved_checkpoint_key(requested: str | None, source_format: str) -> str | None:
    """The checkpoint entry the weights were read from, as far as it decides them: the entry
    asked for, else a DINO/iBOT training checkpoint's default (``teacher``, or ``student`` when
    it has no teacher), else None (the format's own entry: a function of the file)."""
    if requested:
        return requested
    return {"training-teacher": "teacher", "training-student": "student"}.get(source_format)


def encoder_description(info, cfg) -> dict:
    """What about a loaded encoder (``EncoderInfo``) and an evaluation config (its
    ``checkpoint_key`` and ``force_model``) defines the features it computes."""
    return {
        "checkpoint_sha256": info.sha256,
        "checkpoint_key": resolved_checkpoint_key(cfg.checkpoint_key, info.source_format),
        "source_format": info.source_format,
        "model_name": info.model_name,
        "force_model": bool(cfg.force_model),
        "spec": asdict(info.spec) if info.spec is not None else None,
        "positions": POSITION_HANDLING,
    }


def split_transform(input_size: int, device) -> EvalPixels:
    """The feature transform: Resize(input * 256 / 224, bicubic) + CenterCrop(input), uint8 out
    of the workers (normalized on the device); on a device that runs PIL's exact resize fast
    (CUDA: ``pil_exact.fast_on``) the resize and crop move there, the workers only decode."""
    resize_size = round(input_size * 256 / 224)
    if pil_exact.fast_on(device):
        return DeviceEvalPixels(input_size, resize_size)
    return EvalPixels(input_size, resize_size)


def feature_description(
    split: ImageSplit, split_name: str, *, encoder: dict, pool: str, input_size: int,
    precision: str, device,
) -> dict:  # fmt: skip
    """Everything that defines the features of ``split`` (JSON-able): the encoder
    (``encoder_description``), pooling, precision, device type, transform, the image root and
    list, and the code version. The images' identities are recorded beside it (``save_cache``)."""
    return {
        "version": CACHE_VERSION,
        "encoder": encoder,
        # "avgln": MAE's global-pool feature (since 2026-12-02; files of the earlier "avg" differ)
        "pool": "avgln" if pool == "avg" else pool,
        "precision": resolve_precision(precision, device),
        "device_type": torch.device(device).type,  # CUDA convolutions round otherwise (TF32)
        "input_size": int(input_size),
        "transform": repr(split_transform(input_size, device)),
        "split": split_name,
        "root": str(Path(split.root).resolve()),
        "num_images": len(split.keys),
        "images_sha256": hashlib.sha256("\n".join(split.keys).encode()).hexdigest(),
    }


def cache_file(features_dir, description: dict) -> Path:
    """``<checkpoint sha256[:16]>_<split>_<digest of the whole description>.pt``."""
    digest = hashlib.sha256(json.dumps(description, sort_keys=True).encode()).hexdigest()
    sha = description["encoder"]["checkpoint_sha256"][:16]
    return Path(features_dir) / f"{sha}_{description['split']}_{digest[:16]}.pt"


def save_cache(path: Path, payload: dict) -> None:
    """Atomic write: a reader never sees a half-written cache file."""
    save_torch_file(payload, path)


def load_cache(path: Path, split: ImageSplit, description: dict, log=print):
    """Cached (features, labels) if ``path`` was written for exactly ``description`` and the
    images of ``split`` are still those it was computed from, else None (with the reason in the
    log: another description, or the images that changed since)."""
    if not path.is_file():
        return None
    name = description["split"]
    try:
        payload = load_torch_file(path, what="feature cache")
    except CheckpointError:
        log(f"{name}: {path} is not a readable feature cache: recomputing")
        return None
    if (
        not isinstance(payload, dict)
        or payload.get("description") != description
        or payload.get("keys") != split.keys
    ):
        log(f"{name}: {path} holds features of other settings or images: recomputing")
        return None
    changed = changed_images(split.root, split.keys, payload["identities"].numpy())
    if changed:
        shown = ", ".join(changed[:5]) + (", ..." if len(changed) > 5 else "")
        log(
            f"{name}: {len(changed)} image(s) changed since their features were cached in "
            f"{path} ({shown}): recomputing"
        )
        return None
    return payload["features"], payload["labels"]


def extraction_options(cfg, encoder_info, device, features_dir, log, dist=None) -> dict:
    """The keyword arguments of ``split_features`` that an evaluation config fixes (its fields
    pool, batch_size, num_workers, input_size, precision, checkpoint_key and force_model) with
    the loaded encoder's ``EncoderInfo``, the same for every split."""
    return {
        "encoder": encoder_description(encoder_info, cfg),
        "device": device,
        "pool": cfg.pool,
        "batch_size": cfg.batch_size,
        "num_workers": cfg.num_workers,
        "input_size": cfg.input_size,
        "precision": cfg.precision,
        "features_dir": features_dir,
        "log": log,
        "dist": dist,
    }


def rank_share(split: ImageSplit, info: DistInfo) -> ImageSplit:
    """The images one rank extracts: every ``world_size``-th from its rank on (no padding)."""
    rows = slice(info.rank, None, info.world_size)
    return ImageSplit(split.root, split.keys[rows], split.labels[rows], split.class_names)


def gather_shares(share_feats: torch.Tensor, num_rows: int, info: DistInfo):
    """Rank 0: the features [num_rows, D] of the whole split from every rank's ``rank_share``
    (the rows put back in the split's order); None on the other ranks. Gathered in pieces of
    ``GATHER_ROWS`` rows, as DINO's eval_knn gathers batch by batch."""
    world = info.world_size
    largest = -(-num_rows // world)  # rank 0's share, the largest
    full = None
    for start in range(0, largest, GATHER_ROWS):
        parts = all_gather_rows(share_feats[start : start + GATHER_ROWS], info)
        if not info.is_main:
            continue
        if full is None:
            full = torch.zeros(num_rows, parts[0].shape[1], dtype=torch.float32)
        for rank, part in enumerate(parts):
            positions = torch.arange(start, start + part.shape[0]) * world + rank
            full[positions] = part.cpu().float()
    return full


def split_features(
    model,
    split: ImageSplit,
    split_name: str,
    *,
    encoder: dict | None = None,
    device,
    pool="cls",
    batch_size=64,
    num_workers=0,
    input_size=224,
    precision="auto",
    features_dir=None,
    log=print,
    dist: DistInfo | None = None,
):
    """Features of a whole split, from the cache when present -> (feats [N, D], labels [N]).

    ``features_dir``: the cache (needs ``encoder``, an ``encoder_description``). Under torchrun
    (``dist``) every rank extracts its ``rank_share`` and rank 0 gathers them: rank 0 alone
    reads and writes the cache and gets the features; the other ranks get (None, labels).
    """
    info = dist or DistInfo()
    labels = torch.from_numpy(split.labels)
    path = description = None
    if features_dir is not None:
        if encoder is None:
            raise ValueError("a feature cache needs the encoder's description (encoder=)")
        description = feature_description(split, split_name, encoder=encoder, pool=pool,
                                          input_size=input_size, precision=precision,
                                          device=device)  # fmt: skip
        path = cache_file(features_dir, description)
        cached = load_cache(path, split, description, log) if info.is_main else None
        if main_value(cached is not None, info):
            log(f"{split_name}: {len(split.keys)} cached features from {path}")
            return cached if info.is_main else (None, labels)
    # Recorded before the images are read: one replaced meanwhile is caught by the next run.
    identities = image_identities(split.root, split.keys) if path and info.is_main else None
    share = rank_share(split, info) if info.distributed else split
    started = time.perf_counter()
    of = f" (rank 0's share of {len(split.keys)})" if info.distributed else ""
    with Progress(len(share.keys), f"{split_name} features{of}", enabled=info.is_main) as bar:
        if share.keys:
            dataset = LabelledImages(share, split_transform(input_size, device))
            loader = make_loader(dataset, batch_size, num_workers, device)
            feats, _, _ = extract_features(
                model, loader, device, pool, precision, progress=bar.moved_to
            )
        else:  # more ranks than images
            feats = torch.zeros(0, 0)
    if info.distributed:
        feats = gather_shares(feats, len(split.keys), info)
    img_per_s = len(split.keys) / max(time.perf_counter() - started, 1e-9)
    if not info.is_main:
        return None, labels
    procs = f" on {info.world_size} processes" if info.distributed else ""
    log(
        f"{split_name}: {len(split.keys)} images -> features {tuple(feats.shape)} "
        f"at {img_per_s:.1f} img/s{procs}"
    )
    if path is not None:
        save_cache(
            path,
            {
                "version": CACHE_VERSION,
                "description": description,
                "features": feats,
                "labels": labels,
                "keys": split.keys,
                "identities": torch.from_numpy(identities),
                "class_names": split.class_names,
            },
        )
        log(f"{split_name}: features cached in {path}")
    return feats, labels
