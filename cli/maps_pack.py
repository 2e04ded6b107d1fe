"""`attg-maps pack`: an image folder and its map stores -> tar shards (webdataset), one sample per
image with its maps; ``cli/maps.py`` adds it with ``add_parser(subparsers)``."""

from __future__ import annotations

from attgmae.cli._args import config_from_args


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "pack",
        help="tar shards (webdataset) of an image folder, each image with its maps",
        description="One sample per image, in key order: the image file's bytes, its 14x14 map "
        "from each store (named by method), key, label and sha256 checksums; an index "
        "<prefix>index.json beside the shards. A rerun continues a killed pack.",
    )
    p.add_argument("images", help="image folder (ImageNet layout: labels from class folders)")
    p.add_argument("--maps", nargs="+", required=True, help="map stores, one map each per image")
    p.add_argument("--out", required=True, help="shard files, e.g. 'shards/train-%%06d.tar'")
    p.add_argument("--shard_size", type=int, default=1000, help="samples per shard, at most")
    p.add_argument("--missing_maps", choices=("error", "uniform"), default="error",
                   help="images without a map: stop, or pack a zero map (uniform weights)")
    p.add_argument("--changed_images", choices=("error", "uniform", "accept"), default="error",
                   help="images replaced since their maps were computed: stop, pack a zero "
                        "map, or pack the old map")  # fmt: skip
    p.add_argument("--overwrite", action="store_true", help="replace shards of another pack")


def run(args) -> int:
    from attgmae.pipelines.pack import PackConfig, run_pack  # webdataset imports torch

    run_pack(config_from_args(PackConfig, args, maps=tuple(args.maps)))
    return 0
