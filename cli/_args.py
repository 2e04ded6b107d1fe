"""Shared argparse helpers.

Every flag is accepted both as ``--snake_case`` and as ``--kebab-case``: official MAE users type
``--batch_size``, shell users ``--batch-size``. Flags are declared once (in either spelling) and
the other spelling is added as an alias.
"""

from __future__ import annotations

import argparse


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


def add_subparsers(parser: argparse.ArgumentParser):
    """Subcommands whose parsers accept both flag spellings too."""
    return parser.add_subparsers(dest="command", required=True, parser_class=BothSpellingsParser)


class CliError(Exception):
    """A user-facing error: printed without a traceback, exit code 2 (bad input)."""


def run_main(fn, argv=None) -> int:
    """Call ``fn(argv)`` turning CliError / FileNotFoundError into a clear message and exit code."""
    import sys

    try:
        code = fn(argv)
    except CliError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return int(code or 0)
