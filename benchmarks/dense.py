"""Dense fine-tuning throughput (not a test): the train step with each head, and the
segmentation data pipeline against a torchvision reference, as ratios.

1. train-step img/s of ``attgmae.engine.SupervisedRun`` on in-memory uint8 images (normalized
   on the device, as the real runs): ViT + ConvNeXt head (segmentation, 150 classes,
   cross-entropy, MultiMAE's 6144 / 16 / 4) and ViT + DPT head (Taskonomy, masked L1, MultiMAE's
   dims); layer-decay AdamW, drop path 0.1, bf16 on CUDA; eager and, with ``--compile``,
   compiled: the second of two epochs (compiled, allocator warm);
2. segmentation data-pipeline img/s from JPEG images and PNG label maps with MultiMAE's
   ``simple`` augmentation: ours (decode_rgb + read_label_map + ``SegmentationTransform``,
   per-sample seeding, EpochSampler) vs the reference (torchvision.io decoding +
   transforms.v2 flip / ScaleJitter / ColorJitter / padded RandomCrop on tv_tensors, shuffled
   DataLoader), alternating, best round each.

Small by default on CPU (tiny ViT, 64 px, few steps); ViT-L/16 at the protocols' sizes on a GPU:
  python benchmarks/dense.py                                              # CPU, tiny
  python benchmarks/dense.py --device cuda --model large --compile        # one H200 / H100
(segmentation at 512 px, Taskonomy at 384 px; issue target: >= 150 img/s segmentation training
on one H200.)
"""

from __future__ import annotations

import argparse
import contextlib
import io
import tempfile
from pathlib import Path

import numpy as np
import torch
from figures import figure
from PIL import Image
from timing import best_loader_rounds
from torch.utils.data import DataLoader, Dataset
from torchvision import tv_tensors
from torchvision.io import ImageReadMode, decode_image
from torchvision.transforms import v2

from attgmae.data.dense_datasets import SegmentationDataset, segmentation_split
from attgmae.data.dense_transforms import IGNORE_INDEX, PAD_PIXEL, SegmentationTransform
from attgmae.engine import EpochSampler, RunConfig, SeededSamples, SupervisedRun
from attgmae.eval.dense_eval import regression_loss, segmentation_loss
from attgmae.eval.dense_setup import dense_param_groups
from attgmae.models.dense_heads import ConvNeXtHead, DPTHead, dpt_block_indices
from attgmae.models.dense_model import DenseModel
from attgmae.models.encoder import EncoderSpec, build_encoder

# (width, depth, heads) of the ViTs timed; "tiny" is the tests' mae_vit_tiny_patch16 shape.
SIZES = {"tiny": (192, 4, 3), "base": (768, 12, 12), "large": (1024, 24, 16)}
NUM_CLASSES = 150  # ADE20k


class Batches(Dataset):
    """``count`` dense samples made once: uint8 images [3, S, S] with segmentation labels, or
    a Taskonomy target and valid mask."""

    def __init__(self, count: int, size: int, head: str):
        gen = torch.Generator().manual_seed(0)
        self.images = torch.randint(
            0, 256, (count, 3, size, size), dtype=torch.uint8, generator=gen
        )
        self.head = head
        if head == "convnext":
            self.labels = torch.randint(0, NUM_CLASSES, (count, size, size), generator=gen)
        else:
            self.targets = torch.rand(count, 1, size, size, generator=gen)
            self.masks = torch.rand(count, 1, size, size, generator=gen) > 0.1

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        if self.head == "convnext":
            return {"image": self.images[i], "label": self.labels[i]}
        return {"image": self.images[i], "targets": {"t": self.targets[i]}, "mask": self.masks[i]}


def step_throughput(head: str, size_name: str, img: int, device, batch, steps, compiled) -> float:
    """img/s of the fine-tuning train step (the second of two epochs of ``steps``)."""
    width, depth, heads = SIZES[size_name]
    torch.manual_seed(0)
    encoder = build_encoder(
        EncoderSpec(img, 16, width, depth, heads, 4.0, True), drop_path_rate=0.1
    )
    if head == "convnext":
        model, loss = DenseModel(encoder, ConvNeXtHead(width, NUM_CLASSES)), segmentation_loss
    else:
        model = DenseModel(encoder, DPTHead(width, 1, dpt_block_indices(depth)))
        loss = regression_loss("t")
    cfg = RunConfig(
        epochs=2,
        lr=3e-4,
        warmup_epochs=1,
        warmup_lr=1e-6,
        batch_size=batch,
        num_workers=0,
        compile=compiled,
        print_freq=10**9,
        auto_resume=False,
    )
    groups = dense_param_groups(model, 0.05, 0.75)
    run = SupervisedRun(
        cfg, model, groups, Batches(batch * steps, img, head), loss, device=device, log=print
    )
    with contextlib.redirect_stdout(io.StringIO()):
        run.train_one_epoch(0)  # compile, warm the allocator
        return run.train_one_epoch(1)["img_per_s"]


def write_segmentation_set(root: Path, count: int) -> None:
    """ADE20k-like files: 683 x 512 JPEGs (smooth content) and 8-bit PNG label maps of 150
    classes in blocks, in the ``folder`` layout."""
    rng = np.random.default_rng(0)
    base = rng.random((48, 64, 3))
    blocks = rng.integers(0, NUM_CLASSES, (16, 21)).astype(np.uint8)
    (root / "labels" / "train").mkdir(parents=True)
    (root / "train").mkdir()
    for i in range(count):
        image = Image.fromarray((np.roll(base, i, axis=1) * 255).astype(np.uint8))
        image.resize((683, 512), Image.BICUBIC).save(root / "train" / f"{i:05d}.jpg", quality=90)
        label = Image.fromarray(np.roll(blocks, i, axis=0)).resize((683, 512), Image.NEAREST)
        label.save(root / "labels" / "train" / f"{i:05d}.png")
    (root / "classes.txt").write_text("".join(f"c{i}\n" for i in range(NUM_CLASSES)))


class Reference(Dataset):
    """The same augmentation written with torchvision's transforms.v2 on tv_tensors."""

    def __init__(self, root: Path, size: int):
        self.images = sorted((root / "train").glob("*.jpg"))
        self.labels = [root / "labels" / "train" / f"{p.stem}.png" for p in self.images]
        fill = {tv_tensors.Image: PAD_PIXEL, tv_tensors.Mask: IGNORE_INDEX}
        self.transform = v2.Compose(
            [
                v2.RandomHorizontalFlip(),
                v2.ScaleJitter((size, size), (0.1, 2.0)),
                v2.RandomApply([v2.ColorJitter(0.4, 0.4, 0.2, 0.1)], p=0.5),
                v2.RandomCrop(size, pad_if_needed=True, fill=fill),
            ]
        )

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        image = tv_tensors.Image(decode_image(str(self.images[i]), mode=ImageReadMode.RGB))
        label = tv_tensors.Mask(decode_image(str(self.labels[i]), mode=ImageReadMode.GRAY))
        image, label = self.transform(image, label)
        return {"image": image, "label": label[0].long()}


def data_throughput(root: Path, size: int, batch: int, workers: int, rounds: int = 3) -> dict:
    """{"ours": img/s, "reference": img/s}, best of ``rounds`` alternating rounds."""
    split = segmentation_split("folder", root, "train")
    ours = SeededSamples(SegmentationDataset(split, SegmentationTransform(size, train=True)))
    loaders = {
        "ours": DataLoader(
            ours,
            batch_size=batch,
            sampler=EpochSampler(len(ours)),
            num_workers=workers,
            drop_last=True,
        ),  # fmt: skip
        "reference": DataLoader(
            Reference(root, size),
            batch_size=batch,
            shuffle=True,
            num_workers=workers,
            drop_last=True,
        ),  # fmt: skip
    }
    return best_loader_rounds(loaders, rounds)


def main():
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--model", choices=sorted(SIZES), default=None, help="tiny CPU, large CUDA")
    p.add_argument("--seg_size", type=int, default=None, help="default: 64 CPU, 512 CUDA")
    p.add_argument("--taskonomy_size", type=int, default=None, help="default: 64 CPU, 384")
    p.add_argument("--batch_size", type=int, default=None, help="default: 4 CPU, 16 CUDA")
    p.add_argument("--steps", type=int, default=None, help="timed steps (default 3 CPU, 20)")
    p.add_argument("--compile", action="store_true", help="also time torch.compile")
    p.add_argument("--loader_images", type=int, default=None, help="default: 64 CPU, 1024")
    p.add_argument("--workers", type=int, default=None, help="default: 2 CPU, 16 CUDA")
    p.add_argument("--data_size", type=int, default=512, help="data pipeline crop (ADE20k's)")
    p.add_argument("--skip_data", action="store_true", help="time the train steps only")
    args = p.parse_args()
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    model = args.model or ("large" if cuda else "tiny")
    batch = args.batch_size or (16 if cuda else 4)
    steps = args.steps or (20 if cuda else 3)
    sizes = {
        "convnext": args.seg_size or (512 if cuda else 64),
        "dpt": args.taskonomy_size or (384 if cuda else 64),
    }
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
    print(f"device {device}, ViT-{model}/16, batch {batch}, {steps} timed steps")
    for head, size in sizes.items():
        task = "segmentation (ConvNeXt head)" if head == "convnext" else "Taskonomy (DPT head)"
        # the target: segmentation >= 150 img/s at 512 x 512 for ViT-L/16 on one H200
        target = 150.0 if cuda and model == "large" and head == "convnext" else None
        eager = step_throughput(head, model, size, device, batch, steps, compiled=False)
        figure(f"dense {head} step ViT-{model}/16 {size}px eager", eager, "img/s", target,
               note=task)  # fmt: skip
        if args.compile:
            compiled = step_throughput(head, model, size, device, batch, steps, compiled=True)
            figure(f"dense {head} step ViT-{model}/16 {size}px compiled", compiled, "img/s",
                   target, note=f"{task}, {compiled / eager:.2f}x eager")  # fmt: skip
    if args.skip_data:
        return
    count = args.loader_images or (1024 if cuda else 64)
    workers = args.workers if args.workers is not None else (16 if cuda else 2)
    with tempfile.TemporaryDirectory() as tmp:
        write_segmentation_set(Path(tmp), count)
        speed = data_throughput(Path(tmp), args.data_size, batch, workers)
    print(
        f"segmentation data pipeline ({count} JPEG 683x512 + PNG labels, crop "
        f"{args.data_size}, {workers} workers):"
    )
    figure("dense data ours (SegmentationTransform, seeded samples)", speed["ours"], "img/s")
    figure("dense data reference (torchvision transforms.v2)", speed["reference"], "img/s")
    figure("dense data ours / reference", speed["ours"] / speed["reference"], "x")


if __name__ == "__main__":
    main()
