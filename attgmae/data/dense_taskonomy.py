"""Taskonomy ("tiny" split) for dense regression, with MultiMAE's target normalizations.

Layout: one folder per building and task, files matched by name,
``point_<P>_view_<V>_domain_<task>.png``, either per building (``root/<building>/<task>/``, as
the per-building Taskonomy archives unpack) or per task (``root/<task>/<building>/``, as
MultiMAE's ``TaskonomyDataset`` reads it); ``root/rgb`` present means per task. Images are
8-bit RGB PNGs; every target is a single-channel 16-bit PNG.

Targets (MultiMAE ``utils/taskonomy/task_configs.py`` and ``transforms.py``), value v in
[0, 65535], x = v / 65535:

- ``depth_euclidean`` (also ``depth_zbuffer``): v is depth in 1/512 m; clamped to 8000 (15.6 m)
  and scaled to [0, 1]: min(v, 8000) / 8000. v = 65535 marks "no surface" (sky, holes).
- ``edge_texture``: min(x, 0.25) / 0.25 in [0, 1].
- ``edge_occlusion``: x, then a 3x3 Gaussian blur with sigma 1 (after resizing).
- ``keypoints2d``, ``keypoints3d``: x.

Valid mask (the L1 loss and its test score count only valid pixels, of every task): from a
``mask_valid`` folder when the set has one (nonzero = valid, MultiMAE's files), else from the
depth (v != 65535), else every pixel; then, as MultiMAE's ``make_valid_mask``, a pixel is valid
only if its whole aligned 4 x 4 block is (so edges of holes are dropped too).

Splits: ``root/splits/<split>.csv`` (``building,point,view`` rows, MultiMAE's format: copy its
``tiny_<split>.csv`` there to use exactly its images) when present, else the tiny split's
buildings: val and test as MultiMAE's CSVs list them, train = every other building found.
``max_images`` keeps the first N rows of a CSV (as MultiMAE), or a seeded random N otherwise.
"""

from __future__ import annotations

import csv
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import Dataset
from torchvision.transforms.v2 import functional as TF

from attgmae.core.errors import InputError
from attgmae.data.dense_datasets import read_label_map
from attgmae.data.dense_transforms import resize_image, resize_nearest
from attgmae.data.images import ImageDecodeError, decode_rgb

UINT16_MAX = 65535
DEPTH_INVALID = UINT16_MAX  # "no surface" in Taskonomy's depth PNGs
DEPTH_TASKS = ("depth_zbuffer", "depth_euclidean")  # either gives the valid mask
VALID_BLOCK = 4  # MultiMAE's make_valid_mask: max-pool size that erodes the valid mask
# Buildings of the tiny split's val and test sets (MultiMAE utils/taskonomy/splits/
# tiny_val.csv and tiny_test.csv).
TINY_VAL_BUILDINGS = ("collierville", "corozal", "darden", "markleeville")
TINY_TEST_BUILDINGS = ("ihlen", "mcdade", "muleshoe", "noxapater", "uvalda")
_NAME = re.compile(r"point_(\d+)_view_(\d+)_domain_(\w+)\.png$")


@dataclass(frozen=True)
class TaskonomyTask:
    """How one task's 16-bit target becomes the regression target in [0, 1]."""

    name: str  # folder and file domain name
    clamp: float | None  # on x = v / 65535: min(x, clamp) / clamp
    blur: bool  # 3x3 Gaussian, sigma 1, after resizing
    meaning: str


TASKONOMY_TASKS = {
    task.name: task
    for task in (
        TaskonomyTask("depth_euclidean", 8000 / UINT16_MAX, False, "distance, 1/512 m"),
        TaskonomyTask("depth_zbuffer", 8000 / UINT16_MAX, False, "z-depth, 1/512 m"),
        TaskonomyTask("edge_texture", 0.25, False, "Canny-like texture edges"),
        TaskonomyTask("edge_occlusion", None, True, "occlusion (depth) edges"),
        TaskonomyTask("keypoints2d", None, False, "2D keypoint (SURF-like) response"),
        TaskonomyTask("keypoints3d", None, False, "3D keypoint (NARF) response"),
    )
}
# The paper's task words (Table 3) -> folders.
TASK_ALIASES = {"depth": "depth_euclidean", "edges": "edge_texture", "occlusion": "edge_occlusion"}


def resolve_tasks(names) -> tuple[str, ...]:
    """Task words or folder names -> folder names; InputError for an unknown one."""
    tasks = tuple(TASK_ALIASES.get(name, name) for name in names)
    unknown = [name for name in tasks if name not in TASKONOMY_TASKS]
    if unknown or not tasks:
        choices = ", ".join([*TASK_ALIASES, *TASKONOMY_TASKS])
        raise InputError(f"unknown Taskonomy task(s) {unknown or '(none)'}: use {choices}")
    return tasks


def read_png16(path) -> np.ndarray:
    """A single-channel 16-bit PNG -> int32 [H, W] in [0, 65535]; ImageDecodeError (an
    InputError) naming the file when unreadable or not 16-bit."""
    try:
        with Image.open(path) as img:
            img.load()
            if img.mode not in ("I;16", "I;16B", "I;16L", "I"):
                raise ImageDecodeError(path, f"expected a 16-bit grayscale PNG, found {img.mode}")
            return np.asarray(img, dtype=np.int32)
    except ImageDecodeError:
        raise
    except (OSError, SyntaxError, ValueError) as err:
        raise ImageDecodeError(path, f"cannot read ({err})") from None


def normalize_target(values: torch.Tensor, task: TaskonomyTask) -> torch.Tensor:
    """Raw 16-bit values [1, H, W] -> float32 target [1, H, W] (module docstring)."""
    x = values.float() / UINT16_MAX
    if task.clamp is not None:
        x = x.clamp(0, task.clamp) / task.clamp
    if task.blur:
        x = TF.gaussian_blur(x, kernel_size=[3, 3], sigma=[1.0, 1.0])
    return x


def erode_valid(valid: torch.Tensor, block: int = VALID_BLOCK) -> torch.Tensor:
    """bool [1, H, W] -> bool [1, H, W]: valid only where its aligned block x block cell is all
    valid. A trailing partial row or column of cells counts as invalid. (MultiMAE max-pools and
    stretches the cells back by nearest interpolation: the same when H and W are multiples of
    ``block``, as every input size here is.)"""
    height, width = valid.shape[-2:]
    invalid = F.max_pool2d((~valid).float()[None], kernel_size=block)[0]  # [1, H/b, W/b]
    cells = invalid.repeat_interleave(block, dim=1).repeat_interleave(block, dim=2)
    cells = F.pad(cells, (0, width - cells.shape[-1], 0, height - cells.shape[-2]), value=1.0)
    return cells == 0


class TaskonomyLayout:
    """Where the files of a Taskonomy root are (per building or per task, module docstring)."""

    def __init__(self, root):
        self.root = Path(root)
        if not self.root.is_dir():
            raise InputError(f"--data_path {root} is not a directory")
        self.per_task = (self.root / "rgb").is_dir()
        self._names: dict[Path, set[str]] = {}

    def folder(self, task: str, building: str) -> Path:
        if self.per_task:
            return self.root / task / building
        return self.root / building / task

    def path(self, task: str, key: tuple[str, int, int], domain: str | None = None) -> Path:
        building, point, view = key
        name = f"point_{point}_view_{view}_domain_{domain or task}.png"
        return self.folder(task, building) / name

    def has_task(self, task: str) -> bool:
        if self.per_task:
            return (self.root / task).is_dir()
        return any((self.root / b / task).is_dir() for b in self.buildings())

    def buildings(self) -> list[str]:
        base = self.root / "rgb" if self.per_task else self.root
        if not base.is_dir():
            return []
        found = (p.name for p in base.iterdir() if p.is_dir() and p.name != "splits")
        return sorted(b for b in found if self.per_task or (base / b / "rgb").is_dir())

    def names(self, task: str, building: str) -> set[str]:
        """File names in one folder (listed once: a stat per file is slow on network disks)."""
        folder = self.folder(task, building)
        if folder not in self._names:
            self._names[folder] = set(os.listdir(folder)) if folder.is_dir() else set()
        return self._names[folder]

    def views(self, building: str) -> list[tuple[str, int, int]]:
        keys = []
        for name in self.names("rgb", building):
            match = _NAME.match(name)
            if match and match.group(3) == "rgb":
                keys.append((building, int(match.group(1)), int(match.group(2))))
        return sorted(keys)

    def mask_source(self) -> str | None:
        """Where the valid mask comes from: ``mask_valid``, a depth task, or None (all valid)."""
        for task in ("mask_valid", *DEPTH_TASKS):
            if self.has_task(task):
                return task
        return None


def _csv_keys(path: Path) -> list[tuple[str, int, int]]:
    with open(path, newline="") as handle:
        rows = list(csv.reader(handle))
    if rows and rows[0][:3] == ["building", "point", "view"]:
        rows = rows[1:]
    try:
        return [(row[0], int(row[1]), int(row[2])) for row in rows if row]
    except (IndexError, ValueError):
        raise InputError(f"{path}: rows must be building,point,view") from None


def taskonomy_keys(
    layout: TaskonomyLayout, split: str, max_images: int | None = None, seed: int = 0
) -> list[tuple[str, int, int]]:
    """(building, point, view) of every image of ``split`` (module docstring, "Splits")."""
    csv_path = layout.root / "splits" / f"{split}.csv"
    if csv_path.is_file():
        keys = _csv_keys(csv_path)
        return keys[:max_images] if max_images else keys
    held_out = {"val": TINY_VAL_BUILDINGS, "test": TINY_TEST_BUILDINGS}
    found = layout.buildings()
    if split in held_out:
        buildings = [b for b in found if b in held_out[split]]
    elif split == "train":
        buildings = [b for b in found if b not in TINY_VAL_BUILDINGS + TINY_TEST_BUILDINGS]
    else:
        raise InputError(f"Taskonomy split must be train, val or test, got {split!r}")
    keys = [key for building in buildings for key in layout.views(building)]
    if max_images and len(keys) > max_images:
        chosen = np.random.default_rng(seed).choice(len(keys), max_images, replace=False)
        keys = [keys[i] for i in sorted(chosen)]
    return keys


class TaskonomyDataset(Dataset):
    """``dataset[index]`` -> {"image": uint8 [3, S, S], "targets": {task: float32 [1, S, S]},
    "mask": bool [1, S, S] (valid pixels), "index": int}.

    No augmentation (MultiMAE has none for Taskonomy): a sample depends on its index only.
    Every file is checked to exist when the set is built: a missing one is an InputError
    naming it, before any training.
    """

    def __init__(
        self,
        root,
        split: str,
        tasks,
        input_size: int = 384,
        max_images: int | None = None,
        seed: int = 0,
    ):
        self.layout = TaskonomyLayout(root)
        self.tasks = resolve_tasks(tasks)
        self.input_size = input_size
        self.mask_task = self.layout.mask_source()
        self.keys = taskonomy_keys(self.layout, split, max_images, seed)
        if not self.keys:
            raise InputError(f"no Taskonomy images for split {split!r} under {root}")
        self._check_files()

    def _mask_domain(self) -> str | None:
        # MultiMAE's mask_valid files carry the depth_zbuffer domain in their names
        return "depth_zbuffer" if self.mask_task == "mask_valid" else None

    def _mask_path(self, key) -> Path:
        return self.layout.path(self.mask_task, key, self._mask_domain())

    def files(self) -> list[tuple[str, tuple, Path]]:
        """(task folder, key, path) of every file a sample reads: rgb, targets, valid mask."""
        wanted = [(task, None) for task in ("rgb", *self.tasks)]
        if self.mask_task is not None:
            wanted.append((self.mask_task, self._mask_domain()))
        return [
            (task, key, self.layout.path(task, key, domain))
            for key in self.keys
            for task, domain in wanted
        ]

    def _check_files(self) -> None:
        missing = [
            path
            for task, key, path in self.files()
            if path.name not in self.layout.names(task, key[0])
        ]
        if missing:
            raise InputError(
                f"{len(missing)} Taskonomy files are missing under {self.layout.root}; first: "
                + ", ".join(str(p) for p in missing[:3])
            )

    def __len__(self) -> int:
        return len(self.keys)

    def key(self, index: int) -> str:
        building, point, view = self.keys[index]
        return f"{building}/point_{point}_view_{view}"

    def _valid_mask(self, key, size: int, raw: dict) -> torch.Tensor:
        """bool [1, S, S]; ``raw``: the 16-bit targets already read (a depth is reused)."""
        if self.mask_task is None:
            return torch.ones(1, size, size, dtype=torch.bool)
        if self.mask_task == "mask_valid":
            # MultiMAE: ToTensor (value / 255), then valid where 1 - value == 0: full scale only
            mask = read_label_map(self._mask_path(key))
            valid = mask == np.iinfo(mask.dtype).max
        else:
            depth = (
                raw[self.mask_task] if self.mask_task in raw else read_png16(self._mask_path(key))
            )
            valid = depth != DEPTH_INVALID
        valid = torch.from_numpy(np.ascontiguousarray(valid))[None]  # [1, H, W]
        return erode_valid(resize_nearest(valid, (size, size)))

    def __getitem__(self, index: int) -> dict:
        key, size = self.keys[index], self.input_size
        image = torch.from_numpy(decode_rgb(self.layout.path("rgb", key))).permute(2, 0, 1)
        raw = {name: read_png16(self.layout.path(name, key)) for name in self.tasks}  # [H, W]
        targets = {
            name: normalize_target(
                resize_nearest(torch.from_numpy(values)[None], (size, size)),
                TASKONOMY_TASKS[name],
            )  # [1, S, S]
            for name, values in raw.items()
        }
        return {
            "image": resize_image(image, (size, size)).contiguous(),
            "targets": targets,
            "mask": self._valid_mask(key, size, raw),
            "index": index,
        }
