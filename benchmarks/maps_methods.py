"""Map-method benchmark (not a test): each method's fast path vs its reference path, same run.

Fast paths: one batched DINO forward (fused attention, bf16 on CUDA) -> CLS attention maps;
TokenCut graphs batched + eigensolves in a process pool (BLAS pinned to 1 thread, symmetric
solver); batched torch Grad-CAM. Reference paths (the original code's way): per image fp32
explicit attention; per image scipy ``eigh(D - A, D)`` with default BLAS threading; pytorch-grad-cam
called per batch. Random weights, images from the built-in procedural example generator.
TokenCut is timed from patch keys (the shared DINO forward is the dino line). A random-init ViT's
keys are all alike (cos > 0.2 everywhere: a complete graph whose eigenvalue 1 has multiplicity
195, so any solver's eigenvector is as valid as another's), so TokenCut runs on synthetic keys
laid out like DINO keys on the example images' true object masks (an object direction on the
object's patches, a background direction elsewhere, noise): a well-posed graph, as with real
weights on photos. Preprocessing and decode are not timed (see benchmarks/generate.py).

    python benchmarks/maps_methods.py                       # small CPU settings
    python benchmarks/maps_methods.py --device cuda --images 4096 --batch_size 256 \
        --reference_images 128 --workers 12                 # full settings on a GPU box
"""

from __future__ import annotations

import argparse
import os
import time
import warnings

import numpy as np
import torch

from attgmae.data import map_inputs as preprocess
from attgmae.data.example import CLASSES, make_example_image
from attgmae.maps import dino, gradcam, tokencut
from attgmae.models.backbones import RandomWeightsWarning, load_dino_vit, load_resnet50


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _timed(fn, device: str):
    _sync(device)
    start = time.perf_counter()
    out = fn()
    _sync(device)
    return out, time.perf_counter() - start


def mask_keys(masks: list[np.ndarray], dim: int = 768, seed: int = 0) -> torch.Tensor:
    """True object masks uint8 [H, W] -> synthetic patch keys float32 [B, 196, dim]."""
    rng = np.random.default_rng(seed)
    keys = rng.standard_normal((len(masks), 196, dim)).astype(np.float32)
    for row, mask in enumerate(masks):
        on_object = preprocess.resize_uint8(np.repeat(mask[..., None], 3, 2))[..., 0]
        patch_is_object = on_object.reshape(14, 16, 14, 16).mean((1, 3)).ravel() > 127  # [196]
        keys[row, patch_is_object] += 1.5 * rng.standard_normal(dim).astype(np.float32)
        keys[row, ~patch_is_object] += 1.0 * rng.standard_normal(dim).astype(np.float32)
    return torch.from_numpy(keys)


def _batches(x: torch.Tensor, batch_size: int):
    return [x[i : i + batch_size] for i in range(0, len(x), batch_size)]


def _report(name: str, fast_n: int, fast_s: float, ref_n: int, ref_s: float, max_diff: float):
    fast_rate, ref_rate = fast_n / fast_s, ref_n / ref_s
    print(f"{name:9s} fast {fast_rate:9.1f} img/s ({fast_n} img)   reference {ref_rate:8.1f} img/s "
          f"({ref_n} img)   ratio {fast_rate / ref_rate:6.1f}x   max|fast-ref| {max_diff:.2e}",
          flush=True)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--images", type=int, default=32, help="images for the fast paths")
    parser.add_argument("--reference_images", type=int, default=8)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) // 2),
                        help="TokenCut eigensolve processes")
    parser.add_argument("--methods", default="dino,tokencut,gradcam")
    args = parser.parse_args(argv)
    methods = args.methods.split(",")
    device = args.device

    rng = np.random.default_rng(0)
    examples = [make_example_image(CLASSES[i % len(CLASSES)], rng) for i in range(args.images)]
    images, masks = [image for image, _ in examples], [mask for _, mask in examples]
    x_all = preprocess.to_model_input(images).to(device)  # [N, 3, 224, 224]
    x_ref = x_all[: args.reference_images]
    print(f"device={device} torch_threads={torch.get_num_threads()} cpus={os.cpu_count()} "
          f"images={args.images} reference_images={args.reference_images} "
          f"batch_size={args.batch_size} workers={args.workers}")

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RandomWeightsWarning)
        vit = load_dino_vit(random_weights=True)[0].to(device)
        resnet = load_resnet50(random_weights=True)[0].to(device)

    if "dino" in methods:
        dino.dino_outputs(vit, x_all[: args.batch_size])  # warm-up

        def fast_dino():
            outs = [dino.dino_outputs(vit, b) for b in _batches(x_all, args.batch_size)]
            return torch.cat([dino.dino_maps(c) for c, _ in outs])  # keys made, unused here

        dino_fast, fast_s = _timed(fast_dino, device)
        ref, ref_s = _timed(lambda: dino.dino_maps_reference(vit, x_ref), device)
        diff = (dino_fast[: len(ref)].float() - ref).abs().max().item()
        _report("dino", len(x_all), fast_s, len(x_ref), ref_s, diff)

    if "tokencut" in methods:
        patch_keys = mask_keys(masks).to(device)  # [N, 196, 768]
        keys_ref = patch_keys[: args.reference_images]
        with tokencut.TokenCutRunner(args.workers) as runner:
            runner.submit(patch_keys[: args.workers]).result()  # start the workers

            def fast_tokencut():
                pending = [runner.submit(k) for k in _batches(patch_keys, args.batch_size)]
                return np.concatenate([p.result() for p in pending])

            fast, fast_s = _timed(fast_tokencut, device)
        ref, ref_s = _timed(lambda: tokencut.tokencut_maps_reference(keys_ref), device)
        _report("tokencut", len(patch_keys), fast_s, len(keys_ref), ref_s,
                float(np.abs(fast[: len(ref)] - ref).max()))

    if "gradcam" in methods:
        gradcam.gradcam_maps(resnet, x_all[: args.batch_size])  # warm-up

        def fast_gradcam():
            return torch.cat([gradcam.gradcam_maps(resnet, b)
                              for b in _batches(x_all, args.batch_size)])

        fast, fast_s = _timed(fast_gradcam, device)
        ref, ref_s = _timed(lambda: gradcam.gradcam_maps_reference(resnet, x_ref,
                                                                   batch_size=args.batch_size),
                            device)
        diff = float(np.abs(fast[: len(ref)].float().cpu().numpy() - ref).max())
        _report("gradcam", len(x_all), fast_s, len(x_ref), ref_s, diff)


if __name__ == "__main__":
    main()
