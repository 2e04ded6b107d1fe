"""Semantic-segmentation sets as distributed: ADE20k, NYUv2 (as MultiMAE prepares it), and a
plain ``folder`` layout. Taskonomy: ``attgmae.data.dense_taskonomy``.

Layouts (``root`` is ``--data_path``; ``split`` is ``train`` or ``val``):

- ``ade20k``: ``root/ADEChallengeData2016/`` (or ``root`` itself) with
  ``images/{training,validation}/*.jpg`` and ``annotations/{training,validation}/<stem>.png``:
  150 classes, label 0 ("other") ignored and labels 1..150 -> 0..149 (reduce-zero-label, as
  MultiMAE's ``seg_reduce_zero_label: True``); names from ``objectInfo150.txt`` when present.
- ``nyuv2``: ``root/{train,test}/rgb/data/NNNN.png`` and ``root/{train,test}/semseg/data/
  NNNN.png`` as MultiMAE's ``tools/prepare_nyuv2.py`` writes them (palette PNGs of the 40-class
  mapping, 0 = unlabelled); 40 classes, reduce-zero-label as ADE20k (MultiMAE's NYU config).
  ``val`` reads ``test`` (MultiMAE evaluates NYUv2 on its test split).
- ``folder``: images anywhere under ``root/<split>/`` (ImageFolder works) and, for each, a PNG
  label map at the same relative path under ``root/labels/<split>/`` (suffix ``.png``): labels
  0..C-1, 255 ignored. C from ``root/classes.txt`` (one name a line, line i = label i) or
  ``num_classes``. The built-in example set (``attg-maps make-example``) is in this layout.

Label maps are read as integers exactly (PIL modes L, P, I;16, I: palette indices, not
colours); an RGB label file, a value that is not a class, an image and label map of different
sizes, an unreadable file: each is an ``InputError`` naming the file (no sample is skipped).
A ``root/classes.txt`` overrides the class names of any layout.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from attgmae.core.errors import InputError
from attgmae.core.listing import list_images
from attgmae.data.dense_transforms import IGNORE_INDEX, SegmentationTransform
from attgmae.data.images import ImageDecodeError, decode_rgb

SEGMENTATION_DATASETS = ("ade20k", "nyuv2", "folder")
ADE20K_CLASSES = 150
NYUV2_CLASSES = 40
LABEL_MODES = ("L", "P", "I;16", "I;16B", "I")  # single-channel integer PNG modes


def read_label_map(path) -> np.ndarray:
    """A label PNG as integers [H, W] exactly as stored (palette indices for mode P).
    ImageDecodeError (an InputError) naming the file when unreadable or not single-channel."""
    path = Path(path)
    try:
        with Image.open(path) as img:
            img.load()
            if img.mode not in LABEL_MODES:
                raise ImageDecodeError(
                    path,
                    f"a label map must be a single-channel PNG of class indices (mode "
                    f"L, P or I;16), found mode {img.mode}",
                )
            return np.array(img)
    except ImageDecodeError:
        raise
    except (OSError, SyntaxError, ValueError) as err:
        raise ImageDecodeError(path, f"cannot read label map ({err})") from None


def to_train_ids(
    label: np.ndarray, num_classes: int, reduce_zero_label: bool, path=""
) -> np.ndarray:
    """Stored labels [H, W] -> uint8 training ids: 0..C-1, IGNORE_INDEX (255) ignored.

    ``reduce_zero_label`` (ADE20k, NYUv2): 0 -> ignored, v -> v - 1 (mmsegmentation's rule:
    a stored 255 stays ignored). Any other value outside the classes is an InputError naming
    ``path`` (a wrong ``num_classes`` or an unmapped label).
    """
    label = label.astype(np.int64)
    if reduce_zero_label:
        ids = np.where((label == 0) | (label == IGNORE_INDEX), IGNORE_INDEX, label - 1)
    else:
        ids = label
    bad = (ids != IGNORE_INDEX) & ((ids < 0) | (ids >= num_classes))
    if bad.any():
        value = int(label[bad][0])
        rule = "1..C stored, 0 ignored" if reduce_zero_label else "0..C-1, 255 ignored"
        raise InputError(
            f"{path}: label value {value} is not one of the {num_classes} classes ({rule}); "
            f"check the dataset or --num_classes"
        )
    return ids.astype(np.uint8)


@dataclass
class SegmentationSplit:
    """One split of a segmentation set: matched image and label files, and how to read them."""

    dataset: str  # "ade20k" | "nyuv2" | "folder"
    split: str
    keys: list[str]  # image paths relative to the split's image folder (names in logs, PNGs)
    image_paths: list[Path]
    label_paths: list[Path]
    class_names: tuple[str, ...]
    reduce_zero_label: bool

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self.image_paths)


def _read_class_names(path: Path) -> tuple[str, ...]:
    names = tuple(line.strip() for line in path.read_text().splitlines() if line.strip())
    if not names:
        raise InputError(f"{path}: no class names")
    return names


def _ade_names(ade_root: Path) -> tuple[str, ...]:
    """Names from ADE20k's objectInfo150.txt (tab-separated, the name last), else generic."""
    info = ade_root / "objectInfo150.txt"
    if info.is_file():
        rows = [line.split("\t") for line in info.read_text().splitlines()[1:] if line.strip()]
        names = tuple(row[-1].split(";")[0].strip() for row in rows)
        if len(names) == ADE20K_CLASSES:
            return names
    return tuple(f"class_{i}" for i in range(ADE20K_CLASSES))


def _pair_by_stem(image_dir: Path, label_dir: Path, what: str):
    """Images under ``image_dir`` and their ``<same relative path>.png`` under ``label_dir``."""
    if not image_dir.is_dir():
        raise InputError(f"{image_dir} is not a directory: expected the {what}")
    keys = list_images(image_dir)
    if not keys:
        raise InputError(f"no images under {image_dir} ({what})")
    labels = [label_dir / Path(key).with_suffix(".png") for key in keys]
    missing = [str(p) for p in labels if not p.is_file()]
    if missing:
        raise InputError(
            f"{len(missing)} of {len(keys)} images under {image_dir} have no label map "
            f"({what}); first missing: {', '.join(missing[:3])}"
        )
    return keys, [image_dir / key for key in keys], labels


def ade20k_split(root, split: str) -> SegmentationSplit:
    root = Path(root)
    ade = root / "ADEChallengeData2016" if (root / "ADEChallengeData2016").is_dir() else root
    folder = {"train": "training", "val": "validation"}.get(split, split)
    keys, images, labels = _pair_by_stem(
        ade / "images" / folder,
        ade / "annotations" / folder,
        "ADE20k: images/<split>/*.jpg with annotations/<split>/<stem>.png",
    )
    return SegmentationSplit("ade20k", split, keys, images, labels, _ade_names(ade), True)


def nyuv2_split(root, split: str) -> SegmentationSplit:
    folder = Path(root) / ("test" if split == "val" else split)
    keys, images, labels = _pair_by_stem(
        folder / "rgb", folder / "semseg", "NYUv2 as MultiMAE's prepare_nyuv2.py writes it"
    )
    names = tuple(f"class_{i}" for i in range(NYUV2_CLASSES))
    return SegmentationSplit("nyuv2", split, keys, images, labels, names, True)


def folder_split(
    root, split: str, num_classes: int | None = None, reduce_zero_label: bool = False
) -> SegmentationSplit:
    root = Path(root)
    if (root / "classes.txt").is_file():
        names = _read_class_names(root / "classes.txt")
        if num_classes is not None and num_classes != len(names):
            raise InputError(
                f"--num_classes {num_classes} but {root / 'classes.txt'} names {len(names)}"
            )
    elif num_classes is not None:
        names = tuple(f"class_{i}" for i in range(num_classes))
    else:
        raise InputError(f"{root}: no classes.txt; give the number of classes (--num_classes)")
    keys, images, labels = _pair_by_stem(
        root / split,
        root / "labels" / split,
        "folder layout: <root>/<split>/... with <root>/labels/<split>/<same path>.png",
    )
    return SegmentationSplit("folder", split, keys, images, labels, names, reduce_zero_label)


def segmentation_split(
    dataset: str,
    root,
    split: str,
    num_classes: int | None = None,
    reduce_zero_label: bool | None = None,
) -> SegmentationSplit:
    """The ``split`` (train / val) of ``dataset`` under ``root``; InputError when the layout
    does not fit. ``num_classes`` and ``reduce_zero_label`` apply to ``folder``."""
    if not Path(root).is_dir():
        raise InputError(f"--data_path {root} is not a directory")
    if dataset == "ade20k":
        found = ade20k_split(root, split)
    elif dataset == "nyuv2":
        found = nyuv2_split(root, split)
    elif dataset == "folder":
        found = folder_split(root, split, num_classes, bool(reduce_zero_label))
    else:
        raise InputError(f"--dataset must be one of {', '.join(SEGMENTATION_DATASETS)}")
    if dataset != "folder" and (Path(root) / "classes.txt").is_file():
        found.class_names = _read_class_names(Path(root) / "classes.txt")
    return found


def global_rng() -> np.random.Generator:
    """A generator seeded from numpy's global RNG: what ``attgmae.engine.SeededSamples`` seeds
    from (seed, epoch, index) before each sample, so the sample is the same in any worker, rank
    or resumed run."""
    return np.random.default_rng(np.random.randint(0, 2**32, size=4, dtype=np.uint64))


class SegmentationDataset(Dataset):
    """``dataset[index]`` -> {"image": uint8 [3, S, S], "label": int64 [S, S] (0..C-1, 255
    ignored), "index": int}.

    ``sample(index, rng)`` is a pure function of the index and the generator; ``dataset[index]``
    draws the generator from numpy's global RNG (``global_rng``): wrap the dataset in
    ``attgmae.engine.SeededSamples`` to seed it per (seed, epoch, index).
    """

    def __init__(self, split: SegmentationSplit, transform: SegmentationTransform):
        if split.num_classes >= IGNORE_INDEX:
            raise InputError(f"at most {IGNORE_INDEX - 1} classes, got {split.num_classes}")
        self.split = split
        self.transform = transform

    def __len__(self) -> int:
        return len(self.split)

    def key(self, index: int) -> str:
        """The image's path under its split folder (for logs and the PNG of predictions)."""
        return self.split.keys[index]

    def read(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """(image uint8 [H, W, 3], training ids uint8 [H, W]) of sample ``index``, untransformed."""
        image_path, label_path = self.split.image_paths[index], self.split.label_paths[index]
        image = decode_rgb(image_path)
        label = read_label_map(label_path)
        if label.shape != image.shape[:2]:
            raise InputError(
                f"{label_path}: label map is {label.shape[1]}x{label.shape[0]} but its image "
                f"{image_path} is {image.shape[1]}x{image.shape[0]}"
            )
        ids = to_train_ids(label, self.split.num_classes, self.split.reduce_zero_label, label_path)
        return image, ids

    def sample(self, index: int, rng: np.random.Generator) -> dict:
        image, ids = self.read(index)
        image, label = self.transform(image, ids, rng)
        return {"image": image, "label": label, "index": index}

    def __getitem__(self, index: int) -> dict:
        return self.sample(index, global_rng())
