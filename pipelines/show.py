"""`attg-maps show`: the paper's Figures 1-3 for chosen images of a store.

- one ``--tau``: Fig. 1, image | M_norm | M_norm / tau | exp(M_norm / tau), on 0 .. exp(1/tau);
- several ``--tau``: Fig. 2, the weights exp(M_norm / tau) at each, on the paper's 1 .. 4.2;
- ``--schedule RUN``: Fig. 3, the weights at the start of five of a training run's epochs (read
  from its checkpoint or config.json), on Fig. 2's scale (raised below tau 0.7);
- ``--range LOW HIGH``: one fixed colour scale instead, e.g. for figures of several runs.
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
from attgmae.figures import FIG2_RANGE, save_figure, tau_figure, weight_figure
from attgmae.guidance import TauSchedule
from attgmae.store import open_store

SCHEDULE_POINTS = 5  # epochs shown: the first, the last and three between


def read_tau_schedule(path) -> tuple[TauSchedule, int]:
    """A run's (tau schedule, number of epochs) from its checkpoint (``args``) or
    ``config.json``."""
    path = Path(path)
    if path.suffix == ".json":
        args = json.loads(path.read_text())
    else:
        ckpt = load_torch_file(path)  # (not attgmae.checkpoint: no need to import the models)
        args = ckpt.get("args") if isinstance(ckpt, dict) else None
        args = vars(args) if hasattr(args, "__dict__") else dict(args or {})
    if "tau_plan" in args:
        plan = TauSchedule.from_dict(args["tau_plan"])
    elif "tau" in args:
        # Runs written before the plan was recorded: a cosine over all epochs when tau_end is set.
        plan = TauSchedule(args["tau"], args.get("tau_end"), 0.0, args.get("epochs", 1))
    else:
        raise InputError(f"{path}: no tau recorded (not an attg-train checkpoint or config)")
    epochs = args.get("epochs") or (plan.to_epoch if plan.end is not None else 1)
    return plan, max(int(round(epochs)), 1)


def schedule_epochs(epochs: int, points: int = SCHEDULE_POINTS) -> list[int]:
    """Up to ``points`` epochs the run has (0 .. epochs - 1), evenly spread, first and last."""
    return sorted({int(e) for e in np.linspace(0, epochs - 1, points).round()})


def _check(taus, value_range) -> None:
    bad = [t for t in taus if not t > 0]
    if bad:
        raise InputError(
            f"--tau must be > 0 (the weights are exp(M_norm / tau)), got {bad[0]:g}: the paper "
            "draws 0.7 .. 1.0"
        )
    if value_range is not None and not value_range[0] < value_range[1]:
        raise InputError(f"--range LOW HIGH must rise, got {value_range[0]:g} {value_range[1]:g}")


def render_show(store_path, images_root, keys, taus, out_png, schedule=None,
                overlay: bool = False, value_range=None) -> Path:  # fmt: skip
    """Write ``show_figure``'s PNG (atomically) and return its path."""
    check_output_path(out_png, "file", "-o")
    fig = show_figure(store_path, images_root, keys, taus, schedule, overlay, value_range)
    return save_figure(fig, out_png)


def show_figure(store_path, images_root, keys, taus, schedule=None, overlay: bool = False,
                value_range=None):  # fmt: skip
    """Fig. 1 (one tau), 2 (several) or 3 (``schedule``: a run's checkpoint or config.json) of
    a store's maps; ``value_range`` (low, high) fixes the colour scale, else the paper's."""
    taus = [float(t) for t in np.atleast_1d(taus)]
    _check(taus, value_range)
    store = open_store(store_path)
    maps_norm = store.get_batch(keys)  # [B, 14, 14]
    images = [decode_rgb(Path(images_root) / key) for key in keys]
    name = f"{store.method} maps of {Path(store_path).name}"
    if schedule is not None:
        plan, epochs = read_tau_schedule(schedule)
        shown = schedule_epochs(epochs)
        taus = [plan.at(e) for e in shown]  # the temperature as each epoch starts
        labels = [f"epoch {e}: tau {t:.3f}" for e, t in zip(shown, taus)]
        title = (
            f"{name}: the loss weights at the start of epochs {', '.join(map(str, shown))} of "
            f"the run's {epochs}; its schedule: {plan.describe()}"
        )
        # Fig. 2's scale, raised when the schedule goes below its tau 0.7
        scale = value_range or (1.0, max(FIG2_RANGE[1], float(np.exp(1.0 / min(taus)))))
        return tau_figure(images, maps_norm, keys, taus, title, labels, overlay, scale)
    if len(taus) == 1:
        title = f"{name}: M_norm, M_norm / tau, loss weights exp(M_norm / tau) at tau {taus[0]:g}"
        return weight_figure(images, maps_norm, keys, taus[0], title, overlay, value_range)
    title = f"{name}: the loss weights exp(M_norm / tau) at tau {', '.join(f'{t:g}' for t in taus)}"
    return tau_figure(images, maps_norm, keys, taus, title, overlay=overlay,
                      value_range=value_range)  # fmt: skip
