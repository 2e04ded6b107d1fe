"""Shared argparse helpers.

Every flag is accepted both as ``--snake_case`` and as ``--kebab-case``: official MAE users type
``--batch_size``, shell users ``--batch-size``. Flags are declared once (in either spelling) and
the other spelling is added as an alias.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

from attgmae.core.errors import AttgError, user_message


def _with_both_spellings(names, kwargs):
    """Add the other spelling (_ <-> -) of every long option; dest from the first name."""
    spelled = list(names)
    for name in names:
        if name.startswith("--"):
            body = name[2:]
            for alt in (body.replace("_", "-"), body.replace("-", "_")):
                if "--" + alt not in spelled:
                    spelled.append("--" + alt)
    if spelled and spelled[0].startswith("--") and "dest" not in kwargs:
        kwargs["dest"] = spelled[0][2:].replace("-", "_")
    return spelled, kwargs


class _BothSpellingsGroup(argparse._ArgumentGroup):
    def add_argument(self, *names, **kwargs):
        return super().add_argument(*_with_both_spellings(names, kwargs)[0], **kwargs)


class BothSpellingsParser(argparse.ArgumentParser):
    """ArgumentParser whose long options (also in argument groups) answer to both spellings."""

    def add_argument(self, *names, **kwargs):
        spelled, kwargs = _with_both_spellings(names, kwargs)
        return super().add_argument(*spelled, **kwargs)

    def add_argument_group(self, *args, **kwargs):
        group = _BothSpellingsGroup(self, *args, **kwargs)
        self._action_groups.append(group)
        return group


def make_parser(prog: str, description: str) -> BothSpellingsParser:
    return BothSpellingsParser(
        prog=prog,
        description=description,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )


class _CommandParser(BothSpellingsParser):
    """A subcommand's parser: both spellings, defaults shown in --help."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", argparse.ArgumentDefaultsHelpFormatter)
        super().__init__(*args, **kwargs)


def add_subparsers(parser: argparse.ArgumentParser):
    """Subcommands whose parsers accept both flag spellings too and show their defaults."""
    return parser.add_subparsers(dest="command", required=True, parser_class=_CommandParser)


def add_switch(parser, name: str, default: bool, help: str) -> None:
    """``--name`` turns a setting on and ``--no_name`` off (both spellings each)."""
    dest = name.replace("-", "_")
    parser.add_argument(f"--{name}", action="store_true", default=default, dest=dest, help=help)
    parser.add_argument(f"--no_{name}", action="store_false", dest=dest, help="(turns it off)")


def name_list(text: str) -> tuple[str, ...]:
    """A flag's comma-separated names (``--accept_changed blr,batch_size``) as a tuple."""
    return tuple(name.strip() for name in text.split(",") if name.strip())


ACCEPT_CHANGED_HELP = (
    "resume although these settings (comma-separated, e.g. blr,batch_size) differ from the "
    "checkpoint's; each change is recorded in the run's history (config.json and checkpoints)"
)
OVERWRITE_HELP = (
    "with --no_auto_resume: start over although OUTPUT_DIR holds a previous run's checkpoints "
    "(they are deleted)"
)


def config_from_args(config_class, args: argparse.Namespace, **overrides):
    """A config dataclass from parsed flags: every field from the flag of the same name, unless
    ``overrides`` gives it (flags whose value needs converting)."""
    names = {f.name for f in dataclasses.fields(config_class)}
    values = {name: value for name, value in vars(args).items() if name in names}
    return config_class(**{**values, **overrides})


def run_main(fn, argv=None) -> int:
    """Call ``fn(argv)``: the one place where errors become messages and exit codes for every
    command (an AttgError: its message and ``exit_code``; Ctrl-C: 130)."""
    try:
        code = fn(argv)
    except AttgError as err:
        print(f"error: {user_message(err)}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return int(code or 0)
