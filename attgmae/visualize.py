"""Pictures of maps and reconstructions.

``reconstruction_panels``: original | masked | reconstruction | loss weights, one row per image,
the weights in the figures' style (``attgmae.figures``: viridis, patch grid, fixed scale);
``with_titles``, ``with_row_keys`` and ``with_colorbar`` add the column titles, each row's image
key and the colour key of the weights' scale.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from matplotlib import colormaps
from PIL import Image, ImageDraw

from attgmae.core.files import atomic_path
from attgmae.data.transforms import denormalize_images
from attgmae.figures import CMAP


def _viridis(values: np.ndarray) -> np.ndarray:
    """values float [...] in [0, 1] -> uint8 [..., 3] in viridis (the figures' colour map)."""
    return (colormaps[CMAP](np.clip(values, 0, 1))[..., :3] * 255).round().astype(np.uint8)


@torch.no_grad()
def reconstruction_panels(model, images, noise, mask_ratio, loss_weights=None,
                          weight_range=None) -> np.ndarray:  # fmt: skip
    """uint8 [K*S, 4*S, 3]: for each image (ImageNet-normalized [K, 3, S, S]) the original,
    the visible patches (masked ones grey), the reconstruction pasted into the visible
    patches, and the loss weights as their patch grid in viridis: on the fixed scale
    ``weight_range`` (low, high), as the figures draw them, or else each image's own range."""
    was_training = model.training
    model.eval()
    _, pred, mask = model(images, mask_ratio, noise=noise)  # pred [K, L, p*p*3], mask [K, L]
    model.train(was_training)
    pred = pred.float()
    if model.norm_pix_loss:  # predictions are per-patch normalized: undo with the true stats
        target = model.patchify(images.float())
        mean = target.mean(dim=-1, keepdim=True)
        var = target.var(dim=-1, keepdim=True)
        pred = pred * (var + 1.0e-6) ** 0.5 + mean
    recon = model.unpatchify(pred)  # [K, 3, S, S], normalized space
    p = model.patch_size
    mask_px = model.unpatchify(mask.float()[..., None].expand(-1, -1, p * p * 3))  # 1 = masked
    original = denormalize_images(images)
    masked = original * (1 - mask_px) + 0.5 * mask_px
    pasted = original * (1 - mask_px) + denormalize_images(recon) * mask_px
    k, _, size, _ = images.shape
    grid = model.grid_size
    if loss_weights is None:
        weights = torch.zeros(k, grid * grid)
    else:
        weights = loss_weights.float().cpu()
        if weight_range is None:
            low = weights.min(dim=1, keepdim=True).values
            high = weights.max(dim=1, keepdim=True).values
        else:
            low, high = (torch.tensor(float(v)) for v in weight_range)
        weights = (weights - low) / (high - low).clamp_min(1e-12)
    weight_px = weights.reshape(k, grid, 1, grid, 1).expand(-1, -1, p, -1, p)
    weight_rgb = _viridis(weight_px.reshape(k, size, size).numpy())  # [K, S, S, 3]

    def to_uint8(x):  # [K, 3, S, S] float [0, 1] -> [K, S, S, 3]
        return (x.permute(0, 2, 3, 1).cpu().numpy() * 255).round().astype(np.uint8)

    row = np.concatenate(
        [to_uint8(original), to_uint8(masked), to_uint8(pasted), weight_rgb], axis=2
    )  # [K, S, 4*S, 3]
    return row.reshape(k * size, 4 * size, 3)


PANEL_TITLES = ("original", "masked", "reconstruction", "loss weights")


def with_titles(panel: np.ndarray, titles=PANEL_TITLES, height: int = 18) -> np.ndarray:
    """uint8 [H, W, 3] -> [height + H, W, 3]: a white strip naming each equal-width column."""
    strip = Image.new("RGB", (panel.shape[1], height), (255, 255, 255))
    draw = ImageDraw.Draw(strip)
    column = panel.shape[1] // len(titles)
    for i, title in enumerate(titles):
        draw.text((i * column + 4, 3), title, fill=(0, 0, 0))
    return np.concatenate([np.asarray(strip), panel], axis=0)


def with_row_keys(panel: np.ndarray, keys, tile: int, band: int = 13) -> np.ndarray:
    """A copy of ``panel`` (rows of ``tile`` px) with each row's image key written in a dark
    band along the bottom of its first tile (a long key keeps its end: the file name)."""
    image = Image.fromarray(panel.copy())
    draw = ImageDraw.Draw(image)
    fits = max((tile - 6) // 6, 4)  # characters of the default font across one tile
    for row, key in enumerate(keys):
        text = key if len(key) <= fits else "..." + key[-(fits - 3):]
        top = (row + 1) * tile - band
        draw.rectangle((0, top, tile - 1, (row + 1) * tile - 1), fill=(0, 0, 0))
        draw.text((3, top + 1), text, fill=(255, 255, 255))
    return np.asarray(image)


def with_colorbar(panel: np.ndarray, low: float, high: float, label: str,
                  height: int = 32) -> np.ndarray:  # fmt: skip
    """uint8 [H, W, 3] -> [H + height, W, 3]: below the panel the weights' colour key, a viridis
    gradient from ``low`` to ``high`` under the last of its four columns, its ends labelled,
    and ``label`` (what the scale is) beside it."""
    width = panel.shape[1]
    column = width // len(PANEL_TITLES)
    strip = Image.new("RGB", (width, height), (255, 255, 255))
    gradient = _viridis(np.linspace(0.0, 1.0, column - 8))[None].repeat(10, axis=0)
    strip.paste(Image.fromarray(gradient), (width - column + 4, 3))
    draw = ImageDraw.Draw(strip)
    draw.text((width - column + 4, 15), f"{low:g}", fill=(0, 0, 0))
    high_text = f"{high:.2f}"
    draw.text((width - 6 * len(high_text) - 6, 15), high_text, fill=(0, 0, 0))
    draw.text((4, 8), label, fill=(0, 0, 0))
    return np.concatenate([panel, np.asarray(strip)], axis=0)


def save_png(rgb: np.ndarray, path) -> Path:
    """uint8 [H, W, 3] -> a PNG file, written atomically."""
    with atomic_path(path) as tmp:
        Image.fromarray(rgb).save(tmp)
    return Path(path)
