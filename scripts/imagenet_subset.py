"""Build a small labelled ImageFolder from a large one: the set behind `attg-train --knn_data`.

    python scripts/imagenet_subset.py $IN1K $IN1K_SMALL            # 100 classes x (10 + 10)
    python scripts/imagenet_subset.py $IN1K $IN1K_SMALL --classes 1000 --train_per_class 5

Takes `--classes` class folders spread evenly over the sorted class list of SRC/train and, from
each, `--train_per_class` images of SRC/train/<class> and `--val_per_class` of SRC/val/<class>
(seeded choice, listed in sorted order). DST/train and DST/val hold symbolic links to the
originals (`--copy` copies instead, for a copy on a local disk). DST is built beside itself as
DST.partial and renamed into place when whole; an existing DST needs --overwrite. A class with
fewer images than asked gives all it has, with a warning line.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

import numpy as np

from attgmae.core.errors import InputError
from attgmae.core.listing import list_images, split_root


def spread_classes(classes: list[str], count: int) -> list[str]:
    """``count`` classes spread evenly over the sorted list (all of them when count >= len)."""
    if count >= len(classes):
        return list(classes)
    picks = np.linspace(0, len(classes) - 1, count).round().astype(int)
    return [classes[i] for i in picks]


def pick_images(keys: list[str], per_class: int, seed: int) -> tuple[list[str], list[str]]:
    """(chosen keys in sorted order, classes that had fewer than ``per_class``)."""
    by_class: dict[str, list[str]] = {}
    for key in keys:
        by_class.setdefault(key.split("/", 1)[0], []).append(key)
    rng = np.random.default_rng(seed)
    chosen, short = [], []
    for name in sorted(by_class):
        members = by_class[name]
        if len(members) < per_class:
            short.append(name)
        take = rng.choice(len(members), size=min(per_class, len(members)), replace=False)
        chosen.extend(members[i] for i in sorted(take))
    return chosen, short


def build_subset(src, dst, classes=100, train_per_class=10, val_per_class=10, seed=0,
                 copy=False, overwrite=False, log=print) -> dict:  # fmt: skip
    """Write the subset; returns {"classes", "train", "val"} image counts."""
    src, dst = Path(src), Path(dst)
    if dst.exists() and not overwrite:
        raise InputError(f"{dst} exists; pass --overwrite to replace it")
    train_root, val_root = split_root(src, "train"), split_root(src, "val")
    all_classes = sorted(p.name for p in train_root.iterdir() if p.is_dir())
    if not all_classes:
        raise InputError(f"{train_root} has no class folders (expected train/<class>/<image>)")
    chosen = spread_classes(all_classes, classes)
    partial = dst.with_name(dst.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    counts = {"classes": len(chosen)}
    for split, root, per_class in (("train", train_root, train_per_class),
                                   ("val", val_root, val_per_class)):  # fmt: skip
        keys = [k for k in list_images(root) if k.split("/", 1)[0] in set(chosen)]
        picked, short = pick_images(keys, per_class, seed)
        for name in short:
            log(f"warning: {split}/{name} has fewer than {per_class} images; took all")
        for key in picked:
            target = partial / split / key
            target.parent.mkdir(parents=True, exist_ok=True)
            original = (root / key).resolve()
            if copy:
                shutil.copy2(original, target)
            else:
                os.symlink(original, target)
        counts[split] = len(picked)
    if dst.exists():
        shutil.rmtree(dst)
    partial.rename(dst)
    return counts


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("src", help="ImageFolder root with train/ and val/ (e.g. $IN1K)")
    p.add_argument("dst", help="the subset's root (e.g. $IN1K_SMALL)")
    p.add_argument("--classes", type=int, default=100)
    p.add_argument("--train_per_class", type=int, default=10)
    p.add_argument("--val_per_class", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--copy", action="store_true", help="copy the images instead of linking")
    p.add_argument("--overwrite", action="store_true", help="replace an existing DST")
    args = p.parse_args(argv)
    try:
        counts = build_subset(args.src, args.dst, args.classes, args.train_per_class,
                              args.val_per_class, args.seed, args.copy, args.overwrite)  # fmt: skip
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"{args.dst}: {counts['classes']} classes, {counts['train']} train and "
          f"{counts['val']} val images")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
