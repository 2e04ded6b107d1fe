"""Which checkpoint a run continues from, and whether it belongs to this run: one rule for every
command that resumes (``attg-train``, the runs of ``attgmae.engine``, the linear probe).

- A run continues from its output folder by default: ``checkpoint-last.pth``, else the newest
  readable ``checkpoint-N.pth`` (``attgmae.checkpoint.load_latest_checkpoint``: only a damaged
  file is skipped, never one refused for trust). ``resume`` names another checkpoint instead.
- A fresh start (``auto_resume`` off) into a folder that holds checkpoints would overwrite a
  previous run's: refused unless ``overwrite``, which removes them first (so a crash of the new
  run can never resume from the old one).
- The settings that define a run (every one that changes its result; each command declares its
  own, ``DEFINES_RUN`` in its config, plus what it resolves: the effective batch, the absolute
  lr, the inputs' digests) travel in the checkpoints (``resume.settings``). A resume with other
  values is refused, naming each (old -> new), unless ``accept_changed`` names it; an accepted
  change is recorded in the run's history (``resume.history``, and the command's config.json):
  when, which setting, old, new. ``epochs`` may change (to extend a run, as MAE users do): it
  is logged and recorded, with what the schedules become.
"""

from __future__ import annotations

import datetime as _dt
import json
from collections.abc import Callable, Iterable
from pathlib import Path

from attgmae.checkpoint import (
    LAST_NAME,
    load_checkpoint,
    load_latest_checkpoint,
    numbered_checkpoints,
)
from attgmae.core.errors import InputError

FREE_CHANGES = ("epochs",)  # settings a resume may change without being told
# Resolved settings that follow from others: accepting a change of one of these sources accepts
# what follows from it (another --batch_size changes the effective batch, and so the lr).
DERIVED_FROM = {
    "accum_iter": ("batch_size", "eff_batch_size"),
    "eff_batch_size": ("batch_size", "accum_iter"),
    "lr": ("blr", "batch_size", "accum_iter", "eff_batch_size"),
    "tau": ("tau_schedule",),
    "tau_end": ("tau_schedule",),
}


def find_checkpoint(output_dir, *, resume=None, auto_resume: bool = True, overwrite: bool = False,
                    trusted: bool = False, is_main: bool = True, log=print,
                    read: Callable[[Path, bool], dict] = load_checkpoint
                    ) -> tuple[Path, dict] | None:  # fmt: skip
    """(path, checkpoint) to continue from: ``resume``, else (``auto_resume``) the newest
    readable checkpoint of ``output_dir``; None to start from scratch. InputError when a fresh
    start would overwrite a previous run's checkpoints and ``overwrite`` is not given; with it,
    rank 0 (``is_main``) removes them."""
    if resume:
        return Path(resume), read(Path(resume), trusted)
    if not output_dir:
        return None
    if auto_resume:
        return load_latest_checkpoint(output_dir, trusted, warn=log, read=read)
    previous = previous_checkpoints(output_dir)
    if previous and not overwrite:
        raise InputError(
            f"{output_dir} holds a previous run's checkpoints ({previous[0].name}"
            f"{f' and {len(previous) - 1} more' if len(previous) > 1 else ''}): a fresh start "
            "would overwrite them. Leave out --no_auto_resume to continue that run, pass "
            "--overwrite to start over (they are deleted), or choose another --output_dir"
        )
    if previous and is_main:
        for path in previous:
            path.unlink(missing_ok=True)
        log(f"--overwrite: removed the previous run's {len(previous)} checkpoints in {output_dir}")
    return None


def previous_checkpoints(output_dir) -> list[Path]:
    """The checkpoints a run leaves in ``output_dir``: ``checkpoint-last.pth`` and
    ``checkpoint-N.pth`` (what resuming reads)."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return []
    last = output_dir / LAST_NAME
    return ([last] if last.is_file() else []) + numbered_checkpoints(output_dir)


def jsonable(value):
    """``value`` as it reads back from JSON (tuples become lists), so settings compare equal
    after a trip through a checkpoint or config.json."""
    return json.loads(json.dumps(value, default=str))


def config_settings(cfg, **resolved) -> dict:
    """The settings that define a run: ``cfg``'s fields named in its ``DEFINES_RUN``, then
    ``resolved`` (values the command works out: the absolute lr, the inputs' digests) over them."""
    return jsonable({**{name: getattr(cfg, name) for name in cfg.DEFINES_RUN}, **resolved})


def setting_name(text: str) -> str:
    """``--batch-size``, ``batch_size`` -> ``batch_size``."""
    return text.strip().lstrip("-").replace("-", "_")


def saved_settings(ckpt: dict) -> tuple[dict | None, list]:
    """(the settings a checkpoint was written with, its history of accepted changes); None
    when it records none (official MAE checkpoints). Checkpoints written before the settings
    were recorded hold the inputs' ``fingerprint``."""
    state = ckpt.get("resume") or {}
    saved = state.get("settings", state.get("fingerprint"))
    return saved, list(state.get("history") or [])


def check_settings(path, ckpt: dict, current: dict, accept: Iterable[str] = (), log=print,
                   epochs_note: str = "") -> list[dict]:  # fmt: skip
    """The run's history after resuming ``ckpt`` (from ``path``) with the settings ``current``.

    A setting both record with other values is refused (InputError naming each, old -> new)
    unless it is in ``FREE_CHANGES`` or ``accept`` (or follows from an accepted one,
    ``DERIVED_FROM``); each change kept is logged and appended to
    the history (``{"when", "setting", "old", "new"}``). ``epochs_note`` says what the schedules
    become when ``epochs`` changes. Settings one side does not record are not compared.
    """
    saved, history = saved_settings(ckpt)
    accepted = {setting_name(name) for name in accept if setting_name(name)}
    unknown = sorted(accepted - set(current))
    if unknown:
        raise InputError(
            f"--accept_changed {','.join(unknown)}: not a setting of this run (its settings: "
            f"{', '.join(sorted(current))})"
        )
    if saved is None:
        return history
    current = jsonable(current)
    changed = [name for name in current if name in saved and saved[name] != current[name]]
    changed.sort(key=lambda name: name not in FREE_CHANGES)  # (stable: --epochs said first)
    grown = True
    while grown:  # what follows from an accepted change is accepted with it
        follows = {n for n in changed if set(DERIVED_FROM.get(n, ())) & accepted}
        grown, accepted = bool(follows - accepted), accepted | follows
    refused = [name for name in changed if name not in FREE_CHANGES and name not in accepted]
    if refused:
        changes = "; ".join(f"{n} {saved[n]!r} -> {current[n]!r}" for n in refused)
        # what to accept: the changes given, not what follows from them
        roots = [n for n in refused if not set(DERIVED_FROM.get(n, ())) & set(refused)]
        raise InputError(
            f"{path} belongs to another run (different {', '.join(refused)}): {changes}. Rerun "
            f"with the settings it was made with, use another --output_dir, start over "
            f"(--no_auto_resume --overwrite), or accept the change with --accept_changed "
            f"{','.join(roots)} (recorded in the run's history)"
        )
    when = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    for name in changed:
        old, new = saved[name], current[name]
        history.append({"when": when, "setting": name, "old": old, "new": new})
        if name == "epochs":
            note = f": {epochs_note}" if epochs_note else ""
            log(f"resuming with --epochs {new} instead of {old}{note}")
        else:
            log(f"resuming with {name} {new!r} instead of {old!r} (--accept_changed; recorded)")
    return history
