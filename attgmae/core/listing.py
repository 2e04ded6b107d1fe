"""Listing an image set: the sorted keys (paths relative to its root) that name every image.

Keys are what the map store, stage 2 and evaluation join on, so they are made one way only:
'/'-separated, relative to the root, sorted. The first folder of a key is its class.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np

from attgmae.core.errors import InputError

# torchvision ImageFolder's (the evaluations' reference datasets are read by it), all PIL-readable
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


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


class ListingWarning(UserWarning):
    """Something in an image folder was passed over (a link back into it, a skipped folder)."""


def _unreadable(path, err: OSError, skipped: list | None) -> None:
    """An entry that cannot be read: an error naming it, or with ``skipped`` a recorded skip."""
    if skipped is None:
        raise InputError(
            f"{path}: cannot be read ({err.strerror or err}); its images would be left out "
            "silently. Fix its permissions, or pass --skip_unreadable to leave it out (listed "
            "in the run's record)"
        )
    skipped.append(str(path))
    warnings.warn(f"{path}: cannot be read ({err.strerror or err}); left out", ListingWarning,
                  stacklevel=3)  # fmt: skip


def _walk(root: Path, skipped: list | None):
    """(folder relative to root, image file names) of every folder under ``root``, sorted.

    Links to folders are followed once per real folder: a link back to a folder already seen
    (a loop such as ``train/a/up -> ..``) is named in a warning and not followed again.
    """
    seen = {(root.stat().st_dev, root.stat().st_ino)}
    stack = [(root, "")]
    while stack:
        folder, rel = stack.pop()
        try:
            with os.scandir(folder) as listing:
                entries = sorted(listing, key=lambda entry: entry.name)
        except OSError as err:
            _unreadable(folder, err, skipped)
            continue
        names, subfolders = [], []
        for entry in entries:
            if entry.name.startswith("."):
                continue
            try:
                is_dir = entry.is_dir()  # follows links
                if is_dir:
                    info = entry.stat()
            except OSError as err:  # a dangling link, or no right to look
                _unreadable(entry.path, err, skipped)
                continue
            if is_dir:
                real = (info.st_dev, info.st_ino)
                if real in seen:
                    warnings.warn(
                        f"{entry.path}: links to a folder already listed "
                        f"({os.path.realpath(entry.path)}); not followed again",
                        ListingWarning,
                        stacklevel=3,
                    )
                    continue
                seen.add(real)
                subfolders.append((Path(entry.path), f"{rel}{entry.name}/"))
            elif is_image_name(entry.name):
                if not os.access(entry.path, os.R_OK):
                    _unreadable(entry.path, PermissionError(13, "permission denied"), skipped)
                    continue
                names.append(entry.name)
        yield rel, names
        stack.extend(reversed(subfolders))


def list_images(root, file_list=None, skipped: list | None = None) -> list[str]:
    """Sorted keys of every image under ``root`` (any depth, links to folders followed once).

    With ``file_list`` (a text file, one path per line: relative to ``root`` as ``find .``
    writes them, or absolute under ``root``) only those are taken; a listed file that does not
    exist, or lies outside ``root``, is an error naming it. A folder or image that cannot be
    read is an error naming it, unless ``skipped`` (a list) is given: it is then left out and
    its path appended there.
    """
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"image root {root} is not a directory")
    if file_list is not None:
        return _listed_keys(root, file_list)
    return sorted(rel + name for rel, names in _walk(root, skipped) for name in names)


def split_root(data_root, split: str) -> Path:
    """``data_root/split``, an error naming it when it is not a folder."""
    root = Path(data_root) / split
    if not root.is_dir():
        raise InputError(
            f"{root} not found: --data_path must hold {split}/<class>/<image> (the ImageFolder "
            "layout of ImageNet, as official MAE reads it)"
        )
    return root


def list_split(data_root, split: str, skipped: list | None = None) -> tuple[Path, list[str]]:
    """``data_root/split`` (ImageFolder layout: ``<split>/<class>/<image>``) and its sorted keys;
    InputError naming the folder when it is missing or holds no image (``skipped``: as for
    ``list_images``)."""
    root = split_root(data_root, split)
    keys = list_images(root, skipped=skipped)
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
