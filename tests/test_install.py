"""The package installs cleanly and every module imports."""

from __future__ import annotations

import importlib
import pkgutil
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def all_module_names() -> list[str]:
    import attgmae.cli
    import attgmae.pipelines

    names = []
    for package in (attgmae, attgmae.cli, attgmae.pipelines):
        names.append(package.__name__)
        for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
            names.append(info.name)
    return sorted(set(names))


def test_every_module_imports():
    names = all_module_names()
    assert "attgmae.store.writer" in names and "attgmae.cli.maps" in names
    assert "attgmae.pipelines.show" in names
    for name in names:
        importlib.import_module(name)


def test_wheel_installs_cli_and_pipelines_under_the_attgmae_namespace(tmp_path):
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(REPO),
        ],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("attgmae-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top_level = {n.split("/", 1)[0] for n in names if not n.startswith("attgmae-")}
    assert top_level == {"attgmae"}
    assert "attgmae/cli/maps.py" in names and "attgmae/pipelines/show.py" in names
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    for script in (
        "attg-maps = attgmae.cli.maps:main",
        "attg-train = attgmae.cli.train:main",
        "attg-eval = attgmae.cli.eval:main",
    ):
        assert script in text


def test_flags_accept_snake_and_kebab_spellings():
    from attgmae.cli._args import make_parser

    parser = make_parser("x", "test")
    parser.add_argument("--batch_size", type=int, default=1)
    parser.add_argument("--warmup-epochs", type=int, default=1)
    parser.add_argument_group("optim").add_argument("--min_lr", type=float, default=0.0)
    assert parser.parse_args(["--batch-size", "4", "--warmup_epochs", "2"]).batch_size == 4
    assert parser.parse_args(["--batch_size", "5", "--warmup-epochs", "3"]).warmup_epochs == 3
    assert parser.parse_args(["--min-lr", "0.5"]).min_lr == 0.5


def test_every_command_accepts_both_spellings_of_every_flag():
    import argparse

    from attgmae.cli import eval as eval_cli
    from attgmae.cli import maps as maps_cli
    from attgmae.cli import train as train_cli

    parsers = []
    for module in (maps_cli, train_cli, eval_cli):
        parsers.append(module.build_parser())
    checked = 0
    while parsers:
        parser = parsers.pop()
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                parsers.extend(action.choices.values())
            long_names = [o for o in action.option_strings if o.startswith("--")]
            for name in long_names:
                if "_" in name or "-" in name[2:]:
                    other = "--" + (
                        name[2:].replace("_", "-") if "_" in name else name[2:].replace("-", "_")
                    )
                    assert other in action.option_strings, (parser.prog, name)
                    checked += 1
    assert checked > 50
