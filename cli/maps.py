"""`attg-maps`: guidance-map stores — generate, import, export, verify, inspect, show, compare,
pack (tar shards of the images with their maps)."""

from __future__ import annotations

import json
import sys

from attgmae.cli import maps_generate, maps_pack
from attgmae.cli._args import add_subparsers, make_parser, run_main

# Each command imports what it runs (numpy, zarr, h5py, OpenCV, torch for some): building the
# parser stays light, so --help and a bad flag answer at once.


def build_parser():
    parser = make_parser("attg-maps", __doc__)
    sub = add_subparsers(parser)

    p = sub.add_parser("import", help="import a published map archive into a store")
    p.add_argument(
        "src",
        help="folder of .npy/.pt/.png maps, .npz, .pt/.pth dict, .h5, .zarr, "
        ".zip or .tar(.gz) of any of them",
    )
    p.add_argument("out", help="new store: *.zarr (the usual format) or *.h5")
    p.add_argument("--images", help="image root: match map files to images by stem")
    p.add_argument(
        "--method", help="method name recorded in the store (default: the source's, or 'imported')"
    )
    p.add_argument("--resize", action="store_true", help="area-resample maps that are not 14x14")
    p.add_argument(
        "--no_normalize",
        action="store_true",
        help="keep values as they are (they must lie in [0, 1])",
    )
    p.add_argument("--maps_name", help="maps array name in a foreign HDF5/zarr store")
    p.add_argument("--keys_name", help="keys array name in a foreign HDF5/zarr store")
    p.add_argument("--overwrite", action="store_true", help="replace an existing store")

    p = sub.add_parser("export", help="one publishable file (.zarr.zip or .h5) + OUT.sha256")
    p.add_argument("store", help="a store: .zarr, .zarr.zip or .h5")
    p.add_argument("out", help="*.zarr.zip or *.h5 (not the store itself)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")

    p = sub.add_parser("verify", help="check a store; exit 0 only when all is well")
    p.add_argument("store", help="the store to check: .zarr, .zarr.zip or .h5")
    p.add_argument("--images", help="image root: report images without map and maps without image")
    p.add_argument(
        "--file_list", help="with --images: only these images (one relative path a line)"
    )

    p = sub.add_parser(
        "inspect", help="method, parameters, model identity, count, value statistics"
    )
    p.add_argument("store", help="a store: .zarr, .zarr.zip or .h5")
    p.add_argument("--json", action="store_true", help="print JSON")

    p = sub.add_parser(
        "show",
        help="the paper's Figures 1-3: a store's maps and the loss weights they give, per image",
        description="One --tau: image | M_norm | M_norm/tau | exp(M_norm/tau) (Fig. 1, on 0 .. "
        "exp(1/tau)). Several: the weights exp(M_norm/tau) at each (Fig. 2, on the paper's 1 .. "
        "4.2, the range at tau 0.7). --schedule: the weights at five epochs of a run's own tau "
        "schedule (Fig. 3, on Fig. 2's scale, raised if the schedule goes below 0.7). Maps as "
        "their 14x14 patch grids, viridis, one scale per figure (--range fixes another).",
    )
    p.add_argument("store", help="a store: .zarr, .zarr.zip or .h5")
    p.add_argument("--images", required=True, help="image root the store's keys are relative to")
    p.add_argument("--keys", nargs="+", required=True, help="keys to show (one row each)")
    p.add_argument("--tau", type=float, nargs="+", default=[0.75], help="one tau, or several")
    p.add_argument(
        "--schedule", default=None, help="a run's checkpoint or config.json: its tau schedule"
    )
    p.add_argument(
        "--range",
        dest="value_range",
        type=float,
        nargs=2,
        metavar=("LOW", "HIGH"),
        default=None,
        help="a fixed colour range for every panel, e.g. 1 4.2 for figures of several runs "
        "(default: the paper's per figure, see above)",
    )
    p.add_argument("--overlay", action="store_true", help="draw the maps on the images")
    p.add_argument("-o", "--out", required=True, help="output PNG")

    p = sub.add_parser("make-example", help="write the built-in example image set with true masks")
    p.add_argument("root", help="folder to write (train/, val/, masks/, labels/, classes.txt)")
    p.add_argument("--train_per_class", type=int, default=25, help="training images per class")
    p.add_argument("--val_per_class", type=int, default=10, help="validation images per class")
    p.add_argument("--seed", type=int, default=0, help="seed of the shapes, colours and textures")
    p.add_argument(
        "--taskonomy",
        action="store_true",
        help="write the synthetic Taskonomy-layout set instead (for attg-eval taskonomy)",
    )

    maps_generate.add_parsers(sub)
    maps_pack.add_parser(sub)
    return parser


def _import(args) -> int:
    from attgmae.store.importing import import_maps

    summary = import_maps(
        args.src,
        args.out,
        images=args.images,
        method=args.method,
        resize=args.resize,
        normalize=not args.no_normalize,
        maps_name=args.maps_name,
        keys_name=args.keys_name,
        overwrite=args.overwrite,
    )
    if summary["finished"]:
        print(
            f"{summary['out']}: an interrupted import of these {summary['count']} maps had "
            "finished writing; put it in place: nothing else to do"
        )
        return 0
    print(
        f"imported {summary['count']} maps ({summary['kind']}) into {summary['out']} "
        f"as method {summary['method']!r}"
    )
    return 0


def _export(args) -> int:
    from attgmae.store.exporting import export_store

    out, manifest = export_store(args.store, args.out, overwrite=args.overwrite)
    print(f"wrote {out} and {manifest}")
    return 0


def _verify(args) -> int:
    from attgmae.store.verify import verify_store

    report = verify_store(args.store, args.images, args.file_list)
    print(report.text())
    return 0 if report.ok else 1


def _inspect(args) -> int:
    from attgmae.store.verify import describe_store

    info = describe_store(args.store)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    for name, value in info.items():
        if isinstance(value, dict):
            value = (
                ", ".join(
                    f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in value.items()
                )
                or "-"
            )
        print(f"{name:>14}: {value}")
    return 0


def _show(args) -> int:
    from attgmae.pipelines.show import render_show  # matplotlib: only when drawing

    out = render_show(args.store, args.images, args.keys, args.tau, args.out, args.schedule,
                      args.overlay, args.value_range)  # fmt: skip
    print(f"wrote {out}")
    return 0


def _make_example(args) -> int:
    from attgmae.core.outputs import claim_output

    with claim_output(args.root, "make-example ROOT"):
        return _write_example(args)


def _write_example(args) -> int:
    from attgmae.data.example import write_example
    from attgmae.data.example_taskonomy import write_example_taskonomy

    if args.taskonomy:
        root = write_example_taskonomy(args.root, seed=args.seed)
        print(f"wrote the synthetic Taskonomy set to {root} (docs/dense.md: its layout)")
        return 0
    root = write_example(args.root, args.train_per_class, args.val_per_class, args.seed)
    print(f"wrote the example image set to {root} (train/, val/, masks/, labels/, classes.txt)")
    return 0


COMMANDS = {
    "import": _import,
    "export": _export,
    "verify": _verify,
    "inspect": _inspect,
    "show": _show,
    "make-example": _make_example,
    "pack": maps_pack.run,
}


def _main(argv) -> int:
    args = build_parser().parse_args(argv)
    return COMMANDS.get(args.command, maps_generate.run)(args)


def main(argv=None) -> int:
    return run_main(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
