"""A small procedural image set with true object masks (no download).

Layout (ImageFolder, as ImageNet)::

    root/train/<class>/<class>_<i>.JPEG   images, non-square (W x H = 160 x 120)
    root/val/<class>/<class>_<i>.JPEG
    root/masks/train/<class>/<class>_<i>.png   8-bit true object mask (255 = object)
    root/masks/val/<class>/<class>_<i>.png
    root/labels/train/<class>/<class>_<i>.png  8-bit segmentation label map: 0 background,
    root/labels/val/<class>/<class>_<i>.png    1 + the class's index (CLASSES) on the object
    root/classes.txt                           the label names, line i = label i

Each image is one simple shape (the class) in a random colour, place and size, on a textured
background (smooth noise plus stripes), so object-discovery maps have something to find and a
k-NN on the classes is above chance. ``attg-maps import root/masks/train maps.zarr --images
root/train --resize`` turns the masks into a map store. ``labels/`` and ``classes.txt`` make the
same set a semantic-segmentation set in the ``folder`` layout (``attgmae.data.dense_datasets``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = ("circle", "square", "triangle", "cross")
WIDTH, HEIGHT = 160, 120
# Segmentation classes: label 0 is the background, label i + 1 the shape CLASSES[i].
SEGMENTATION_CLASSES = ("background", *CLASSES)


def _background(rng: np.random.Generator) -> np.ndarray:
    """Textured background, float32 [H, W, 3] in [0, 1]."""
    coarse = rng.random((HEIGHT // 20 + 2, WIDTH // 20 + 2, 3)).astype(np.float32)
    smooth = (
        np.asarray(
            Image.fromarray((coarse * 255).astype(np.uint8)).resize((WIDTH, HEIGHT), Image.BICUBIC),
            dtype=np.float32,
        )
        / 255.0
    )
    yy, xx = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float32)
    angle = rng.uniform(0, np.pi)
    period = rng.uniform(6, 14)
    stripes = 0.5 + 0.5 * np.sin((np.cos(angle) * xx + np.sin(angle) * yy) * 2 * np.pi / period)
    grain = rng.normal(0, 0.04, (HEIGHT, WIDTH, 1)).astype(np.float32)
    return np.clip(0.35 + 0.35 * smooth + 0.12 * stripes[..., None] + grain, 0, 1)


def _shape_mask(shape: str, rng: np.random.Generator) -> np.ndarray:
    """Boolean [H, W] mask of one shape with random centre and size."""
    size = rng.uniform(18, 40)
    cx = rng.uniform(size, WIDTH - size)
    cy = rng.uniform(size, HEIGHT - size)
    yy, xx = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float32)
    dx, dy = xx - cx, yy - cy
    if shape == "circle":
        return dx**2 + dy**2 <= size**2
    if shape == "square":
        return (np.abs(dx) <= size * 0.85) & (np.abs(dy) <= size * 0.85)
    if shape == "triangle":
        # apex up: inside when below the two slanted edges and above the base
        return (dy <= size * 0.8) & (dy >= -size + 2 * np.abs(dx))
    if shape == "cross":
        arm = size * 0.3
        return ((np.abs(dx) <= arm) & (np.abs(dy) <= size)) | (
            (np.abs(dy) <= arm) & (np.abs(dx) <= size)
        )
    raise ValueError(f"unknown shape {shape}")


def make_example_image(shape: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One image (uint8 [H, W, 3]) and its true mask (uint8 [H, W], 255 = object)."""
    image = _background(rng)
    mask = _shape_mask(shape, rng)
    colour = rng.uniform(0, 1, 3).astype(np.float32)
    # keep the object distinguishable from the mid-grey background
    colour = np.where(
        np.abs(colour - 0.5) < 0.25, colour + np.sign(colour - 0.5 + 1e-3) * 0.3, colour
    )
    shade = 1.0 - 0.15 * rng.random((HEIGHT, WIDTH, 1)).astype(np.float32)
    image = np.where(mask[..., None], np.clip(colour * shade, 0, 1), image)
    return (image * 255).round().astype(np.uint8), mask.astype(np.uint8) * 255


def write_example(
    root, n_train_per_class: int = 8, n_val_per_class: int = 4, seed: int = 0
) -> Path:
    """Write the example set under ``root`` (created) and return ``root`` as a Path."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    for split, count in (("train", n_train_per_class), ("val", n_val_per_class)):
        for label, shape in enumerate(CLASSES, start=1):
            image_dir = root / split / shape
            mask_dir = root / "masks" / split / shape
            label_dir = root / "labels" / split / shape
            for folder in (image_dir, mask_dir, label_dir):
                folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                image, mask = make_example_image(shape, rng)
                stem = f"{shape}_{i:04d}"
                Image.fromarray(image).save(image_dir / f"{stem}.JPEG", quality=92)
                Image.fromarray(mask).save(mask_dir / f"{stem}.png")
                label_map = np.where(mask > 0, label, 0).astype(np.uint8)  # [H, W]
                Image.fromarray(label_map).save(label_dir / f"{stem}.png")
    (root / "classes.txt").write_text("\n".join(SEGMENTATION_CLASSES) + "\n")
    return root
