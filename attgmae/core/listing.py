"""Listing an image set: the sorted keys (paths relative to its root) that name every image.

Keys are what the map store, stage 2 and evaluation join on, so they are made one way only:
'/'-separated, relative to the root, sorted. The first folder of a key is its class.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from attgmae.core.errors import InputError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def is_image_name(name: str) -> bool:
    """An image file we read (by extension; hidden files are not images)."""
    return name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith(".")


def _key_under_root(listed: str, root: Path, file_list) -> str:
    """A --file_list line -> the key: '/'-separated, relative to ``root``, normalized, so that
    './n01440764/a.JPEG' and '/data/train/n01440764/a.JPEG' both become 'n01440764/a.JPEG' (the
    first folder is the label)."""
    if os.path.isabs(listed):
        relative = os.path.relpath(os.path.abspath(listed), os.path.abspath(root))
    else:
        relative = os.path.normpath(listed)
    if relative == os.curdir or relative == os.pardir or relative.startswith(os.pardir + os.sep):
        raise InputError(f"{file_list}: listed image {listed} is not inside the image root {root}")
    return relative.replace(os.sep, "/")


def _listed_keys(root: Path, file_list) -> list[str]:
    keys = []
    for line in Path(file_list).read_text().splitlines():
        if not line.strip() or line.strip().startswith("#"):
            continue
        key = _key_under_root(line.strip(), root, file_list)
        if not (root / key).is_file():
            raise InputError(f"{file_list}: listed image {key} not found under {root}")
        keys.append(key)
    if len(set(keys)) != len(keys):
        raise InputError(f"{file_list}: lists some images twice")
    return sorted(keys)


def list_images(root, file_list=None) -> list[str]:
    """Sorted keys of every image under ``root`` (any depth, links to folders followed).

    With ``file_list`` (a text file, one path per line: relative to ``root`` as ``find .``
    writes them, or absolute under ``root``) only those are taken; a listed file that does not
    exist, or lies outside ``root``, is an error naming it.
    """
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"image root {root} is not a directory")
    if file_list is not None:
        return _listed_keys(root, file_list)
    keys = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames.sort()
        rel = os.path.relpath(dirpath, root)
        for name in filenames:
            if is_image_name(name):
                key = name if rel == "." else f"{rel}/{name}"
                keys.append(key.replace(os.sep, "/"))
    return sorted(keys)


def split_root(data_root, split: str) -> Path:
    """``data_root/split``, an error naming it when it is not a folder."""
    root = Path(data_root) / split
    if not root.is_dir():
        raise InputError(
            f"{root} not found: --data_path must hold {split}/<class>/<image> (the ImageFolder "
            "layout of ImageNet, as official MAE reads it)"
        )
    return root


def list_split(data_root, split: str) -> tuple[Path, list[str]]:
    """``data_root/split`` (ImageFolder layout: ``<split>/<class>/<image>``) and its sorted keys;
    InputError naming the folder when it is missing or holds no image."""
    root = split_root(data_root, split)
    keys = list_images(root)
    if not keys:
        raise InputError(f"no images under {root} (extensions {' '.join(IMAGE_EXTENSIONS)})")
    return root, keys


def folder_labels(keys) -> tuple[list[str], np.ndarray]:
    """Class names (sorted first-level folders) and int64 labels [N], -1 for keys with no folder."""
    folders = [k.split("/", 1)[0] if "/" in k else None for k in keys]
    class_names = sorted({f for f in folders if f is not None})
    index = {name: i for i, name in enumerate(class_names)}
    labels = np.array([index[f] if f is not None else -1 for f in folders], dtype=np.int64)
    return class_names, labels
