"""Frozen-encoder features of an image folder split: batched extraction and an on-disk cache.

A split is ``<data_root>/<split>/<class>/<image>`` (ImageFolder layout); labels are the class
folders, with the class list taken from ``train`` so ``val`` uses the same indices. Features are
extracted once on Resize(256, bicubic) + CenterCrop(224) (``EvalPixels``: uint8 pixels out of
the loader workers, normalized on the device), bf16 autocast on CUDA (fp32 on CPU), and cached
raw (not normalized: the linear probe's BatchNorm wants them raw; k-NN normalizes) in
``features_dir`` under a name made of the checkpoint's sha256, the split, the pooling, the input
size, the head count, the precision and a digest of the image list, so a changed checkpoint or
image set never hits a stale file.
"""

from __future__ import annotations

import hashlib
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from attgmae.core.device import resolve_precision
from attgmae.core.errors import InputError
from attgmae.core.files import atomic_path
from attgmae.core.listing import folder_labels, list_split, split_root
from attgmae.core.torchfile import CheckpointError, load_torch_file
from attgmae.data.images import ImageDecodeError, decode_rgb
from attgmae.data.transforms import normalize_images
from attgmae.eval.transforms import EvalPixels
from attgmae.models.tokens import features as encoder_features

CACHE_VERSION = 1
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
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        drop_last=drop_last,
        num_workers=num_workers,
        pin_memory=torch.device(device).type == "cuda",
        persistent_workers=False,
        generator=generator,
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

    Batches of uint8 pixels (``EvalPixels``) are normalized on the device; float batches are
    taken as normalized. Rows are placed by the dataset row index each batch carries, so the
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


def cache_file(
    features_dir,
    checkpoint_sha256: str,
    split: ImageSplit,
    split_name: str,
    pool: str,
    input_size: int,
    variant: str = "",
) -> Path:
    """``variant`` names what else changes the features (heads, precision)."""
    digest = hashlib.sha256("\n".join(split.keys).encode()).hexdigest()[:12]
    # "avgln": MAE's global-pool feature (since 2026-12-02); files of the earlier "avg" never match
    tag = "avgln" if pool == "avg" else pool
    name = (
        f"{checkpoint_sha256[:16]}_{split_name}_{tag}_{input_size}px_"
        f"{variant + '_' if variant else ''}{digest}.pt"
    )
    return Path(features_dir) / name


def save_cache(path: Path, payload: dict) -> None:
    """Atomic write: a reader never sees a half-written cache file."""
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load_cache(path: Path, split: ImageSplit, checkpoint_sha256: str):
    """Cached (features, labels) if ``path`` holds exactly this split's images, else None."""
    if not path.is_file():
        return None
    try:
        payload = load_torch_file(path, what="feature cache")
    except CheckpointError:
        return None  # unreadable (e.g. an interrupted copy): recompute and overwrite
    if (
        payload.get("version") != CACHE_VERSION
        or payload.get("keys") != split.keys
        or payload.get("checkpoint_sha256") != checkpoint_sha256
    ):
        return None
    return payload["features"], payload["labels"]


def extraction_options(cfg, checkpoint_sha256: str, device, features_dir, log) -> dict:
    """The keyword arguments of ``split_features`` that an evaluation config fixes (its fields
    pool, batch_size, num_workers, input_size and precision), the same for every split."""
    return {
        "checkpoint_sha256": checkpoint_sha256,
        "device": device,
        "pool": cfg.pool,
        "batch_size": cfg.batch_size,
        "num_workers": cfg.num_workers,
        "input_size": cfg.input_size,
        "precision": cfg.precision,
        "features_dir": features_dir,
        "log": log,
    }


def split_features(
    model,
    split: ImageSplit,
    split_name: str,
    *,
    checkpoint_sha256: str,
    device,
    pool="cls",
    batch_size=64,
    num_workers=0,
    input_size=224,
    precision="auto",
    features_dir=None,
    log=print,
):
    """Features of a whole split, from the cache when present -> (feats [N, D], labels [N])."""
    path = None
    if features_dir is not None:
        # The head count (not visible in the weights) and the precision change the features.
        heads = getattr(model.blocks[0].attn, "num_heads", "x")
        variant = f"h{heads}_{resolve_precision(precision, device)}"
        path = cache_file(
            features_dir, checkpoint_sha256, split, split_name, pool, input_size, variant
        )
        cached = load_cache(path, split, checkpoint_sha256)
        if cached is not None:
            log(f"{split_name}: {len(split.keys)} cached features from {path}")
            return cached
    dataset = LabelledImages(split, EvalPixels(input_size, round(input_size * 256 / 224)))
    loader = make_loader(dataset, batch_size, num_workers, device)
    feats, labels, img_per_s = extract_features(model, loader, device, pool, precision)
    log(
        f"{split_name}: {len(split.keys)} images -> features {tuple(feats.shape)} "
        f"at {img_per_s:.1f} img/s"
    )
    if path is not None:
        save_cache(
            path,
            {
                "version": CACHE_VERSION,
                "features": feats,
                "labels": labels,
                "keys": split.keys,
                "class_names": split.class_names,
                "checkpoint_sha256": checkpoint_sha256,
                "split": split_name,
                "pool": pool,
                "input_size": input_size,
            },
        )
        log(f"{split_name}: features cached in {path}")
    return feats, labels
