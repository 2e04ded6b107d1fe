"""Every flag of every command has help, and shows its default once, in one style; building a
parser, --help, --version and a bad flag import no torch (start-up time itself is measured in
benchmarks/startup.py, never asserted)."""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys

import pytest

from attgmae.cli import eval as eval_cli
from attgmae.cli import maps as maps_cli
from attgmae.cli import train as train_cli
from attgmae.cli._args import HelpFormatter, add_switch, make_parser, shown_default

COMMANDS = {"attg-maps": maps_cli, "attg-train": train_cli, "attg-eval": eval_cli}


def every_parser():
    """(name, parser) of every command and subcommand."""
    todo = [(name, module.build_parser()) for name, module in COMMANDS.items()]
    while todo:
        name, parser = todo.pop()
        yield name, parser
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                todo.extend((f"{name} {sub}", p) for sub, p in action.choices.items())


def rendered_help(parser, action) -> str:
    formatter = parser._get_formatter()
    return formatter._expand_help(action) if action.help else ""


def test_every_flag_has_help_and_its_default_once_in_one_style():
    problems, flags = [], 0
    for name, parser in every_parser():
        assert parser.formatter_class is HelpFormatter, name
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                continue
            flags += 1
            where = f"{name} {'/'.join(action.option_strings) or action.dest}"
            text = rendered_help(parser, action)
            if not text or text == argparse.SUPPRESS:
                problems.append(f"{where}: no help")
                continue
            if "[default" in text or "default " in text.replace("default: ", ""):
                problems.append(f"{where}: a default not in the '(default: X)' style: {text!r}")
            if text.count("default") > 1:
                problems.append(f"{where}: default shown more than once: {text!r}")
            if shown_default(action) is not None and "default" in action.help:
                problems.append(f"{where}: default written by hand and by the formatter")
            if "(default: None)" in text:
                problems.append(f"{where}: shows a None default")
    assert not problems, "\n".join(problems)
    assert flags > 300  # every command's flags were walked


def test_defaults_shown_are_the_values_used():
    """A parser that suppresses defaults (finetune) shows its config's, a plain one its own."""
    parser = eval_cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    finetune = sub.choices["finetune"]._option_string_actions
    assert shown_default(finetune["--blr"]) == "0.001"
    assert finetune["--blr"].default is argparse.SUPPRESS
    assert shown_default(finetune["--global_pool"]) == "avg"
    knn = sub.choices["knn"]._option_string_actions
    assert shown_default(knn["--nb_knn"]) == "5 10 20 100 200"
    assert shown_default(knn["--checkpoint_key"]) is None  # unset: its help says what happens
    train = train_cli.build_parser()
    epochs = train._option_string_actions["--epochs"]
    assert rendered_help(train, epochs) == "training epochs (default: 800)"


def test_a_switch_shows_its_state_once_and_its_off_form_names_it():
    parser = make_parser("x", "test")
    add_switch(parser, "pin_mem", True, "pin memory")
    on, off = (a for a in parser._actions if a.dest == "pin_mem")
    assert rendered_help(parser, on) == "pin memory (default: on)"
    assert rendered_help(parser, off) == "turn --pin_mem off"
    assert parser.parse_args(["--no-pin-mem"]).pin_mem is False


def test_version_on_every_command(capsys):
    from attgmae.cli._args import package_version

    for module, argv in ((maps_cli, []), (train_cli, []), (eval_cli, []), (eval_cli, ["knn"])):
        with pytest.raises(SystemExit) as stop:
            module.build_parser().parse_args([*argv, "--version"])
        assert stop.value.code == 0
        assert capsys.readouterr().out.strip() == f"attgmae {package_version()}"
    assert re.fullmatch(r"\d+\.\d+\.\d+.*", package_version())


# One fresh interpreter builds every parser and answers --help, --version and a bad flag of
# each command; then it lists the heavy modules it imported.
_PROBE = """
import json, sys
from attgmae.cli import eval, maps, train
calls = [(m, argv) for m in (maps, train, eval) for argv in (["--help"], ["--version"], ["--bad"])]
calls += [(eval, [c, "--help"]) for c in ("knn", "linprobe", "finetune", "segment", "taskonomy")]
calls += [(maps, ["generate", "--help"]), (eval, ["knn", "--checkpoint", "c", "--use_cuda", "0"])]
codes = []
for module, argv in calls:
    try:
        codes.append(module.main(argv))
    except SystemExit as stop:
        codes.append(stop.code)
heavy = sorted(m for m in ("torch", "timm", "torchvision") if m in sys.modules)
print(json.dumps({"codes": codes, "heavy": heavy}))
"""


def test_parsers_help_version_and_bad_flags_import_no_torch():
    done = subprocess.run(
        [sys.executable, "-c", _PROBE], capture_output=True, text=True, timeout=120, check=True
    )
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["heavy"] == []
    # --help and --version exit 0, a bad flag or a refused value 2
    assert report["codes"] == [0, 0, 2] * 3 + [0] * 6 + [2]
