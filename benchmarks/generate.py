"""End-to-end `attg-maps generate` benchmark (not a test): JPEG files on disk -> map stores.

Fast path: the pipeline itself (``run_generate``: data-loader workers decode once and resize, one
batched DINO forward shared by dino + tokencut, TokenCut eigensolves in a process pool, batched
Grad-CAM, chunked store writes), one run per method and one with all methods together.
Reference path, in the same run: the original code's way, one image at a time: decode, resize,
then per image fp32 explicit attention (dino), scipy ``eigh(D - A, D)`` with default BLAS
threading (tokencut), pytorch-grad-cam's GradCAM called per batch (gradcam), then one store
write. "all" for the reference is the sum of its per-method times (it decodes per method).
img/s counts the compute loop (model loading excluded); random weights; synthetic JPEGs of
ImageNet's typical size (500x375) in an ImageNet-like folder layout.

    python benchmarks/generate.py                                   # small CPU settings
    python benchmarks/generate.py --device cuda --images 20000 --batch_size 256 \
        --num_workers 12 --reference_images 256                     # full settings on a GPU box
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from attgmae.core.listing import list_images
from attgmae.data.example import CLASSES, make_example_image
from attgmae.data.images import decode_rgb
from attgmae.pipelines.generate import ALL_METHODS, GenerateConfig, run_generate

JPEG_SIZE = (500, 375)  # ImageNet's most common size


def write_jpegs(root: Path, count: int, seed: int = 0) -> Path:
    """``count`` example scenes upscaled to 500x375, as class folders of JPEGs."""
    rng = np.random.default_rng(seed)
    for i in range(count):
        shape = CLASSES[i % len(CLASSES)]
        image, _ = make_example_image(shape, rng)
        folder = root / f"n{i % len(CLASSES):08d}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).resize(JPEG_SIZE, Image.BICUBIC).save(
            folder / f"img_{i:06d}.JPEG", quality=90
        )
    return root


def time_pipeline(root, out, methods, args) -> float:
    """img/s of the pipeline's compute loop for ``methods``."""
    cfg = GenerateConfig(
        images_root=str(root), out_dir=str(out), methods=tuple(methods), random_weights=True,
        device=args.device, batch_size=args.batch_size, num_workers=args.num_workers,
        tokencut_workers=args.tokencut_workers, overwrite=True, progress=False,
    )
    return run_generate(cfg).img_per_s


def time_reference(root, keys, method, device, out) -> float:
    """img/s of the per-image reference path for one method (decode included, as the pipeline)."""
    from attgmae.data.map_inputs import to_model_input
    from attgmae.maps.dino import dino_maps_reference, dino_outputs
    from attgmae.maps.gradcam import gradcam_maps_reference
    from attgmae.maps.random_map import keyed_random_maps
    from attgmae.maps.tokencut import tokencut_maps_reference
    from attgmae.models.backbones import load_dino_vit, load_resnet50
    from attgmae.store import write_store

    vit = resnet = None
    if method in ("dino", "tokencut"):
        vit = load_dino_vit(random_weights=True)[0].to(device)
    if method == "gradcam":
        resnet = load_resnet50(random_weights=True)[0].to(device)

    def one_image(key) -> np.ndarray:
        x = to_model_input([decode_rgb(Path(root) / key)], device=device)  # [1, 3, 224, 224]
        if method == "dino":
            return dino_maps_reference(vit, x).cpu().numpy()
        if method == "tokencut":
            with torch.no_grad():
                _, patch_keys = dino_outputs(vit, x, amp=False)
            return tokencut_maps_reference(patch_keys)
        if method == "gradcam":
            return gradcam_maps_reference(resnet, x)
        return keyed_random_maps([key], 0)

    one_image(keys[0])  # warm-up, not timed (the pipeline's loop time includes its own)
    start = time.perf_counter()
    maps = [one_image(key) for key in keys]  # each [1, 14, 14]
    write_store(out / f"ref_{method}.zarr", keys, np.concatenate(maps), method=method,
                overwrite=True)
    if device == "cuda":
        torch.cuda.synchronize()
    return len(keys) / (time.perf_counter() - start)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--images", type=int, default=24, help="JPEGs for the pipeline runs")
    parser.add_argument("--reference_images", type=int, default=6)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--num_workers", type=int, default=1)
    parser.add_argument("--tokencut_workers", type=int, default=-1)
    parser.add_argument("--methods", default=",".join(ALL_METHODS))
    parser.add_argument("--workdir", default=None, help="keep the JPEGs and stores here")
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore")  # random-weights warnings, once per load
    methods = [m for m in args.methods.split(",") if m]

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.workdir or tmp)
        root = write_jpegs(work / "images", args.images)
        keys = list_images(root)
        ref_keys = keys[: args.reference_images]
        print(f"device {args.device}, {os.cpu_count()} CPUs, torch threads "
              f"{torch.get_num_threads()}, {len(keys)} JPEGs {JPEG_SIZE[0]}x{JPEG_SIZE[1]}, "
              f"batch {args.batch_size}, loader workers {args.num_workers}", flush=True)
        print(f"{'method':9s} {'pipeline img/s':>15s} {'reference img/s':>16s} {'ratio':>8s}")
        ref_seconds_per_image = 0.0
        for method in methods:
            fast = time_pipeline(root, work / "maps", [method], args)
            ref = time_reference(root, ref_keys, method, args.device, work / "maps")
            ref_seconds_per_image += 1.0 / ref
            print(f"{method:9s} {fast:15.1f} {ref:16.1f} {fast / ref:7.1f}x", flush=True)
        if len(methods) > 1:
            fast = time_pipeline(root, work / "maps", methods, args)
            ref = 1.0 / ref_seconds_per_image
            print(f"{'all':9s} {fast:15.1f} {ref:16.1f} {fast / ref:7.1f}x", flush=True)


if __name__ == "__main__":
    main()
