"""Evaluation benchmark (not a test): the k-NN step and frozen-encoder feature extraction.

k-NN: our chunked search (one similarity matrix per chunk, a top-k per k, scatter-add votes)
against a plain reference written the obvious way (one search per k, a one-hot [B*k, C] vote
matrix, as DINO's ``eval_knn.py`` does), on random L2-normalized features; both must agree,
the ratio is printed.
Feature extraction: the real one first (``extract_features`` from photo-like JPEG files through
the loader workers, the issue's >= 3,000 img/s target for ViT-L/16 on one H200) beside today's
path (float32 out of the workers) as a ratio; then the encoder forward alone on synthetic 224 px
batches (the GPU's ceiling), fp32 and (on CUDA) bf16 autocast.

    python benchmarks/eval.py                          # small, CPU
    python benchmarks/eval.py --device cuda --full     # ViT-L/16 extraction, then k-NN of
                                                       # ImageNet-1k sizes: 1.28M x 1024 vs 50k
"""

from __future__ import annotations

import argparse
import tempfile
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch
from cpu_jobs import TodayEval
from figures import figure
from machine import print_machine
from photos import describe, photo_set

from attgmae.eval.features import (
    ImageSplit,
    LabelledImages,
    autocast_for,
    extract_features,
    make_loader,
    split_transform,
)
from attgmae.eval.knn import knn_classify_multi
from attgmae.models.encoder import EncoderSpec, build_encoder
from attgmae.models.tokens import features

VIT = {  # name -> (embed_dim, depth, heads, patch)
    "tiny": (192, 4, 3, 16),
    "base": (768, 12, 12, 16),
    "large": (1024, 24, 16, 16),
}


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def plain_knn(train_x, train_y, test_x, test_y, k, T, num_classes, chunk):
    """The obvious way: one search per k, votes through a one-hot [B*k, C] matrix."""
    hit1 = hit5 = 0
    for start in range(0, test_x.shape[0], chunk):
        x, y = test_x[start : start + chunk], test_y[start : start + chunk]
        sims, idx = (x @ train_x.T).topk(k, dim=1)
        onehot = torch.zeros(x.shape[0] * k, num_classes, device=x.device)
        onehot.scatter_(1, train_y[idx].reshape(-1, 1), 1.0)
        scores = (onehot.view(x.shape[0], k, num_classes) * (sims / T).exp()[..., None]).sum(1)
        ranked = scores.argsort(dim=1, descending=True)[:, : min(5, k)]
        hits = ranked == y[:, None]
        hit1 += int(hits[:, 0].sum())
        hit5 += int(hits.any(1).sum())
    n = test_x.shape[0]
    return 100.0 * hit1 / n, 100.0 * hit5 / n


def clustered_features(device, num_train, num_test, dim, num_classes, seed=0):
    """Random L2-normalized features around class centres (accuracies not all at chance)."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    centers = torch.randn(num_classes, dim, generator=g)
    train_y = torch.randint(0, num_classes, (num_train,), generator=g)
    test_y = torch.randint(0, num_classes, (num_test,), generator=g)
    train_x = centers[train_y] + 4.0 * torch.randn(num_train, dim, generator=g)
    test_x = centers[test_y] + 4.0 * torch.randn(num_test, dim, generator=g)
    train_x = torch.nn.functional.normalize(train_x, dim=1).to(device)
    test_x = torch.nn.functional.normalize(test_x, dim=1).to(device)
    return train_x, train_y.to(device), test_x, test_y.to(device)


def _timed(fn, device):
    _sync(device)
    t0 = time.perf_counter()
    out = fn()
    _sync(device)
    return out, time.perf_counter() - t0


def bench_knn(device, num_train, num_test, dim, num_classes, ks, T=0.07, chunk_bytes=1 << 30,
              reference_test=2000, target_s=None):  # fmt: skip
    """The k-NN step on all test features (the figure), then ours against the plain reference
    on the first ``reference_test`` of them (the ratio; identical top-1 but for ties)."""
    train_x, train_y, test_x, test_y = clustered_features(
        device, num_train, num_test, dim, num_classes
    )
    fast, fast_s = _timed(
        lambda: knn_classify_multi(
            train_x, train_y, test_x, test_y, ks, T, num_classes, max_chunk_bytes=chunk_bytes
        ),
        device,
    )
    size = f"{num_train / 1e6:.2f}M x {dim}" if num_train >= 1e6 else f"{num_train} x {dim}"
    test = f"{num_test // 1000}k" if num_test >= 1000 else str(num_test)
    figure(f"eval k-NN {size} vs {test}", fast_s, "s", target_s, "lower",
           note=f"{num_classes} classes, k={list(ks)}, top-1 " +
           " ".join(f"{k}:{fast[k][0]:.2f}" for k in ks))
    n = min(reference_test, num_test)
    sub_x, sub_y = test_x[:n], test_y[:n]
    ours, ours_s = _timed(
        lambda: knn_classify_multi(
            train_x, train_y, sub_x, sub_y, ks, T, num_classes, max_chunk_bytes=chunk_bytes
        ),
        device,
    )
    rows = max(1, chunk_bytes // (num_train * 4))
    plain, plain_s = _timed(
        lambda: {k: plain_knn(train_x, train_y, sub_x, sub_y, k, T, num_classes, rows) for k in ks},
        device,
    )
    worst = max(abs(ours[k][0] - plain[k][0]) for k in ks)
    figure("eval k-NN plain reference / ours", plain_s / ours_s, "x",
           note=f"on {n} test images; max top-1 difference {worst:.3f} points (ties only)")
    return fast_s


def _mark(marks: list, seen: int) -> None:
    marks.append((seen, time.perf_counter()))


def bench_extraction(device, size, images, batch_size, workers, precision, target=None):
    """The real extraction, ``extract_features`` as attg-eval runs it: photo-like JPEG files ->
    loader workers (``LabelledImages`` + ``split_transform``: on CUDA ``DeviceEvalPixels``, the
    workers decode and the device resizes and crops; elsewhere ``EvalPixels``, uint8 224 px out
    of the workers) -> normalized on the device -> the encoder, in the steady state (after the
    first batch: workers started); beside
    today's path (PIL decode, PIL bicubic transform, float32 out of the workers), same files,
    same model, same run."""
    dim, depth, heads, patch = VIT[size]
    model = build_encoder(EncoderSpec(224, patch, dim, depth, heads, 4.0, True)).to(device)
    model.eval()
    name = f"ViT-{size[0].upper() if size != 'tiny' else 'tiny'}/{patch}"
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "images"
        keys = photo_set(root, images, unique=min(images, 128))
        print(describe(root, keys))
        split = ImageSplit(root, keys, np.zeros(len(keys), np.int64), ["c"])
        rates = {}
        transform = split_transform(224, device)
        for path, dataset in (("new", LabelledImages(split, transform)),
                              ("today", TodayEval(split))):  # fmt: skip
            marks: list[tuple[int, float]] = []
            loader = make_loader(dataset, batch_size, workers, device)
            extract_features(model, loader, device, "cls", precision,
                             partial(_mark, marks))  # fmt: skip
            ended = time.perf_counter()
            first_seen, first_time = marks[0]
            rates[path] = (marks[-1][0] - first_seen) / max(ended - first_time, 1e-9)
    figure(f"eval extraction {name} {precision} from JPEGs", rates["new"], "img/s", target,
           note=f"{images} JPEGs, {workers} workers, batch {batch_size}, after the first batch; "
           f"{transform!r}")
    figure("eval extraction new / today", rates["new"] / rates["today"], "x",
           note=f"today {rates['today']:.1f} img/s (float32 out of the workers)")


@torch.no_grad()
def bench_features(device, size, batch_size, steps, precision, target=None):
    dim, depth, heads, patch = VIT[size]
    spec = EncoderSpec(224, patch, dim, depth, heads, 4.0, True)
    model = build_encoder(spec).to(device).eval()
    imgs = torch.randn(batch_size, 3, 224, 224, device=device)
    with autocast_for(device, precision):
        features(model, imgs)  # warm-up
        _, elapsed = _timed(lambda: [features(model, imgs) for _ in range(steps)], device)
    img_per_s = steps * batch_size / elapsed
    name = f"ViT-{size[0].upper() if size != 'tiny' else 'tiny'}/{patch}"
    figure(f"eval encoder forward {name} {precision}", img_per_s, "img/s", target,
           note=f"batch {batch_size}, encoder forward only, synthetic input: the GPU's ceiling")
    return img_per_s


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--full", action="store_true", help="ImageNet-1k sizes (GPU)")
    parser.add_argument("--small", action="store_true", help="seconds, for testing the script")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    parser.add_argument("--workers", type=int, default=None,
                        help="extraction loader workers (default: 15 --full, 1 otherwise)")
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    print_machine(device)
    if args.full:
        workers = 15 if args.workers is None else args.workers
        bench_extraction(device, "large", 16384, 256, workers, "bf16", target=3000)
        bench_knn(device, 1_281_167, 50_000, 1024, 1000, (10, 20, 100, 200),
                  chunk_bytes=8 << 30, target_s=60)
        bench_features(device, "large", 256, 20, "bf16")
    elif args.small:
        bench_extraction(device, "tiny", 16, 8, args.workers or 0, "fp32")
        bench_features(device, "tiny", 8, 2, "fp32")
        bench_knn(device, 2_000, 200, 64, 10, (5, 20), chunk_bytes=8 << 20, reference_test=200)
    else:
        bench_extraction(device, "tiny", 96, 16, args.workers or 1, "fp32")
        bench_features(device, "tiny", 32, 3, "fp32")
        bench_knn(device, 20_000, 2_000, 256, 100, (5, 10, 20, 100, 200), chunk_bytes=64 << 20)


if __name__ == "__main__":
    main()
