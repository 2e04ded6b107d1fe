"""Stage 2 throughput (not a test), most important figure first (``benchmarks/figures.py``):

1. end to end: attg-train's own loop (``PretrainRun``) from JPEG files, guided, compiled on CUDA
   (``--compile``; the second epoch's log windows after its first, so compilation, worker
   start-up and the wait for the first batch are not counted);
2. the guidance's cost per training step: vanilla MAE vs guided (map crop + weights + weighted
   loss) on synthetic tensors, eager (compiled, the small extra kernels fuse: eager is the upper
   bound), alternating rounds;
3. loader img/s from JPEG files: ours (decode_rgb + joint RandomResizedCrop, uint8 out, maps)
   vs the MAE recipe (torchvision ImageFolder + PIL RandomResizedCrop + ToTensor + Normalize);
4. the batched map crop (one grid_sample per batch) vs a per-image Python loop.
``--part figures`` runs 2-4 (eager, seconds), ``--part end_to_end`` only 1 (a cold compile of a
ViT-L takes a minute or more: the GPU check gives it its own step, so it cannot take the other
figures with it). Photo-like JPEGs (``photos.py``); the machine first.

Small by default on CPU (tiny model, few steps); full on GPU:
  python benchmarks/train.py                                  # CPU, tiny
  python benchmarks/train.py --device cuda --model mae_vit_large_patch16 --batch_size 256 \
      --steps 20 --loader_images 4096 --workers 15            # one H200 (gpu_check.sh)
"""

from __future__ import annotations

import argparse
import contextlib
import io
import re
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from figures import figure
from machine import print_machine
from photos import describe, photo_set
from timing import loader_throughput
from torch.utils.data import DataLoader

from attgmae.core.distributed import DistInfo
from attgmae.data.pretrain_dataset import EpochSampler, MapJoin, PretrainDataset
from attgmae.data.transforms import JointTransform, crop_resize_maps, normalize_images
from attgmae.guidance import loss_weights
from attgmae.models import create_mae
from attgmae.optim import make_adamw
from attgmae.pipelines.train import PretrainRun
from attgmae.pipelines.train_config import TrainConfig


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def step_throughput(model_name, device, batch, steps, warmup, compiled, amp, rounds=4) -> dict:
    """img/s of full training steps (forward, backward, AdamW) on synthetic inputs,
    {'vanilla': .., 'guided': ..}: the two alternate ``rounds`` times on the same model, in
    turns of order, and the best round of each is kept, so noise does not land on one side."""
    torch.manual_seed(0)
    model = create_mae(model_name, norm_pix_loss=True).to(device)
    run_model = torch.compile(model) if compiled else model
    opt = make_adamw(model, 1e-4, 0.05, fused=device.type == "cuda")
    gen = torch.Generator(device="cpu").manual_seed(0)
    images = torch.randint(0, 256, (batch, 3, 224, 224), dtype=torch.uint8, generator=gen)
    images = images.to(device)
    maps = torch.rand(batch, 14, 14, generator=gen).to(device)
    boxes = torch.tensor([[0.1, 0.2, 0.8, 0.9]]).repeat(batch, 1)
    flips = torch.rand(batch, generator=gen) < 0.5
    noise = torch.rand(batch, model.patch_embed.num_patches, generator=gen).to(device)
    dtype = torch.bfloat16 if amp == "bf16" else None

    def one_step(guided):
        imgs = normalize_images(images)
        weights = None
        if guided:
            cropped = crop_resize_maps(maps, boxes, flips, model.grid_size)
            weights = loss_weights(cropped, 0.75)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss, _, _ = run_model(imgs, 0.75, loss_weights=weights, noise=noise)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for guided in (False, True):  # compile both graphs, warm allocator and caches
        for _ in range(warmup):
            one_step(guided)
    best = {"vanilla": 0.0, "guided": 0.0}
    for r in range(rounds):
        order = (("vanilla", False), ("guided", True))
        for name, guided in order if r % 2 == 0 else order[::-1]:  # no side always goes first
            sync(device)
            t0 = time.perf_counter()
            for _ in range(steps):
                one_step(guided)
            sync(device)
            best[name] = max(best[name], steps * batch / (time.perf_counter() - t0))
    return best


def map_crop_ratio(batch: int, device, repeats: int = 20) -> tuple[float, float]:
    """(batched maps/s, per-image loop maps/s) for crop_resize_maps."""
    maps = torch.rand(batch, 14, 14, device=device)
    boxes = torch.rand(batch, 4) * 0.4
    boxes[:, 2:] += 0.6
    flips = torch.rand(batch) < 0.5
    timings = []
    for batched in (True, False):
        sync(device)
        t0 = time.perf_counter()
        for _ in range(repeats):
            if batched:
                crop_resize_maps(maps, boxes, flips, 14)
            else:
                for i in range(batch):
                    crop_resize_maps(maps[i : i + 1], boxes[i : i + 1], flips[i : i + 1], 14)
        sync(device)
        timings.append(repeats * batch / (time.perf_counter() - t0))
    return timings[0], timings[1]


UNIQUE_JPEGS = 128  # more files are hard links to these: decoding cost is the same


def write_jpegs(root: Path, count: int) -> list[str]:
    """Photo-like JPEGs (400 x 390, ~106 KB, ``photos.py``) under root/train/c/; -> keys."""
    return photo_set(root / "train", count, unique=UNIQUE_JPEGS, classes=1)


def loaders(root: Path, keys, batch: int, workers: int):
    import torchvision.datasets as datasets
    import torchvision.transforms as T

    join = MapJoin(rows=np.arange(len(keys)), maps=np.random.rand(len(keys), 14, 14)
                   .astype(np.float16), missing=np.array([], dtype=str), extra=0)
    ours = PretrainDataset(root / "train", keys, JointTransform(224, "rrc"), 196, "store", join)
    ours_loader = DataLoader(ours, batch_size=batch, sampler=EpochSampler(len(ours)),
                             num_workers=workers, drop_last=True)
    recipe = T.Compose([T.RandomResizedCrop(224, scale=(0.2, 1.0), interpolation=3),
                        T.RandomHorizontalFlip(), T.ToTensor(),
                        T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
    mae = datasets.ImageFolder(str(root / "train"), transform=recipe)
    mae_loader = DataLoader(mae, batch_size=batch, shuffle=True, num_workers=workers,
                            drop_last=True)
    return ours_loader, mae_loader


WINDOW_LINE = re.compile(r"Epoch \[1\] \[(\d+)/(\d+)\].* img/s ([0-9.]+)")


def end_to_end(data_path: Path, model: str, batch: int, workers: int, device, compiled: bool,
               guidance: str, window: int) -> tuple[float, int]:
    """img/s of attg-train's own loop (JPEG files -> loader -> step) in the steady state: the
    second of two epochs (compiled, workers warm), from its log lines of ``window`` iterations
    each after the first one (which holds the wait for the first batch) -> (img/s, iterations
    timed). 'random' guidance runs exactly the guided path of 'store'."""
    cfg = TrainConfig(data_path=str(data_path), output_dir="", model=model, batch_size=batch,
                      accum_iter=1, epochs=2, warmup_epochs=1, guidance=guidance,
                      device=str(device), num_workers=workers, compile=compiled,
                      print_freq=window, ckpt_every_min=0)
    log = io.StringIO()
    with contextlib.redirect_stdout(log):
        result = PretrainRun(cfg, DistInfo(), device).fit()
    windows, last = [], 0
    for match in WINDOW_LINE.finditer(log.getvalue()):
        done = int(match.group(1))
        windows.append((done - last, float(match.group(3))))
        last = done
    steady = windows[1:]
    if not steady:  # one window only: the whole epoch, first batch included
        return result["log"][-1]["train_img_per_s"], last
    iterations = sum(n for n, _ in steady)
    seconds = sum(n * batch / rate for n, rate in steady)
    return iterations * batch / seconds, iterations


def short_name(model: str) -> str:
    """mae_vit_large_patch16 -> ViT-L/16."""
    size, patch = model.split("_vit_")[1].split("_patch")
    return f"ViT-{size[0].upper() if size != 'tiny' else 'tiny'}/{patch}"


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--model", default=None, help="default: tiny on CPU, large on CUDA")
    p.add_argument("--batch_size", type=int, default=None, help="default: 16 CPU, 256 CUDA")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--warmup", type=int, default=None)
    p.add_argument("--compile", action="store_true", default=None)
    p.add_argument("--no_compile", action="store_false", dest="compile")
    p.add_argument("--loader_images", type=int, default=None)
    p.add_argument("--workers", type=int, default=None)
    p.add_argument("--part", default="all", choices=("all", "figures", "end_to_end"),
                   help="figures: everything but the end-to-end run (eager, seconds); "
                   "end_to_end: only that run (with --compile, a cold compile first)")
    args = p.parse_args()
    device = torch.device(args.device)
    gpu = device.type == "cuda"
    model = args.model or ("mae_vit_large_patch16" if gpu else "mae_vit_tiny_patch16")
    batch = args.batch_size or (256 if gpu else 16)
    steps = args.steps or (20 if gpu else 8)
    warmup = args.warmup or (3 if gpu else 2)
    do_compile = gpu if args.compile is None else args.compile
    amp = "bf16" if gpu else "none"
    n_images = args.loader_images or (8192 if gpu else 256)
    workers = args.workers if args.workers is not None else (15 if gpu else 2)
    full = gpu and model == "mae_vit_large_patch16" and n_images >= 4096
    name = short_name(model)

    print_machine(device)
    print(f"model {model}; batch {batch}; amp {amp}; steps {steps}; torch threads "
          f"{torch.get_num_threads()}")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        started = time.perf_counter()
        keys = write_jpegs(root, n_images)
        print(f"{describe(root / 'train', keys)}; written in {time.perf_counter() - started:.1f} s")
        if args.part in ("all", "figures"):
            # What the guidance costs a training step (eager: an upper bound of the compiled
            # cost), then the loader alone beside the MAE recipe's.
            rates = step_throughput(model, device, batch, steps, warmup, False, amp)
            overhead = 100 * (rates["vanilla"] / rates["guided"] - 1)
            figure("stage2 guidance step overhead", overhead, "% step time", 3 if full else None,
                   "lower", note=f"eager steps: vanilla {rates['vanilla']:.1f} img/s, guided "
                   f"{rates['guided']:.1f} img/s")
            ours_loader, mae_loader = loaders(root, keys, min(batch, 64), workers)
            ours, mae = loader_throughput(ours_loader), loader_throughput(mae_loader)
            figure("stage2 loader", ours, "img/s", 4000 if full else None,
                   note=f"{workers} workers, photo-like 400x390 JPEG -> 224 + map row")
            figure("stage2 loader / MAE recipe loader", ours / mae, "x",
                   note=f"MAE {mae:.1f} img/s")
            fast, slow = map_crop_ratio(batch, device)
            figure("stage2 batched map crop / per-image loop", fast / slow, "x",
                   note=f"{fast:,.0f} vs {slow:,.0f} maps/s")
        if args.part in ("all", "end_to_end"):
            # attg-train's own loop from JPEG files, guided, in its steady state.
            mode = "compiled" if do_compile else "eager"
            window = max(1, n_images // batch // 4)
            e2e, timed = end_to_end(root, model, batch, workers, device, do_compile, "random",
                                    window)
            figure(f"stage2 end-to-end guided {name} {mode}", e2e, "img/s",
                   2600 if full and do_compile else None,
                   note=f"second epoch of {n_images} JPEGs, {timed} iterations after its first "
                   f"window, {workers} loader workers, batch {batch}")


if __name__ == "__main__":
    main()
