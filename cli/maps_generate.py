"""`attg-maps generate` and `attg-maps compare`: parse flags, build a config, call the pipeline.

``cli/maps.py`` adds these subcommands with ``add_parsers(subparsers)`` and dispatches
``args.command in ("generate", "compare")`` to ``run(args)``. The per-method flags of
``generate`` (``--dino_heads``, ``--tokencut_threshold``, ...) come from the map registry.
"""

from __future__ import annotations

from attgmae.cli._args import config_from_args
from attgmae.core.constants import DEFAULT_TIMEOUT_MIN, TRUST_FLAG
from attgmae.maps.registry import BACKBONES, DEFAULT_METHODS, METHODS

GENERATE_SUMMARY = "dino / tokencut / gradcam / random maps of an image set, one store per method"
GENERATE_DESCRIPTION = (
    "Compute guidance maps for every image under IMAGES_ROOT (or --file_list): "
    "DIR/<method>.zarr (or .h5) per method, keys relative to IMAGES_ROOT."
)
GENERATE_HELP = """\
exit codes: 0 every image mapped; 3 some images failed to decode (the stores are complete; the
failed keys and reasons are listed at the end, in the store attributes and by `attg-maps verify`);
2 bad input. Rerunning the same command after a crash or kill resumes; torchrun/srun split the
work by whole shards (docs/generate.md)."""


def add_parsers(subparsers) -> None:
    _add_generate(subparsers)
    _add_compare(subparsers)


def _param_dest(method: str, name: str) -> str:
    return f"param:{method}:{name}"


def _add_method_flags(p) -> None:
    """One group of flags per registered method, from its parameters."""
    for method in METHODS.values():
        group = p.add_argument_group(f"{method.name} maps", method.summary)
        for param in method.params:
            group.add_argument(
                f"--{param.flag}",
                *(f"--{alias}" for alias in param.aliases),
                dest=_param_dest(method.name, param.name),
                type=param.type,
                default=param.default,
                choices=param.choices,
                metavar=None if param.choices else param.name.upper(),
                help=param.help,
            )


def _add_generate(subparsers) -> None:
    p = subparsers.add_parser(
        "generate", help=GENERATE_SUMMARY, description=GENERATE_DESCRIPTION, epilog=GENERATE_HELP
    )
    p.add_argument("images_root", help="image folder (ImageNet layout: labels from class folders)")
    p.add_argument("--out", required=True, help="output folder for <method>.zarr / .h5")
    p.add_argument("--methods", default=",".join(DEFAULT_METHODS), help="comma-separated methods")
    p.add_argument("--format", default="zarr", choices=("zarr", "h5"), help="store format")
    p.add_argument(
        "--file_list", default=None, help="text file of image paths relative to the root"
    )
    for backbone in BACKBONES.values():
        p.add_argument(f"--{backbone.weights_flag}", default=None, help=backbone.weights_help)
    p.add_argument(
        "--random_weights",
        action="store_true",
        help="seeded random networks (tests and demos only; recorded in the stores)",
    )
    p.add_argument(
        TRUST_FLAG,
        action="store_true",
        help="weights files may hold Python objects beyond tensors: unpickle them in full "
        "(only for files from a source you trust)",
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument(
        "--precision",
        default="auto",
        choices=("auto", "bf16", "fp32"),
        help="forward precision: auto = bf16 autocast on CUDA (fast), fp32 on CPU; fp32 on CUDA "
        "(TF32 off) reproduces the original fp32 code most closely",
    )
    p.add_argument(
        "--batch_size",
        type=int,
        default=None,
        help="images per batch (default: 256 on CUDA, 64 on CPU)",
    )
    p.add_argument(
        "--num_workers",
        type=int,
        default=-1,
        help="data-loader processes that decode and resize images (-1: from the cores each "
        "rank has and the free /dev/shm; 0: in the main process)",
    )
    p.add_argument(
        "--tokencut_workers",
        type=int,
        default=-1,
        help="eigensolve processes (-1: 0 on CPU; with CUDA the share of each rank's cores "
        "that the measured costs of decoding and eigensolving ask for)",
    )
    p.add_argument(
        "--tokencut_solver",
        default="auto",
        choices=("auto", "cpu", "gpu"),
        help="with CUDA, where TokenCut's eigensolves run: cpu (a process pool), gpu (batched "
        "on the device, every core left to decoding), auto (the GPU when it measures at least "
        "twice as fast as the planned pool)",
    )
    p.add_argument(
        "--decode",
        default="cpu",
        choices=("cpu", "gpu"),
        help="where images are decoded: cpu (the loader workers, libjpeg-turbo) or gpu (with "
        "CUDA: nvjpeg, then the resize on the device too; the workers only read files; pixels "
        "differ slightly, recorded in the stores' parameters)",
    )
    p.add_argument(
        "--resize",
        default="auto",
        choices=("auto", "cpu", "gpu"),
        help="where images decoded by the workers are resized: cpu (the workers, within 1 grey "
        "level of PIL) or gpu (the device, PIL's pixels exactly; the workers only decode); "
        "auto: gpu on CUDA, cpu otherwise (recorded in the stores' parameters)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace existing complete stores")
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
    p.add_argument("--no_progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--skip_unreadable",
        action="store_true",
        help="leave out folders and images that cannot be read (listed at the end and in "
        "generate_run.json) instead of stopping",
    )
    p.add_argument(
        "--dist_timeout_min",
        type=float,
        default=DEFAULT_TIMEOUT_MIN,
        help="minutes a torchrun rank waits for the others (rank 0 finalizes the stores alone)",
    )
    _add_method_flags(p)


def _add_compare(subparsers) -> None:
    p = subparsers.add_parser(
        "compare",
        help="PNG grid: each image, then each store's map beside it (the paper's Figure 4)",
        description="One row per image: the image, then each store's 14x14 map (its patch grid, "
        "viridis, one 0..1 scale), on the image with --overlay.",
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
    p.add_argument("--overlay", action="store_true", help="draw the maps on the images")
    p.add_argument("--alpha", type=float, default=0.6, help="map opacity with --overlay")
    p.add_argument("--cmap", default="viridis", help="matplotlib colormap of the maps")


def generate_config(args):
    """The flags as a GenerateConfig: the requested methods' parameters under their registry
    names, the weights files by backbone."""
    from attgmae.pipelines.generate import GenerateConfig  # see run()

    methods = tuple(m.strip() for m in args.methods.split(",") if m.strip())
    flags = vars(args)
    params = {
        m: {p.name: flags[_param_dest(m, p.name)] for p in METHODS[m].params}
        for m in methods
        if m in METHODS
    }
    weights = {name: flags[b.weights_flag] for name, b in BACKBONES.items()}
    return config_from_args(
        GenerateConfig,
        args,
        out_dir=args.out,
        methods=methods,
        params=params,
        fmt=args.format,
        weights={name: path for name, path in weights.items() if path is not None},
        progress=not args.no_progress,
    )


def run(args) -> int:
    """Dispatch ``generate`` / ``compare``; returns the exit code (InputError for bad input).

    The pipelines are imported here, not at the top: they pull in torch and timm (seconds), and
    every ``attg-maps`` command, ``verify`` included, builds this module's parsers.
    """
    if args.command == "generate":
        from attgmae.pipelines.generate import run_generate

        return run_generate(generate_config(args)).exit_code
    from attgmae.pipelines.compare import write_compare_grid

    path = write_compare_grid(
        args.stores,
        args.images,
        args.out,
        keys=args.keys,
        num=args.num,
        alpha=args.alpha,
        cmap=args.cmap,
        overlay=args.overlay,
    )
    print(f"wrote {path}")
    return 0
