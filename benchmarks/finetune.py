"""Fine-tuning throughput (not a test): the train step and the data pipeline, as ratios.

1. train-step img/s of ``attgmae.engine.SupervisedRun`` (layer-decay AdamW, mixup/cutmix,
   soft-target loss, drop path, bf16 on CUDA) on in-memory tensors, eager vs ``--compile``:
   the second of two epochs (compiled, allocator warm);
2. data-pipeline img/s from JPEG files with MAE's full fine-tuning augmentation (timm
   create_transform: RandomResizedCrop, flip, RandAugment rand-m9-mstd0.5-inc1, RandomErasing):
   ours (decode_rgb, per-sample seeding, EpochSampler) vs the reference (torchvision
   ImageFolder + the same transform, shuffled DataLoader), alternating, best round each.

Small by default on CPU (tiny ViT at 224 px, few steps); ViT-L/16 on a GPU:
  python benchmarks/finetune.py                                           # CPU, tiny
  python benchmarks/finetune.py --device cuda --model large --batch_size 64 --steps 40 \\
      --compile --loader_images 4096 --workers 16                         # one H200 / H100
"""

from __future__ import annotations

import argparse
import contextlib
import io
import tempfile
from pathlib import Path

import numpy as np
import torch
import torchvision.datasets as datasets
from figures import figure
from PIL import Image
from timing import best_loader_rounds
from torch.utils.data import DataLoader, Dataset

from attgmae.engine import EpochSampler, RunConfig, SeededSamples, SupervisedRun
from attgmae.eval import param_groups_lrd
from attgmae.eval.features import LabelledImages, image_split
from attgmae.eval.finetune import (
    classification_criterion,
    classification_loss,
    make_mixup,
    mixup_hook,
)
from attgmae.eval.transforms import finetune_train_transform
from attgmae.models.encoder import EncoderSpec, build_encoder

# (width, depth, heads) of the ViTs timed; "tiny" is the tests' mae_vit_tiny_patch16 shape.
SIZES = {"tiny": (192, 4, 3), "base": (768, 12, 12), "large": (1024, 24, 16)}
NUM_CLASSES = 1000


class Tensors(Dataset):
    """``size`` random images [3, 224, 224] and labels, made once (no decoding)."""

    def __init__(self, size: int):
        gen = torch.Generator().manual_seed(0)
        self.images = torch.randn(size, 3, 224, 224, generator=gen)
        self.labels = torch.randint(0, NUM_CLASSES, (size,), generator=gen)

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, index):
        return self.images[index], self.labels[index]


def step_throughput(size: str, device, batch: int, steps: int, compiled: bool) -> float:
    """img/s of the fine-tuning train step (the second of two epochs of ``steps``)."""
    width, depth, heads = SIZES[size]
    torch.manual_seed(0)
    spec = EncoderSpec(224, 16, width, depth, heads, 4.0, True)
    model = build_encoder(spec, num_classes=NUM_CLASSES, global_pool="avg", drop_path_rate=0.1)
    groups = param_groups_lrd(model, 0.05, model.no_weight_decay(), 0.75)
    mixup = make_mixup(NUM_CLASSES, mixup=0.8, cutmix=1.0)
    cfg = RunConfig(
        epochs=2,
        lr=1e-3,
        warmup_epochs=1,
        batch_size=batch,
        num_workers=0,
        compile=compiled,
        print_freq=10**9,
        auto_resume=False,
    )
    run = SupervisedRun(
        cfg,
        model,
        groups,
        Tensors(batch * steps),
        classification_loss(classification_criterion(True, 0.1)),
        batch_hook=mixup_hook(mixup),
        device=device,
        log=lambda m: None,
    )
    with contextlib.redirect_stdout(io.StringIO()):
        run.train_one_epoch(0)  # compile, warm the allocator
        return run.train_one_epoch(1)["img_per_s"]


def write_jpegs(root: Path, count: int, classes: int = 4) -> None:
    """ImageNet-like JPEGs (500 x 375, smooth content) under root/train/<class>/."""
    rng = np.random.default_rng(0)
    base = rng.random((47, 63, 3))
    for i in range(count):
        folder = root / "train" / f"c{i % classes}"
        folder.mkdir(parents=True, exist_ok=True)
        small = np.roll(base, i, axis=1) * 255
        img = Image.fromarray(small.astype(np.uint8)).resize((500, 375), Image.BICUBIC)
        img.save(folder / f"{i:05d}.JPEG", quality=90)


def data_throughput(root: Path, batch: int, workers: int, rounds: int = 3) -> dict:
    """{"ours": img/s, "reference": img/s}, best of ``rounds`` alternating rounds."""
    augment = finetune_train_transform(224)
    train = image_split(root, "train")
    ours = SeededSamples(LabelledImages(train, augment), seed=0)
    reference = datasets.ImageFolder(str(root / "train"), transform=augment)
    loaders = {
        "ours": DataLoader(
            ours,
            batch_size=batch,
            sampler=EpochSampler(len(ours)),
            num_workers=workers,
            drop_last=True,
        ),
        "reference": DataLoader(
            reference, batch_size=batch, shuffle=True, num_workers=workers, drop_last=True
        ),
    }
    return best_loader_rounds(loaders, rounds)


def main():
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--model", choices=sorted(SIZES), default=None, help="tiny CPU, large CUDA")
    p.add_argument("--batch_size", type=int, default=None, help="default: 8 CPU, 64 CUDA")
    p.add_argument("--steps", type=int, default=None, help="timed steps (default 4 CPU, 40)")
    p.add_argument("--compile", action="store_true", help="also time torch.compile")
    p.add_argument("--loader_images", type=int, default=None, help="default: 256 CPU, 4096")
    p.add_argument("--workers", type=int, default=None, help="default: 2 CPU, 16 CUDA")
    args = p.parse_args()
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    model = args.model or ("large" if cuda else "tiny")
    batch = args.batch_size or (64 if cuda else 8)
    steps = args.steps or (40 if cuda else 4)
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
    print(f"device {device}, ViT-{model}/16 at 224 px, batch {batch}, {steps} steps")

    # the target: ViT-L/16 fine-tuning >= 1,000 img/s on one H200 (bf16, fused attention)
    target = 1000.0 if cuda and model == "large" else None
    eager = step_throughput(model, device, batch, steps, compiled=False)
    figure(f"finetune step ViT-{model}/16 eager", eager, "img/s", target)
    if args.compile:
        compiled = step_throughput(model, device, batch, steps, compiled=True)
        figure(f"finetune step ViT-{model}/16 compiled", compiled, "img/s", target,
               note=f"{compiled / eager:.2f}x eager")  # fmt: skip

    count = args.loader_images or (4096 if cuda else 256)
    workers = args.workers if args.workers is not None else (16 if cuda else 2)
    with tempfile.TemporaryDirectory() as tmp:
        write_jpegs(Path(tmp), count)
        speed = data_throughput(Path(tmp), 64 if cuda else 16, workers)
    print(f"data pipeline (MAE augmentation, {count} JPEGs 500x375, {workers} workers):")
    figure("finetune data ours (decode_rgb, seeded samples)", speed["ours"], "img/s")
    figure("finetune data reference (ImageFolder)", speed["reference"], "img/s")
    figure("finetune data ours / reference", speed["ours"] / speed["reference"], "x")


if __name__ == "__main__":
    main()
