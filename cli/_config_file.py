"""``--config FILE``: the configuration a run recorded, as the defaults of a new run.

Runs record their resolved configuration: ``attg-train``, ``attg-eval finetune``, ``segment``
and ``taskonomy`` in OUTPUT_DIR/config.json (a flat object), ``knn`` and ``linprobe`` in the
``"config"`` entry of their result JSON (``knn_<label>.json``, ``linprobe.json``). With
``--config FILE`` its values become the defaults of the command's flags of the same names, so a
flag typed on the command line wins, and a flag typed also drops the recorded values it competes
with (``--blr`` the recorded absolute ``lr``, one training subset the other kinds, ``--accum_iter``
the recorded ``eff_batch_size`` and back). Left out: values that are no flag of the command
(derived numbers, such as attg-train's ``eff_batch_size`` or ``tau_plan``) and the launch's own
(``world_size``, ``local_rank``: the launcher decides them again).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from attgmae.core.errors import InputError

CONFIG_FLAG = "--config"
LAUNCH_KEYS = frozenset({"world_size", "local_rank"})
COMPETING = {
    "blr": ("lr",),
    "subset_file": ("percent", "shots"),
    "percent": ("subset_file", "shots"),
    "shots": ("subset_file", "percent"),
    "accum_iter": ("eff_batch_size",),
    "eff_batch_size": ("accum_iter",),
}


def add_config_flag(parser) -> None:
    parser.add_argument(
        CONFIG_FLAG,
        metavar="FILE",
        default=None,
        help="a run's config.json (or its knn_*.json / linprobe.json): its values become the "
        "defaults of these flags; flags given on the command line win",
    )


def config_path(argv: list[str]) -> str | None:
    """The value of ``--config`` in ``argv`` (None when absent)."""
    for i, token in enumerate(argv):
        if token == "--":
            break
        if token == CONFIG_FLAG:
            if i + 1 >= len(argv):
                raise InputError(f"{CONFIG_FLAG} needs a FILE")
            return argv[i + 1]
        if token.startswith(CONFIG_FLAG + "="):
            return token.split("=", 1)[1]
    return None


def read_config(path) -> dict:
    """The recorded flags of ``path``: a JSON object, or the ``"config"`` object inside one."""
    path = Path(path)
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{CONFIG_FLAG} {path}: no such file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputError(f"{CONFIG_FLAG} {path}: not a readable JSON file ({err})") from None
    if isinstance(values, dict) and isinstance(values.get("config"), dict):
        values = values["config"]
    if not isinstance(values, dict):
        raise InputError(f"{CONFIG_FLAG} {path}: expected a JSON object of flag values")
    return values


def _given_dests(parser: argparse.ArgumentParser, argv: list[str]) -> set[str]:
    """Destinations of the flags typed in ``argv``."""
    dests = set()
    for token in argv:
        if token == "--":
            break
        action = parser._option_string_actions.get(token.split("=", 1)[0])
        if action is not None:
            dests.add(action.dest)
    return dests


def command_parser(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.ArgumentParser:
    """The parser of the subcommand named in ``argv`` (``parser`` itself when it has none)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for token in argv:
                if token in action.choices:
                    return action.choices[token]
    return parser


def apply_config(parser: argparse.ArgumentParser, values: dict, argv: list[str]) -> list[str]:
    """Make ``values`` the defaults of ``parser``'s flags (not required any more); returns the
    names applied."""
    given = _given_dests(parser, argv)
    dropped = {name for dest in given for name in COMPETING.get(dest, ())}
    applied = []
    for action in parser._actions:
        dest = action.dest
        if not action.option_strings or dest in LAUNCH_KEYS | dropped | {"config"}:
            continue
        if dest not in values:
            continue
        value = values[dest]
        if action.nargs in ("+", "*") and value is not None and not isinstance(value, list):
            value = [value]  # one recorded checkpoint for a flag that takes several
        action.default = value
        action.required = False
        applied.append(dest)
    return applied


def parse_with_config(parser: argparse.ArgumentParser, argv=None) -> argparse.Namespace:
    """``parser.parse_args(argv)``, with ``--config FILE``'s values as the defaults."""
    import sys

    argv = list(sys.argv[1:] if argv is None else argv)
    path = config_path(argv)
    if path is not None:
        target = command_parser(parser, argv)
        apply_config(target, read_config(path), argv)
    return parser.parse_args(argv)
