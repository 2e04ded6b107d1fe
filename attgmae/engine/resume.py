"""Which checkpoint a supervised run continues from, and whether it belongs to this run."""

from __future__ import annotations

from pathlib import Path

from attgmae.checkpoint import load_checkpoint, load_latest_checkpoint
from attgmae.core.errors import InputError
from attgmae.engine.config import RunConfig


def find_checkpoint(cfg: RunConfig, log=print) -> tuple[Path, dict] | None:
    """(path, checkpoint) to continue from: ``cfg.resume``, else (``auto_resume``) the newest
    readable checkpoint of ``cfg.output_dir``; None to start from scratch."""
    if cfg.resume:
        return Path(cfg.resume), load_checkpoint(cfg.resume, cfg.trust_checkpoint)
    if cfg.auto_resume and cfg.output_dir:
        return load_latest_checkpoint(cfg.output_dir, cfg.trust_checkpoint, warn=log)
    return None


def check_fingerprint(path, ckpt: dict, fingerprint: dict | None) -> None:
    """InputError when ``ckpt`` was written by a run made of other inputs (other pretrained
    weights, another data subset). Checkpoints that record none (official ones) pass."""
    saved = (ckpt.get("resume") or {}).get("fingerprint")
    if fingerprint is None or saved is None or saved == fingerprint:
        return
    differ = sorted(k for k in {**saved, **fingerprint} if saved.get(k) != fingerprint.get(k))
    raise InputError(
        f"{path} belongs to another run (different {', '.join(differ)}): use another output "
        f"directory, or start over without auto-resume"
    )
