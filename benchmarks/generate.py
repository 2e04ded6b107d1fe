"""End-to-end `attg-maps generate` benchmark (not a test): JPEG files on disk -> map stores.

Fast path: the pipeline itself (``run_generate``: data-loader workers decode once and resize, one
batched DINO forward shared by dino + tokencut, TokenCut eigensolves in a process pool, batched
Grad-CAM, chunked store writes), one run per method and one with all methods together. Its
figure is the steady state: images per second after each run's first chunk (loader workers
forked, the TokenCut pool spawned, the models warm); the first chunk's time, start-up included,
is reported beside it. Reference path, in the same run: the original code's way, one image at a
time: decode, resize, then per image fp32 explicit attention (dino), scipy ``eigh(D - A, D)``
with default BLAS threading (tokencut), pytorch-grad-cam's GradCAM called per batch (gradcam),
then one store write. "all" for the reference is the sum of its per-method times. Then the
precision check: bf16 (the CUDA default) against fp32 maps of the same images, per method, held
to ``attgmae.maps.agreement.BF16_TOLERANCE``. On CUDA, also TokenCut's eigensolves in the CPU
pool vs on the GPU (``--tokencut_solver``), and Grad-CAM's ResNet-50 in channels_last vs
contiguous. Random weights; photo-like JPEGs of ImageNet's size and bitrate (``photos.py``) in
an ImageNet-like folder layout; the machine first. Figures: ``benchmarks/figures.py``.

    python benchmarks/generate.py                                   # small CPU settings
    python benchmarks/generate.py --device cuda --images 8192 --batch_size 256 \
        --reference_images 32 --agreement_images 256                # one H200 (gpu_check.sh)
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from figures import figure
from machine import print_machine
from photos import describe, photo_set
from PIL import Image
from timing import best_of_rounds

from attgmae.core.listing import list_images
from attgmae.data.images import decode_rgb
from attgmae.maps.agreement import BF16_TOLERANCE, agreement, within_tolerance
from attgmae.maps.registry import DEFAULT_METHODS
from attgmae.pipelines.generate import GenerateConfig, run_generate
from attgmae.store import open_store

UNIQUE_JPEGS = 128  # more files are hard links to these: decoding cost is the same, writing is not
TARGETS = {"dino": 5000, "tokencut": 4000, "gradcam": 4000, "all methods": 2500}  # one H200


def write_jpegs(root: Path, count: int) -> Path:
    """``count`` photo-like JPEGs (400 x 390, ~106 KB) in class folders (``photos.py``)."""
    photo_set(root, count, unique=UNIQUE_JPEGS)
    return root


def run_pipeline(root, out, methods, args, precision="auto", file_list=None):
    cfg = GenerateConfig(
        images_root=str(root), out_dir=str(out), methods=tuple(methods), random_weights=True,
        device=args.device, batch_size=args.batch_size, num_workers=args.num_workers,
        tokencut_workers=args.tokencut_workers, overwrite=True, progress=False,
        tokencut_solver=getattr(args, "solver", "auto"), decode=getattr(args, "decode", "cpu"),
        resize=getattr(args, "resize", "auto"),
        precision=precision, file_list=file_list, chunk_rows=args.chunk_rows,
        shard_rows=args.chunk_rows * 8,
    )  # fmt: skip
    return run_generate(cfg)


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


def check_agreement(root, keys, methods, args, work: Path) -> None:
    """bf16 against fp32 maps of the same images, each method (figures, no speed)."""
    if not keys:
        return
    work.mkdir(parents=True, exist_ok=True)
    file_list = work / "agreement.txt"
    file_list.write_text("\n".join(keys) + "\n")
    stores = {}
    for precision in ("bf16", "fp32"):
        run_pipeline(root, work / precision, methods, args, precision, str(file_list))
        stores[precision] = {m: open_store(work / precision / f"{m}.zarr") for m in methods}
    for method in methods:
        bf16 = stores["bf16"][method].read_all().astype(np.float32)
        stats = agreement(bf16, stores["fp32"][method].read_all().astype(np.float32))
        ok = "within" if within_tolerance(stats) else "OUTSIDE"
        figure(f"bf16 vs fp32 {method} mean |diff|", stats["mean_abs_diff"], "",
               BF16_TOLERANCE["mean_abs_diff"], "lower",
               f"corr {stats['correlation']:.5f}, foreground agreement "
               f"{stats['foreground_agreement']:.4f}, max |diff| {stats['max_abs_diff']:.3f} "
               f"({ok} the bf16 tolerance; {len(keys)} images)")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--images", type=int, default=32, help="JPEGs for the pipeline runs")
    parser.add_argument("--reference_images", type=int, default=4)
    parser.add_argument("--agreement_images", type=int, default=8)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--chunk_rows", type=int, default=None,
                        help="rows per store chunk (default: 2 batches)")
    parser.add_argument("--num_workers", type=int, default=-1)
    parser.add_argument("--tokencut_workers", type=int, default=-1)
    parser.add_argument("--methods", default=",".join(m for m in DEFAULT_METHODS if m != "random"))
    parser.add_argument("--workdir", default=None, help="keep the JPEGs and stores here")
    parser.add_argument("--decode_images", type=int, default=None,
                        help="images for --resize gpu and --decode gpu vs cpu (default: 2048 "
                        "on CUDA, none on the CPU, where a number given rehearses the device "
                        "paths)")
    args = parser.parse_args(argv)
    args.chunk_rows = args.chunk_rows or 2 * args.batch_size  # the first chunk is the warm-up
    warnings.simplefilter("ignore")  # random-weights warnings, once per load
    methods = [m for m in args.methods.split(",") if m]
    full = args.device == "cuda" and args.images >= 4096

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.workdir or tmp)
        print_machine(args.device)
        started = time.perf_counter()
        root = write_jpegs(work / "images", args.images)
        keys = list_images(root)
        print(f"{describe(root, keys)}; written in {time.perf_counter() - started:.1f} s; "
              f"torch threads {torch.get_num_threads()}, batch {args.batch_size}", flush=True)
        ref_seconds_per_image = 0.0
        for method in [*methods, "all methods"] if len(methods) > 1 else methods:
            run = methods if method == "all methods" else [method]
            result = run_pipeline(root, work / "maps", run, args)
            target = TARGETS.get(method) if full else None
            figure(f"stage1 {method}", result.steady_img_per_s, "img/s", target,
                   note=f"after the first chunk; start-up + first chunk {result.startup_s:.1f} s, "
                   f"whole loop {result.img_per_s:.1f} img/s")
            if method == "all methods":
                ref = 1.0 / ref_seconds_per_image
            else:
                ref = time_reference(root, keys[: args.reference_images], method, args.device,
                                     work / "maps")
                ref_seconds_per_image += 1.0 / ref
            figure(f"stage1 {method} pipeline / per-image reference", result.steady_img_per_s / ref,
                   "x", note=f"reference {ref:.1f} img/s")
        check_agreement(root, keys[: args.agreement_images], methods, args, work / "agreement")
        if args.device == "cuda" and "tokencut" in methods:
            compare_solvers(root, work / "solvers", args)
        if args.device == "cuda" and "gradcam" in methods:
            compare_channels_last(args.batch_size)
        decode_images = args.decode_images
        if decode_images is None:
            decode_images = 2048 if args.device == "cuda" else 0
        if decode_images and "dino" in methods:
            compare_decoders(root, keys[:decode_images], work / "decoders", args)


def compare_solvers(root, work: Path, args) -> None:
    """TokenCut's eigensolves in the CPU pool vs batched on the GPU, same files, same run:
    steady img/s of each and how far their maps are apart."""
    rates, maps = {}, {}
    for solver in ("cpu", "gpu"):
        args.solver = solver
        result = run_pipeline(root, work / solver, ["tokencut"], args)
        rates[solver] = result.steady_img_per_s
        maps[solver] = open_store(work / solver / "tokencut.zarr").read_all().astype(np.float32)
    args.solver = "auto"
    stats = agreement(maps["gpu"], maps["cpu"])
    figure("stage1 tokencut solver gpu / cpu pool", rates["gpu"] / rates["cpu"], "x",
           note=f"gpu {rates['gpu']:.0f} img/s, cpu pool {rates['cpu']:.0f} img/s; maps max "
           f"|diff| {stats['max_abs_diff']:.2e}, foreground agreement "
           f"{stats['foreground_agreement']:.5f}")


PIXEL_PATHS = {  # name -> (--decode, --resize)
    "workers": ("cpu", "cpu"),  # the workers decode and resize (the CPU's default)
    "resize gpu": ("cpu", "gpu"),  # the workers decode, the device resizes (CUDA's default)
    "decode gpu": ("gpu", "gpu"),  # the workers read, nvjpeg decodes, the device resizes
}


def compare_decoders(root, keys, work: Path, args) -> None:
    """Where stage 1's pixels are made (``PIXEL_PATHS``), DINO maps of the same files, same
    run: steady img/s of each, how far each one's 224 px pixels are from PIL's own (decode_rgb,
    then PIL's resize) and its maps from the workers' path's. On the CPU (a rehearsal) the
    device's share runs there."""
    from attgmae.data import pil_exact
    from attgmae.data.device_decode import device_pixels
    from attgmae.data.map_inputs import DecodedImages, collate_decoded, collate_payloads
    from attgmae.pipelines import generate

    if args.device != "cuda":
        generate.GPU_DECODE_DEVICES = (*generate.GPU_DECODE_DEVICES, args.device)
        pil_exact.FAST_DEVICE_TYPES = (*pil_exact.FAST_DEVICE_TYPES, args.device)
    work.mkdir(parents=True, exist_ok=True)
    file_list = work / "keys.txt"
    file_list.write_text("\n".join(keys) + "\n")
    sample = keys[:256]
    pil = torch.stack([torch.from_numpy(np.asarray(Image.fromarray(decode_rgb(Path(root) / k))
                       .resize((224, 224), Image.BILINEAR))) for k in sample])  # fmt: skip
    rates, maps, pixels = {}, {}, {}
    for name, (args.decode, args.resize) in PIXEL_PATHS.items():
        out = work / name.replace(" ", "_")
        result = run_pipeline(root, out, ["dino"], args, file_list=str(file_list))
        rates[name] = result.steady_img_per_s or result.img_per_s
        maps[name] = open_store(out / "dino.zarr").read_all().astype(np.float32)
        on_device = generate.device_work(args)
        if on_device:
            items = collate_payloads(list(DecodedImages(root, sample, on_device)))
            device = torch.device(args.device)
            made = device_pixels(items[1], items[2], sample, device)[0]  # warm: weights cached
            rate = max(_pixel_rate(items, sample, device) for _ in range(3))
            figure(f"stage1 device pixels {name}", rate, "img/s",
                   note=f"device_pixels alone on {len(sample)} images: the copy to the device"
                   f"{', nvjpeg' if on_device == 'decode' else ''} and PIL's exact resize")
        else:
            made = collate_decoded(list(DecodedImages(root, sample)))[1]
        pixels[name] = (made.cpu().int() - pil.int()).abs()
    args.decode, args.resize = "cpu", "auto"
    workers = pixels["workers"]
    for name in ("resize gpu", "decode gpu"):
        stats = agreement(maps[name], maps["workers"])
        ok = "within" if within_tolerance(stats) else "OUTSIDE"
        diff = pixels[name]
        figure(f"stage1 dino {name} / cpu", rates[name] / rates["workers"], "x",
               note=f"{rates[name]:.0f} vs {rates['workers']:.0f} img/s with the workers' "
               f"resize ({len(keys)} images); pixels vs PIL's max |diff| {int(diff.max())}, mean "
               f"{diff.float().mean():.4f} (the workers': {int(workers.max())}, "
               f"{workers.float().mean():.4f}; {len(sample)} images); DINO maps vs the workers' "
               f"mean |diff| {stats['mean_abs_diff']:.2e}, foreground agreement "
               f"{stats['foreground_agreement']:.4f} ({ok} the bf16 tolerance)")


def _pixel_rate(items, names, device) -> float:
    """img/s of one ``device_pixels`` call on a collated batch, the device waited for."""
    from attgmae.data.device_decode import device_pixels

    started = time.perf_counter()
    device_pixels(items[1], items[2], names, device)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return len(names) / (time.perf_counter() - started)


def compare_channels_last(batch: int, steps: int = 10) -> None:
    """The batched Grad-CAM (bf16 forward, backward from layer4) with ResNet-50 weights in
    channels_last (the CUDA default, registry.Backbone.channels_last) vs contiguous."""
    from attgmae.maps.gradcam import cam_7x7
    from attgmae.models.backbones import load_resnet50

    device = torch.device("cuda")
    contiguous = load_resnet50(random_weights=True)[0].eval().to(device)
    models = {"contiguous": contiguous,
              "channels_last": load_resnet50(random_weights=True)[0].eval().to(device)
              .to(memory_format=torch.channels_last)}  # fmt: skip
    x = torch.randn(batch, 3, 224, 224, device=device)

    def rate(model) -> float:
        cam_7x7(model, x)  # warm-up (cuDNN's plans)
        torch.cuda.synchronize()
        started = time.perf_counter()
        for _ in range(steps):
            cam_7x7(model, x)
        torch.cuda.synchronize()
        return steps * batch / (time.perf_counter() - started)

    rates = best_of_rounds({name: (lambda m=m: rate(m)) for name, m in models.items()}, 2)
    figure("stage1 gradcam channels_last / contiguous", rates["channels_last"] /
           rates["contiguous"], "x", note=f"channels_last {rates['channels_last']:.0f} img/s, "
           f"contiguous {rates['contiguous']:.0f} img/s (batched Grad-CAM, bf16)")


if __name__ == "__main__":
    main()
