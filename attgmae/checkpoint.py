"""Checkpoints in the official MAE format, written atomically, and finding the one to resume.

A checkpoint is a dict with the official keys ``model`` (state_dict, official names),
``optimizer``, ``epoch`` (the last *completed* epoch), ``scaler`` and ``args`` (an
``argparse.Namespace`` holding ``model``, the factory name), plus ``resume``: what exact
continuation needs (epoch in progress, samples done in it, global step, lr, RNG state, and what
else a run adds: tau for pretraining, the running loss sums of the epoch for ``attgmae.engine``).
Used by ``attg-train`` (pretraining) and by the supervised runs of ``attgmae.engine``.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from attgmae.core.constants import TRUST_FLAG
from attgmae.core.errors import InputError
from attgmae.core.files import atomic_path
from attgmae.core.torchfile import (  # noqa: F401 (CheckpointError: for callers)
    CheckpointError,
    CheckpointUnreadable,
    CheckpointUntrusted,
    load_torch_file,
    save_torch_file,
)
from attgmae.models import MODEL_FACTORIES

LAST_NAME = "checkpoint-last.pth"
_EPOCH_NAME = re.compile(r"^checkpoint-(\d+)\.pth$")


def epoch_name(epoch: int) -> str:
    return f"checkpoint-{epoch}.pth"


def save_atomic(obj: dict, path) -> Path:
    """torch.save aside, then rename over ``path``: a run killed while saving leaves the previous
    checkpoint intact (never a truncated one)."""
    return save_torch_file(obj, path)


def load_checkpoint(path, trusted: bool = False) -> dict:
    """Load a checkpoint on CPU (tensors, plain containers and argparse.Namespace only, unless
    ``trusted``)."""
    path = Path(path)
    ckpt = load_torch_file(path, trusted=trusted)
    if not isinstance(ckpt, dict) or "model" not in ckpt:
        raise CheckpointUnreadable(f"{path}: not an MAE checkpoint (no 'model' entry)")
    return ckpt


def find_resume_checkpoint(output_dir) -> Path | None:
    """The checkpoint to continue from: ``checkpoint-last.pth`` (written every epoch and during
    long epochs, so always the newest), else the highest ``checkpoint-N.pth``; None if none."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return None
    last = output_dir / LAST_NAME
    if last.is_file():
        return last
    numbered = numbered_checkpoints(output_dir)
    return numbered[0] if numbered else None


def numbered_checkpoints(output_dir: Path) -> list[Path]:
    """``checkpoint-N.pth`` files of ``output_dir``, highest N first."""
    numbered = []
    for entry in output_dir.iterdir():
        match = _EPOCH_NAME.match(entry.name)
        if match:
            numbered.append((int(match.group(1)), entry))
    return [path for _, path in sorted(numbered, reverse=True)]


def load_latest_checkpoint(
    output_dir,
    trusted: bool = False,
    warn: Callable[[str], None] = print,
    read: Callable[[Path, bool], dict] = load_checkpoint,
) -> tuple[Path, dict] | None:
    """The newest readable checkpoint of ``output_dir`` -> (path, checkpoint), None if none.

    ``checkpoint-last.pth`` first; when it is damaged (a disk filled up, a copy cut short)
    ``warn`` says so and the highest readable ``checkpoint-N.pth`` is used instead. A checkpoint
    refused for trust (it holds Python objects beyond tensors) is never skipped: it is this run's
    newest state, and resuming from an older one would later overwrite it; InputError naming the
    file and ``--trust_checkpoint``. ``read(path, trusted)`` loads one file (default: an MAE
    checkpoint; a command with other checkpoints passes its own reader).
    """
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return None
    last = output_dir / LAST_NAME
    candidates = ([last] if last.is_file() else []) + numbered_checkpoints(output_dir)
    for path in candidates:
        try:
            return path, read(path, trusted)
        except CheckpointUntrusted as err:
            raise InputError(
                f"{err}. It is the newest checkpoint of {output_dir}: resuming never skips it "
                f"for an older one (without {TRUST_FLAG}, move it away to resume from those)"
            ) from None
        except CheckpointUnreadable as err:
            warn(f"warning: skipping unreadable checkpoint ({err})")
    return None


def training_checkpoint(model, optimizer, scaler, args, *, epoch: int, samples_seen: int,
                        global_step: int, lr: float, tau: float | None = None, device,
                        extra: dict | None = None) -> dict:  # fmt: skip
    """The official MAE checkpoint of a run ``samples_seen`` samples (all ranks) into ``epoch``,
    plus ``resume``: what an exact continuation needs (schedules, RNG state, and ``extra``: what
    else the run needs to continue exactly, e.g. its running sums)."""
    resume = {
        "epoch": epoch,
        "samples_seen": samples_seen,
        "global_step": global_step,
        "lr": lr,
        "torch_rng": torch.get_rng_state(),
        **(extra or {}),
    }
    if tau is not None:
        resume["tau"] = tau
    if torch.device(device).type == "cuda":
        resume["cuda_rng"] = torch.cuda.get_rng_state(device)
    return {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "epoch": epoch - 1,  # last completed epoch, as official MAE counts
        # Without a grad scaler (bf16, fp32), a fresh fp16 scaler's state: official MAE's
        # ``load_model`` loads it into its always-enabled scaler, which refuses an empty state.
        "scaler": (scaler if scaler.is_enabled() else torch.amp.GradScaler("cpu")).state_dict(),
        "args": args,
        "resume": resume,
    }


@dataclass
class ResumePoint:
    epoch: int | None  # the epoch to continue in (None: the checkpoint does not say)
    samples_seen: int = 0  # samples of that epoch already trained on, all ranks together
    global_step: int = 0  # optimizer steps so far
    state: dict = field(default_factory=dict)  # the checkpoint's whole ``resume`` entry


def restore_training(ckpt: dict, path, model_name: str, model, optimizer, scaler,
                     device) -> ResumePoint:  # fmt: skip
    """Load a checkpoint's weights, optimizer, scaler and RNG state into a run of
    ``model_name``; InputError when it holds another model."""
    args = ckpt.get("args")
    saved_model = args.get("model") if isinstance(args, dict) else getattr(args, "model", None)
    same_model = MODEL_FACTORIES.get(saved_model) is MODEL_FACTORIES.get(model_name)
    if saved_model is not None and not same_model:  # (aliases like *_dec512d8b are equal)
        raise InputError(f"{path} holds a {saved_model}, not --model {model_name}")
    return restore_state(ckpt, path, model, optimizer, scaler, device, f"--model {model_name}")


def restore_state(ckpt: dict, path, model, optimizer, scaler, device,
                  model_label: str = "the model") -> ResumePoint:  # fmt: skip
    """Load a checkpoint's weights (strictly), optimizer, scaler and RNG state; InputError
    naming ``path`` and ``model_label`` when the weights do not fit ``model``."""
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as err:
        raise InputError(f"{path}: weights do not fit {model_label} ({err})") from None
    point = ResumePoint(epoch=None)
    if "optimizer" in ckpt and "epoch" in ckpt:
        optimizer.load_state_dict(ckpt["optimizer"])
        point.epoch = int(ckpt["epoch"]) + 1
        if scaler.is_enabled() and ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
    state = ckpt.get("resume")
    if state:
        point.state = state
        point.epoch = int(state["epoch"])
        point.global_step = int(state.get("global_step", 0))
        point.samples_seen = int(state.get("samples_seen", 0))
        if "torch_rng" in state:
            torch.set_rng_state(state["torch_rng"])
        if "cuda_rng" in state and torch.device(device).type == "cuda":
            torch.cuda.set_rng_state(state["cuda_rng"], device)
    return point


def save_checkpoint(ckpt: dict, out_dir, numbered_epoch: int | None = None) -> Path:
    """Write ``checkpoint-last.pth`` (and ``checkpoint-{epoch}.pth`` when asked); returns the last
    checkpoint's path. Two names are two files, never one linked file: damage to one (a disk
    that fills, a copy cut short) cannot reach the other, which ``--auto_resume`` falls back to."""
    last = Path(out_dir) / LAST_NAME
    if numbered_epoch is None:
        return save_atomic(ckpt, last)
    numbered = save_atomic(ckpt, Path(out_dir) / epoch_name(numbered_epoch))
    with atomic_path(last) as tmp:
        shutil.copyfile(numbered, tmp)  # the same bytes, without serializing again
    return last


def prune_checkpoints(out_dir, keep: int) -> list[Path]:
    """Delete all but the ``keep`` highest ``checkpoint-N.pth`` of ``out_dir`` (0: keep all);
    ``checkpoint-last.pth`` always stays. Returns the deleted paths."""
    if keep <= 0:
        return []
    old = numbered_checkpoints(Path(out_dir))[keep:]
    for path in old:
        path.unlink(missing_ok=True)
    return old
