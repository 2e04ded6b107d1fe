"""`attg-maps generate` and `attg-maps compare`: parse flags, build a config, call the pipeline.

``cli/maps.py`` adds these subcommands with ``add_parsers(subparsers)`` and dispatches
``args.command in ("generate", "compare")`` to ``run(args)``.
"""

from __future__ import annotations

import argparse
import os

from attgmae.cli._args import CliError

GENERATE_HELP = """\
exit codes: 0 every image mapped; 3 some images failed to decode (the stores are complete; the
failed keys and reasons are listed at the end, in the store attributes and by `attg-maps verify`);
2 bad input. Rerunning the same command after a crash or kill resumes; torchrun/srun split the
work by whole shards (docs/generate.md)."""


def add_parsers(subparsers) -> None:
    _add_generate(subparsers)
    _add_compare(subparsers)


def _add_generate(subparsers) -> None:
    from attgmae.pipelines.generate import ALL_METHODS

    from attgmae.maps.registry import METHODS

    tokencut, gradcam = METHODS["tokencut"], METHODS["gradcam"]

    p = subparsers.add_parser(
        "generate",
        help="dino / tokencut / gradcam / random maps of an image set, one store per method",
        description="Compute guidance maps for every image under IMAGES_ROOT (or --file_list): "
        "DIR/<method>.zarr (or .h5) per method, keys relative to IMAGES_ROOT.",
        epilog=GENERATE_HELP,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("images_root", help="image folder (ImageNet layout: labels from class folders)")
    p.add_argument("--out", required=True, help="output folder for <method>.zarr / .h5")
    p.add_argument("--methods", default=",".join(ALL_METHODS), help="comma-separated methods")
    p.add_argument("--format", default="zarr", choices=("zarr", "h5"), help="store format")
    p.add_argument(
        "--file_list", default=None, help="text file of image paths relative to the root"
    )
    p.add_argument(
        "--dino_weights",
        default=None,
        help="DINO ViT-B/16 weights (.pth official/checkpoint/timm, .safetensors); "
        "default: timm tag vit_base_patch16_224.dino",
    )
    p.add_argument(
        "--resnet_weights",
        default=None,
        help="ResNet-50 weights (torchvision or timm); default: timm tag resnet50.tv_in1k",
    )
    p.add_argument(
        "--random_weights",
        action="store_true",
        help="seeded random networks (tests and demos only; recorded in the stores)",
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--batch_size", type=int, default=64)
    p.add_argument(
        "--num_workers",
        type=int,
        default=min(8, os.cpu_count() or 1),
        help="data-loader processes that decode and resize images",
    )
    p.add_argument("--overwrite", action="store_true", help="replace existing complete stores")
    p.add_argument("--seed", type=int, default=0, help="seed of the random maps")
    p.add_argument("--dino_heads", default="mean", help="mean, max or a head index")
    p.add_argument(
        "--tokencut_tau",
        type=float,
        default=tokencut.params["tau"],
        help="edge when the keys' cosine similarity is above this",
    )
    p.add_argument(
        "--tokencut_eps", type=float, default=tokencut.params["eps"], help="weight of non-edges"
    )
    p.add_argument(
        "--tokencut_map",
        default=tokencut.params["map"],
        choices=tokencut.choices["map"],
        help="fg-eigvec: eigenvector on the foreground; eigvec; mask: seed component",
    )
    p.add_argument(
        "--tokencut_workers",
        type=int,
        default=-1,
        help="eigensolve processes (-1: 0 on CPU, half the cores with CUDA)",
    )
    p.add_argument("--cam_layer", default=gradcam.params["layer"], choices=gradcam.choices["layer"])
    p.add_argument(
        "--cam_target",
        default=gradcam.params["target"],
        choices=gradcam.choices["target"],
        help="top1 prediction, or the folder label (1000 ImageNet wnid folders)",
    )
    p.add_argument(
        "--cam_method",
        default=gradcam.params["method"],
        help="gradcam (batched, fast) or a pytorch-grad-cam method: gradcam++, "
        "xgradcam, layercam, eigencam, scorecam, ...",
    )
    p.add_argument(
        "--chunk_rows",
        type=int,
        default=None,
        help="store rows per chunk (resume granularity); default: the store's",
    )
    p.add_argument(
        "--shard_rows",
        type=int,
        default=None,
        help="store rows per shard (unit of work per rank); default: the store's",
    )
    p.add_argument(
        "--precision",
        default="auto",
        choices=("auto", "bf16", "fp32"),
        help="forward precision: auto = bf16 autocast on CUDA (fast), fp32 on CPU; fp32 on CUDA "
        "(TF32 off) reproduces the original fp32 code most closely",
    )
    p.add_argument("--no_progress", action="store_true", help="no progress bar")


def _add_compare(subparsers) -> None:
    p = subparsers.add_parser(
        "compare",
        help="PNG grid: each image, then each store's map over it (the paper's Figure 4)",
        description="One row per image: the image, then each store's 14x14 map upsampled and "
        "overlaid on it.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--stores", nargs="+", required=True, help="map stores (.zarr / .h5), one column each"
    )
    p.add_argument("--images", required=True, help="image root the stores' keys are relative to")
    p.add_argument(
        "--keys",
        nargs="*",
        default=None,
        help="image keys, one row each (default: --num keys spread over the stores)",
    )
    p.add_argument("--num", type=int, default=6, help="rows when --keys is not given")
    p.add_argument("-o", "--out", required=True, help="output .png")
    p.add_argument("--alpha", type=float, default=0.5, help="overlay opacity")
    p.add_argument("--cmap", default="jet", help="matplotlib colormap of the maps")


def _generate_config(args):
    from attgmae.pipelines.generate import GenerateConfig

    methods = tuple(m.strip() for m in args.methods.split(",") if m.strip())
    return GenerateConfig(
        images_root=args.images_root,
        out_dir=args.out,
        methods=methods,
        fmt=args.format,
        file_list=args.file_list,
        dino_weights=args.dino_weights,
        resnet_weights=args.resnet_weights,
        random_weights=args.random_weights,
        device=args.device,
        batch_size=args.batch_size,
        num_workers=args.num_workers,
        overwrite=args.overwrite,
        seed=args.seed,
        dino_heads=args.dino_heads,
        tokencut_tau=args.tokencut_tau,
        tokencut_eps=args.tokencut_eps,
        tokencut_map=args.tokencut_map,
        tokencut_workers=args.tokencut_workers,
        cam_layer=args.cam_layer,
        cam_target=args.cam_target,
        cam_method=args.cam_method,
        chunk_rows=args.chunk_rows,
        shard_rows=args.shard_rows,
        progress=not args.no_progress,
        precision=args.precision,
    )


def run(args) -> int:
    """Dispatch ``generate`` / ``compare``; returns the exit code (CliError for bad input)."""
    if args.command == "generate":
        from attgmae.pipelines.generate import GenerateInputError, run_generate

        try:
            return run_generate(_generate_config(args)).exit_code
        except GenerateInputError as err:
            raise CliError(str(err)) from None
    if args.command == "compare":
        from attgmae.pipelines.compare import CompareInputError, write_compare_grid

        try:
            path = write_compare_grid(
                args.stores,
                args.images,
                args.out,
                keys=args.keys,
                num=args.num,
                alpha=args.alpha,
                cmap=args.cmap,
            )
        except CompareInputError as err:
            raise CliError(str(err)) from None
        print(f"wrote {path}")
        return 0
    raise CliError(f"maps_generate cannot run {args.command!r}")
