"""The one reader (and writer) of weights and checkpoint files, with one safety rule.

A ``.pth``/``.pt`` file is a pickle, and unpickling can run arbitrary code. So every file is first
loaded tensors-only (``torch.load(weights_only=True)``, which also admits plain containers and
the ``argparse.Namespace`` that MAE, DINO and attg-train store their arguments in). A file that
holds other Python objects is unpickled in full only when the user says it is trusted
(``--trust_checkpoint``); the error names that flag. ``.safetensors`` files hold tensors only.

``save_torch_file`` is the one writer: atomic (``core.files.atomic_path``), through an open file
so that a full disk is the OSError the atomic writer names (given a path, ``torch.save`` reports
it as a RuntimeError of its own), and the same bytes for the same object (given a path, torch
names the archive inside after the file, here a temporary name).
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import torch
from safetensors.torch import load_file

from attgmae.core.constants import TRUST_FLAG
from attgmae.core.errors import InputError
from attgmae.core.files import atomic_path

SAFE_GLOBALS = [argparse.Namespace]
# Wrappers that training code adds in front of a model's own parameter names.
WRAPPER_PREFIXES = ("module.", "backbone.", "encoder.")


class CheckpointError(InputError):
    """A weights or checkpoint file that cannot be read or used; the message names the file."""


class CheckpointNotFound(CheckpointError, FileNotFoundError):
    """The file is not there."""


class CheckpointUnreadable(CheckpointError):
    """The file is damaged or not a checkpoint at all (cut short, a disk that filled, another
    kind of file): what it held is lost, so a resuming run may fall back to an older one."""


class CheckpointUntrusted(CheckpointError):
    """The file is readable but holds Python objects beyond tensors, and unpickling those can run
    code: refused unless the user says it is trusted. Nothing is wrong with the file, so a
    resuming run must never skip it for an older one."""


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def load_torch_file(path, trusted: bool = False, what: str = "checkpoint"):
    """Read ``path`` (.safetensors or a torch pickle) on the CPU -> what it holds.

    ``what`` names the file in errors ("checkpoint", "weights"). CheckpointNotFound when it is
    not there, CheckpointUnreadable when it cannot be read, CheckpointUntrusted when it holds
    objects beyond tensors and ``trusted`` is false (all three are CheckpointError).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointNotFound(f"{path}: {what} file not found")
    try:
        if path.suffix == ".safetensors":
            return load_file(str(path), device="cpu")
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 (torch and safetensors raise many types)
        # A pickle that names a class (``module.Name``) is whole but not tensors-only; bytes
        # that merely decode as a GLOBAL opcode (a damaged or foreign file) name no such thing.
        unsafe = re.search(r"Unsupported global: GLOBAL ([A-Za-z_]\w*(?:\.\w+)+)\b", str(err))
        if unsafe is None:
            raise CheckpointUnreadable(
                f"{path}: not a readable {what} file ({type(err).__name__}: {_first_line(err)})"
            ) from None
        if not trusted:
            raise CheckpointUntrusted(
                f"{path}: holds Python objects beyond tensors ({unsafe.group(1)}), and loading "
                f"those can run code; if you trust where the file comes from, pass {TRUST_FLAG}"
            ) from None
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # noqa: BLE001
        raise CheckpointUnreadable(
            f"{path}: not a readable {what} file ({type(err).__name__}: {_first_line(err)})"
        ) from None


def save_torch_file(obj, path) -> Path:
    """``torch.save(obj)`` to ``path``, atomically: a run killed or out of disk while saving
    leaves the previous file whole (and says which file and what to do)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        try:
            torch.save(obj, handle)
        except RuntimeError as err:
            # A write that failed midway: torch's zip writer, closing, raises its own error
            # ("unexpected pos") over the file's OSError; the OSError says what happened.
            refused = _os_error_in(err)
            if refused is None:
                raise
            raise refused from None
    return Path(path)


def _os_error_in(err: BaseException) -> OSError | None:
    """The OSError ``err`` was raised while handling, if any."""
    seen = err.__context__
    while seen is not None and not isinstance(seen, OSError):
        seen = seen.__context__
    return seen


def strip_prefixes(state: dict, prefixes=WRAPPER_PREFIXES) -> dict:
    """Parameter names without the wrappers training code puts in front of them
    (``module.`` of DDP, ``backbone.`` of DINO, ``encoder.``), however they are nested."""
    stripped = {}
    for key, value in state.items():
        changed = True
        while changed:
            changed = False
            for prefix in prefixes:
                if key.startswith(prefix):
                    key, changed = key[len(prefix) :], True
        stripped[key] = value
    return stripped


def tensors_only(state: dict) -> dict:
    """The tensor entries of a state dict (drops counters and other values stored beside them)."""
    return {key: value for key, value in state.items() if isinstance(value, torch.Tensor)}
