"""Shared argparse helpers.

Every flag is accepted both as ``--snake_case`` and as ``--kebab-case``: official MAE users type
``--batch_size``, shell users ``--batch-size``. Flags are declared once (in either spelling) and
the other spelling is added as an alias.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import select
import sys

from attgmae.core.errors import EXIT_FAILED, AttgError, os_error_line, user_message


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


def config_from_args(config_class, args: argparse.Namespace, **overrides):
    """A config dataclass from parsed flags: every field from the flag of the same name, unless
    ``overrides`` gives it (flags whose value needs converting)."""
    names = {f.name for f in dataclasses.fields(config_class)}
    values = {name: value for name, value in vars(args).items() if name in names}
    return config_class(**{**values, **overrides})


def _stdout_closed() -> bool:
    """Whether the reader of stdout has gone (``| head`` has read enough): a pipe without a
    reader polls as an error. Not another broken pipe (a worker's, a socket's)."""
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & (select.POLLERR | select.POLLHUP) for _, events in poller.poll(0))
    except (AttributeError, OSError, ValueError):  # no file behind stdout (a test's capture)
        return False


def run_main(fn, argv=None) -> int:
    """Call ``fn(argv)``: the one place where errors become messages and exit codes for every
    command (an AttgError: its message and ``exit_code``; Ctrl-C: 130).

    Also the last net: an OSError no layer named becomes ``error: <path>: <strerror>``, exit 1,
    not a traceback; a reader of stdout that stopped reading (``| head``) ends the command
    quietly with 0, as ``head`` expects (Python's recipe: stdout then goes to devnull, so the
    flush at exit cannot fail again).
    """
    try:
        code = fn(argv)
        sys.stdout.flush()  # (a broken pipe shows here, not in the interpreter's exit)
    except AttgError as err:
        print(f"error: {user_message(err)}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError as err:
        if not _stdout_closed():
            print(f"error: {os_error_line(err)}", file=sys.stderr)
            return EXIT_FAILED
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as err:
        print(f"error: {os_error_line(err)}", file=sys.stderr)
        return EXIT_FAILED
    return int(code or 0)
