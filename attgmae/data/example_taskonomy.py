"""A tiny synthetic set in the Taskonomy layout, with targets a network can learn from the image.

Each view is a square image of a floor plane under a sky band, with one box standing on the
floor. Its targets follow from that scene, written in Taskonomy's file formats (8-bit RGB PNG,
16-bit single-channel PNGs; ``attgmae.data.dense_taskonomy`` reads them):

- ``depth_euclidean``: the floor recedes from 2 m (bottom row) to 12 m (horizon), the box sits
  0.5 m in front of the floor where it stands; units 1/512 m; the sky is 65535 ("no surface",
  invalid).
- ``edge_texture``: the image's gradient magnitude (Sobel), at most 0.25 of the 16-bit range.
- ``edge_occlusion``: the box outline and the horizon (the depth discontinuities).
- ``keypoints2d``: a Gaussian blob on each corner of the box.
- ``keypoints3d``: a Gaussian blob at the box's centre.

Layout: ``root/<building>/<task>/point_<P>_view_<V>_domain_<task>.png`` (per building; or per
task with ``per_task=True``) and ``root/splits/{train,val,test}.csv`` naming each split's views.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image

SPLIT_BUILDINGS = {"train": ("synth_a", "synth_b"), "val": ("synth_c",), "test": ("synth_d",)}
TASKS = ("depth_euclidean", "edge_texture", "edge_occlusion", "keypoints2d", "keypoints3d")
DEPTH_UNITS_PER_M = 512
SKY = 65535


def _blob(size: int, centres, sigma: float) -> np.ndarray:
    """Sum of unit Gaussians at ``centres`` [(y, x)], float [S, S] clipped to [0, 1]."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    out = np.zeros((size, size), np.float32)
    for cy, cx in centres:
        out += np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sigma**2))
    return np.clip(out, 0, 1)


def _sobel_magnitude(gray: np.ndarray) -> np.ndarray:
    """|gradient| of float [S, S] by 3x3 Sobel filters (edges replicated)."""
    pad = np.pad(gray, 1, mode="edge")
    gx = (pad[:-2, 2:] + 2 * pad[1:-1, 2:] + pad[2:, 2:]) - (
        pad[:-2, :-2] + 2 * pad[1:-1, :-2] + pad[2:, :-2]
    )
    gy = (pad[2:, :-2] + 2 * pad[2:, 1:-1] + pad[2:, 2:]) - (
        pad[:-2, :-2] + 2 * pad[:-2, 1:-1] + pad[:-2, 2:]
    )
    return np.hypot(gx, gy)


def _outline(mask: np.ndarray) -> np.ndarray:
    """Pixels of ``mask`` [S, S] bool with a 4-neighbour outside it."""
    pad = np.pad(mask, 1, mode="constant")
    inner = pad[:-2, 1:-1] & pad[2:, 1:-1] & pad[1:-1, :-2] & pad[1:-1, 2:]
    return mask & ~inner


def render_view(size: int, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    """One view: (rgb uint8 [S, S, 3], {task: uint16 [S, S]})."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    horizon = int(rng.integers(size // 8, size // 4 + 1))
    below = np.clip((yy - horizon) / (size - 1 - horizon), 0, 1)  # 0 at horizon, 1 at bottom
    floor_depth = 12.0 - 10.0 * below  # metres
    box_h, box_w = (int(v) for v in rng.integers(size // 5, size // 3 + 1, size=2))
    bottom = int(rng.integers(horizon + box_h + 2, size))  # the row the box stands on
    left = int(rng.integers(0, size - box_w))
    box = (yy > bottom - box_h) & (yy <= bottom) & (xx >= left) & (xx < left + box_w)
    sky = yy < horizon

    depth_m = np.where(box, floor_depth[bottom, 0] - 0.5, floor_depth)
    depth = np.where(sky, SKY, np.round(depth_m * DEPTH_UNITS_PER_M)).astype(np.uint16)

    stripes = 0.5 + 0.5 * np.sin(xx * rng.uniform(0.3, 0.8) + 20.0 / (floor_depth + 1))
    shade = (0.3 + 0.5 * below + 0.15 * stripes)[..., None]  # nearer floor is brighter
    floor_colour = rng.uniform(0.4, 0.9, 3).astype(np.float32)
    rgb = shade * floor_colour
    rgb = np.where(sky[..., None], np.array([0.55, 0.75, 0.95], np.float32), rgb)
    box_colour = rng.uniform(0, 1, 3).astype(np.float32)
    rgb = np.where(box[..., None], box_colour * (0.8 + 0.2 * (xx - left) / box_w)[..., None], rgb)
    rgb = np.clip(rgb + rng.normal(0, 0.01, rgb.shape).astype(np.float32), 0, 1)

    gray = rgb.mean(axis=2)
    texture = np.clip(_sobel_magnitude(gray) / 4.0, 0, 1) * 0.25
    occlusion = _outline(box) | (yy == horizon)
    top = bottom - box_h + 1
    corners = [(top, left), (top, left + box_w - 1), (bottom, left), (bottom, left + box_w - 1)]
    targets = {
        "depth_euclidean": depth,
        "edge_texture": texture,
        "edge_occlusion": occlusion.astype(np.float32) * 0.5,
        "keypoints2d": _blob(size, corners, 1.5) * 0.5,
        "keypoints3d": _blob(size, [((top + bottom) / 2, left + box_w / 2)], size / 16) * 0.8,
    }
    as16 = {
        task: value if value.dtype == np.uint16 else np.round(value * 65535).astype(np.uint16)
        for task, value in targets.items()
    }
    return (rgb * 255).round().astype(np.uint8), as16


def write_example_taskonomy(
    root, views_per_building: int = 4, size: int = 64, seed: int = 0, per_task: bool = False
) -> Path:
    """Write the synthetic set under ``root`` (created): SPLIT_BUILDINGS' buildings with
    ``views_per_building`` views each, ``size`` x ``size`` pixels. Returns ``root``."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    (root / "splits").mkdir(parents=True, exist_ok=True)
    for split, buildings in SPLIT_BUILDINGS.items():
        rows = []
        for building in buildings:
            for point in range(views_per_building):
                view = point % 3  # any view number: files are matched by name
                rgb, targets = render_view(size, rng)
                for task, image in (("rgb", rgb), *targets.items()):
                    folder = root / task / building if per_task else root / building / task
                    folder.mkdir(parents=True, exist_ok=True)
                    name = f"point_{point}_view_{view}_domain_{task}.png"
                    Image.fromarray(image).save(folder / name)
                rows.append((building, point, view))
        with open(root / "splits" / f"{split}.csv", "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["building", "point", "view"])
            writer.writerows(rows)
    return root
