"""`attg-maps show`: the paper's Figures 1-3 for chosen images of a store.

- one ``--tau``: Fig. 1, image | M_norm | M_norm / tau | exp(M_norm / tau);
- several ``--tau``: Fig. 2, the weights exp(M_norm / tau) at each;
- ``--schedule RUN``: Fig. 3, the weights along a training run's own tau schedule, read from its
  checkpoint or config.json.
Drawing is ``attgmae.figures``; here the store, the images and the schedule are read.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from attgmae.core.errors import InputError
from attgmae.core.outputs import check_output_path
from attgmae.core.torchfile import load_torch_file
from attgmae.data.images import decode_rgb
from attgmae.figures import save_figure, tau_figure, weight_figure
from attgmae.guidance import TauSchedule
from attgmae.store import open_store

SCHEDULE_POINTS = 5  # start, quarter, half, three quarters, end


def read_tau_schedule(path) -> TauSchedule:
    """A run's schedule from its checkpoint (``args``) or ``config.json``."""
    path = Path(path)
    if path.suffix == ".json":
        args = json.loads(path.read_text())
    else:
        ckpt = load_torch_file(path)  # (not attgmae.checkpoint: no need to import the models)
        args = ckpt.get("args") if isinstance(ckpt, dict) else None
        args = vars(args) if hasattr(args, "__dict__") else dict(args or {})
    if "tau_plan" in args:
        return TauSchedule.from_dict(args["tau_plan"])
    if "tau" not in args:
        raise InputError(f"{path}: no tau recorded (not an attg-train checkpoint or config)")
    # Runs written before the plan was recorded: a cosine over all epochs when tau_end is set.
    return TauSchedule(args["tau"], args.get("tau_end"), 0.0, args.get("epochs", 1))


def render_show(store_path, images_root, keys, taus, out_png, schedule=None,
                overlay: bool = False) -> Path:  # fmt: skip
    check_output_path(out_png, "file", "-o")
    store = open_store(store_path)
    maps_norm = store.get_batch(keys)  # [B, 14, 14]
    images = [decode_rgb(Path(images_root) / key) for key in keys]
    name = f"{store.method} maps of {Path(store_path).name}"
    taus = [float(t) for t in np.atleast_1d(taus)]
    if schedule is not None:
        plan = read_tau_schedule(schedule)
        end = plan.to_epoch if plan.end is not None else 1.0
        epochs = np.linspace(0.0, end, SCHEDULE_POINTS)
        taus = [plan.at(e) for e in epochs]
        labels = [f"epoch {e:g}: tau {t:.3f}" for e, t in zip(epochs, taus)]
        title = f"{name}: the loss weights along the run's schedule, {plan.describe()}"
        fig = tau_figure(images, maps_norm, keys, taus, title, labels, overlay)
    elif len(taus) == 1:
        title = f"{name}: M_norm, M_norm / tau, loss weights exp(M_norm / tau) at tau {taus[0]:g}"
        fig = weight_figure(images, maps_norm, keys, taus[0], title, overlay)
    else:
        title = (
            f"{name}: the loss weights exp(M_norm / tau) at tau {', '.join(f'{t:g}' for t in taus)}"
        )
        fig = tau_figure(images, maps_norm, keys, taus, title, overlay=overlay)
    return save_figure(fig, out_png)
