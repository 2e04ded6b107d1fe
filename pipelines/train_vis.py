"""``attg-train --vis_every``: the reconstruction PNG of fixed training images."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from torch.utils.data import default_collate

from attgmae.data.transforms import normalize_images
from attgmae.visualize import PANEL_TITLES, reconstruction_panels, save_png, with_titles


def write_reconstruction_png(run, epoch: int) -> Path:
    """``run`` (a PretrainRun) at the end of ``epoch`` -> ``vis/recon-epochNNNN.png``: per fixed
    image original | masked | reconstruction | loss weights, the weights on the figures' fixed
    scale gamma (background) .. gamma * exp(1 / tau)."""
    dataset, cfg = run.data.dataset, run.cfg
    count = min(cfg.vis_count, len(dataset))
    picks = np.linspace(0, len(dataset) - 1, count).round().astype(int)
    batch = default_collate([dataset[(int(i), 0)] for i in picks])
    images = normalize_images(batch["image"].to(run.device))
    tau = run.tau_schedule.at(epoch + 1)
    weights = run.batch_weights(batch, tau)
    scale = (cfg.gamma, cfg.gamma * math.exp(1.0 / tau))
    panel = reconstruction_panels(
        run.model_without_ddp, images, batch["noise"].to(run.device), cfg.mask_ratio, weights,
        scale,
    )  # fmt: skip
    guide = run.data.join.method if run.data.join is not None else cfg.guidance  # maps: whose
    titles = (f"epoch {epoch}: original", *PANEL_TITLES[1:3],
              f"{guide} weights {scale[0]:g}..{scale[1]:.2f}, tau {tau:.2f}")  # fmt: skip
    return save_png(with_titles(panel, titles), run.out_dir / "vis" / f"recon-epoch{epoch:04d}.png")
