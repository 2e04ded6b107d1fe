"""``attg-train --vis_every``: the reconstruction PNG of fixed training images."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import default_collate

from attgmae.data.transforms import normalize_images
from attgmae.visualize import (
    PANEL_TITLES,
    reconstruction_panels,
    save_png,
    with_colorbar,
    with_row_keys,
    with_titles,
)


def weight_scale(run) -> tuple[float, float]:
    """The reconstruction PNGs' one weight scale for every epoch of the run: gamma (background)
    .. gamma * exp(1 / tau) at the run's lowest tau (the most a weight reaches in the run)."""
    plan, gamma = run.tau_schedule, run.cfg.gamma
    lowest = min(plan.start, plan.end if plan.end is not None else plan.start)
    return gamma, gamma * math.exp(1.0 / lowest)


def write_reconstruction_png(run, epoch: int) -> Path:
    """``run`` (a PretrainRun) at the end of ``epoch`` -> ``vis/recon-epochNNNN.png``: per fixed
    image (its key on it) original | masked | reconstruction | loss weights, the weights on one
    scale for the whole run (``weight_scale``), with its colour key."""
    dataset, cfg = run.data.dataset, run.cfg
    count = min(cfg.vis_count, len(dataset))
    picks = np.linspace(0, len(dataset) - 1, count).round().astype(int)
    batch = default_collate([dataset[(int(i), 0)] for i in picks])
    images = normalize_images(batch["image"].to(run.device))
    tau = run.tau_schedule.at(epoch + 1)
    weights = run.batch_weights(batch, tau)
    scale = weight_scale(run)
    if weights is None:  # vanilla MAE: every patch weighs gamma
        grid = run.model_without_ddp.grid_size
        weights = torch.full((count, grid * grid), float(cfg.gamma))
        weights_title = f"uniform weights {cfg.gamma:g} (vanilla)"
    else:
        guide = run.data.join.method if run.data.join is not None else cfg.guidance  # whose maps
        weights_title = f"{guide} weights, tau {tau:.2f}"
    panel = reconstruction_panels(
        run.model_without_ddp, images, batch["noise"].to(run.device), cfg.mask_ratio, weights,
        scale,
    )  # fmt: skip
    size = images.shape[-1]
    panel = with_row_keys(panel, [dataset.key(int(i)) for i in picks], size)
    key = f"loss weight, one scale for every epoch: {scale[0]:g} .. {scale[1]:.2f}"
    panel = with_colorbar(panel, *scale, key)
    titles = (f"epoch {epoch}: original", *PANEL_TITLES[1:3], weights_title)
    return save_png(with_titles(panel, titles), run.out_dir / "vis" / f"recon-epoch{epoch:04d}.png")
