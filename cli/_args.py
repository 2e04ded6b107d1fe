"""Shared argparse helpers: both flag spellings, one help style, ``--version``, the error exit.

Every flag is accepted both as ``--snake_case`` and as ``--kebab-case``: official MAE users type
``--batch_size``, shell users ``--batch-size``. Flags are declared once (in either spelling) and
the other spelling is added as an alias. Abbreviations are off: ``--c`` never means
``--checkpoint`` today and another flag tomorrow (and ``--config`` is read before parsing).

Help: every flag has a help text, and its default is shown once, at the end, as
``(default: X)``, by ``HelpFormatter``: from the flag's default, or from ``show_default`` where
the parser suppresses defaults (finetune, segment, taskonomy: only the flags given reach the
config). A flag whose default is None shows none (its help says what unset means); a switch
shows its state only when a ``--no_`` form turns it off (``add_switch``).

Nothing here imports torch: every ``--help``, ``--version`` and bad flag answers at once.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import select
import sys

from attgmae.core.errors import EXIT_FAILED, AttgError, os_error_line, user_message


def package_version() -> str:
    """The installed distribution's version (setup.cfg), else the package's own."""
    from importlib import metadata  # tens of ms: only when asked

    try:
        return metadata.version("attgmae")
    except metadata.PackageNotFoundError:
        from attgmae import __version__

        return __version__


class _VersionAction(argparse.Action):
    """``--version``: prints ``attgmae X.Y.Z`` and exits 0."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, **kwargs):
        kwargs.update(nargs=0, default=argparse.SUPPRESS)
        super().__init__(option_strings, argparse.SUPPRESS, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        parser._print_message(f"attgmae {package_version()}\n", sys.stdout)
        parser.exit()


class HelpFormatter(argparse.HelpFormatter):
    """Each flag's default shown once, in one style; a description of several lines (examples)
    kept as written, a one-line one wrapped."""

    def _fill_text(self, text, width, indent):
        if "\n" in text.strip():
            return "".join(indent + line for line in text.splitlines(keepends=True))
        return super()._fill_text(text, width, indent)

    def add_usage(self, usage, actions, groups, prefix=None):
        # refused flags (attgmae.cli._habits) are listed in the help, not in the usage line
        actions = [a for a in actions if not getattr(a, "refused", False)]
        super().add_usage(usage, actions, groups, prefix)

    def _get_help_string(self, action):
        text = action.help or ""
        shown = shown_default(action)
        if shown is None:
            return text
        return f"{text} (default: {shown.replace('%', '%%')})"


def shown_default(action: argparse.Action) -> str | None:
    """What ``--help`` shows as ``action``'s default, or None for nothing."""
    if hasattr(action, "shown_default"):
        value = action.shown_default
    elif action.nargs == 0 or action.default in (None, argparse.SUPPRESS):
        return None  # a switch or a constant; a None default is described by its help
    else:
        value = action.default
    if value is None or value == "":
        return None
    if isinstance(value, (list, tuple)):
        return " ".join(str(v) for v in value)
    return str(value)


def show_default(action: argparse.Action, value) -> argparse.Action:
    """Show ``value`` as ``action``'s default (None: nothing), whatever ``action.default`` is."""
    action.shown_default = value
    return action


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
    """ArgumentParser whose long options (also in argument groups) answer to both spellings,
    with ``HelpFormatter``, no abbreviations and ``--version``."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)
        self.add_argument(
            "--version", action=_VersionAction, help="print the installed attgmae version and exit"
        )

    def add_argument(self, *names, **kwargs):
        spelled, kwargs = _with_both_spellings(names, kwargs)
        return super().add_argument(*spelled, **kwargs)

    def add_argument_group(self, *args, **kwargs):
        group = _BothSpellingsGroup(self, *args, **kwargs)
        self._action_groups.append(group)
        return group


def make_parser(prog: str, description: str) -> BothSpellingsParser:
    return BothSpellingsParser(prog=prog, description=description)


def add_subparsers(parser: argparse.ArgumentParser):
    """Subcommands whose parsers take both flag spellings, the help style and --version too."""
    return parser.add_subparsers(
        dest="command",
        required=True,
        metavar="COMMAND",
        parser_class=BothSpellingsParser,
        help="one of the commands below; COMMAND --help for its flags",
    )


def add_switch(parser, name: str, default: bool, help: str) -> None:
    """``--name`` turns a setting on and ``--no_name`` off (both spellings each); the help of
    ``--name`` shows whether it is on by default."""
    dest = name.replace("-", "_")
    on = parser.add_argument(
        f"--{name}", action="store_true", default=default, dest=dest, help=help
    )
    show_default(on, "on" if default else "off")
    parser.add_argument(f"--no_{name}", action="store_false", dest=dest, help=f"turn --{name} off")


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
    fields = {f.name: f for f in dataclasses.fields(config_class)}
    values = {name: value for name, value in vars(args).items() if name in fields}
    for name, value in values.items():  # a tuple field read back from JSON (--config) as a list
        if isinstance(value, list) and isinstance(fields[name].default, tuple):
            values[name] = tuple(value)
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
