"""Checkpoints in the official MAE format, written atomically, and finding the one to resume.

A checkpoint is a dict with the official keys ``model`` (state_dict, official names),
``optimizer``, ``epoch`` (the last *completed* epoch), ``scaler`` and ``args`` (an
``argparse.Namespace`` holding ``model``, the factory name), plus ``resume``: what exact
continuation needs (epoch in progress, iterations done in it, global step, tau, lr, RNG state).
"""

from __future__ import annotations

import argparse
import os
import re
from pathlib import Path

import torch

LAST_NAME = "checkpoint-last.pth"
_EPOCH_NAME = re.compile(r"^checkpoint-(\d+)\.pth$")


class CheckpointError(Exception):
    """A checkpoint that cannot be read; the message names the file."""


def epoch_name(epoch: int) -> str:
    return f"checkpoint-{epoch}.pth"


def save_atomic(obj: dict, path) -> Path:
    """torch.save to a temporary name in the same folder, fsync, then rename over ``path``.

    A run killed while saving leaves the previous checkpoint intact (never a truncated one).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def load_checkpoint(path) -> dict:
    """Load a checkpoint on CPU (tensors, plain containers and argparse.Namespace only)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling failure means a bad file
        raise CheckpointError(f"{path}: cannot be loaded as a checkpoint ({err})") from None
    if not isinstance(ckpt, dict) or "model" not in ckpt:
        raise CheckpointError(f"{path}: not an MAE checkpoint (no 'model' entry)")
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
    numbered = []
    for entry in output_dir.iterdir():
        match = _EPOCH_NAME.match(entry.name)
        if match:
            numbered.append((int(match.group(1)), entry))
    return max(numbered)[1] if numbered else None
