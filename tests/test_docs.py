"""The docs' shell examples run as written: a renamed flag breaks the build, not the user.

A fenced ```bash (or ```python) block right after the line ``<!-- runnable on the example set
-->`` is run, in order with the other marked blocks of its page, by bash (-e, -u, pipefail) in a
fresh folder, with this environment's attg-* commands and python first on PATH (a python block
through ``python -``). Such blocks use the built-in example set (`attg-maps make-example`) and
tiny settings; the others (ImageNet paths) are parsed: every attg-* command line of every page
must be one its parser accepts.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MARKER = "<!-- runnable on the example set -->"
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
_BLOCK = re.compile(r"```(bash|python)\n(.*?)\n```", re.S)


def runnable_blocks(text: str, page: str = "page") -> list[str]:
    """The blocks that follow the marker, as bash (a python block fed to ``python -``);
    ValueError when a marker has no bash or python block."""
    blocks = []
    for part in text.split(MARKER)[1:]:
        match = _BLOCK.match(part.lstrip("\n"))
        if match is None:
            raise ValueError(f"{page}: '{MARKER}' is not followed by a ```bash or ```python block")
        language, code = match.groups()
        blocks.append(code if language == "bash" else f"python - <<'PYTHON'\n{code}\nPYTHON")
    return blocks


def test_marker_needs_a_bash_block():
    text = f"a\n{MARKER}\n```bash\necho one\n```\n{MARKER}\n```\necho two\n```\n"
    with pytest.raises(ValueError, match="not followed"):
        runnable_blocks(text)
    assert runnable_blocks(f"{MARKER}\n\n```bash\necho one\n```\n") == ["echo one"]
    python = runnable_blocks(f"{MARKER}\n```python\nprint(1)\n```\n")
    assert python == ["python - <<'PYTHON'\nprint(1)\nPYTHON"]


PAGES_WITH_EXAMPLES = {
    page.name: runnable_blocks(page.read_text(encoding="utf-8"), page.name)
    for page in PAGES
    if MARKER in page.read_text(encoding="utf-8")
}


def test_the_user_facing_pages_have_runnable_examples():
    expected = {
        "generate.md",
        "maps.md",
        "store-format.md",
        "training.md",
        "evaluation.md",
        "python-api.md",
    }
    assert expected <= set(PAGES_WITH_EXAMPLES)


@pytest.mark.parametrize("page", sorted(PAGES_WITH_EXAMPLES))
def test_runnable_examples_run(page, tmp_path):
    script = "set -euo pipefail\n" + "\n".join(PAGES_WITH_EXAMPLES[page]) + "\n"
    env = dict(os.environ, OMP_NUM_THREADS="1", MPLBACKEND="Agg")
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    done = subprocess.run(["bash", "-c", script], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)  # fmt: skip
    tail = (done.stdout + done.stderr)[-4000:]
    assert done.returncode == 0, f"{page}: the examples failed (exit {done.returncode}):\n{tail}"


def _anchor(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def test_links_between_pages_point_at_existing_pages_and_headings():
    broken = []
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        for target, anchor in re.findall(r"\]\(([\w./-]+\.md)(?:#([\w-]+))?\)", text):
            linked = (page.parent / target).resolve()
            if not linked.is_file():
                broken.append(f"{page.name}: {target} does not exist")
                continue
            headings = re.findall(r"^#+ (.+)$", linked.read_text(encoding="utf-8"), re.M)
            if anchor and anchor not in {_anchor(h) for h in headings}:
                broken.append(f"{page.name}: {target}#{anchor} names no heading")
    assert not broken, "\n".join(broken)


def test_tests_named_in_the_docs_exist():
    """`test_file.py::test_name` and `::test_name` (same file as the last one named) must exist."""
    missing = []
    for page in PAGES:
        current = None
        for file, name in re.findall(r"(test_\w+\.py)?::(test_\w+)", page.read_text("utf-8")):
            current = file or current
            source = REPO / "tests" / current
            if not source.is_file() or f"def {name}(" not in source.read_text("utf-8"):
                missing.append(f"{page.name}: {current}::{name}")
    assert not missing, "\n".join(missing)


def shell_blocks(text: str) -> list[str]:
    """The fenced blocks of ``text`` without a language or marked bash / sh, fence by fence."""
    blocks, current, language = [], None, None
    for line in text.splitlines():
        if line.startswith("```"):
            if current is None:
                current, language = [], line[3:].strip()
            else:
                if language in ("", "bash", "sh"):
                    blocks.append("\n".join(current))
                current = None
        elif current is not None:
            current.append(line)
    return blocks


def documented_commands(text: str):
    """Every attg-* command line of the fenced blocks of ``text`` as (command, argv): lines
    joined at their backslashes, ``$VAR`` replaced by 1, comments, redirections, a final ``&``
    and lines with placeholders (``...``, ``[``, ``<``, pipes) left out."""
    for block in shell_blocks(text):
        for line in re.sub(r"\\\n\s*", " ", block).splitlines():
            line = re.sub(r"\s\d?>\s*\S+", "", line.split(" #")[0]).strip()
            line = re.sub(r"\s&$", "", line)  # a job started in the background
            for part in re.split(r"\s*(?:&&|;)\s*", line):
                if "attg" not in part or any(mark in part for mark in ("...", "[", "<", "|")):
                    continue
                words = shlex.split(re.sub(r"\$\{?\w+\}?", "1", part))
                for i, word in enumerate(words):
                    name = (
                        "attg-" + word.rsplit(".", 1)[-1]
                        if word.startswith("attgmae.cli.")
                        else Path(word).name
                    )
                    if name in ("attg-maps", "attg-train", "attg-eval"):
                        yield name, words[i + 1 :]
                        break


def test_documented_commands_parse():
    """A flag renamed or removed breaks the docs' ImageNet commands too, not only the runnable
    ones: each line must parse (nothing runs)."""
    from attgmae.cli import eval as eval_cli
    from attgmae.cli import maps as maps_cli
    from attgmae.cli import train as train_cli

    parsers = {"attg-maps": maps_cli, "attg-train": train_cli, "attg-eval": eval_cli}
    bad, seen = [], 0
    for page in PAGES:
        for name, argv in documented_commands(page.read_text(encoding="utf-8")):
            if not argv or argv[0] in ("--help", "--version", "-h"):
                continue
            seen += 1
            err = io.StringIO()
            try:
                with contextlib.redirect_stderr(err):
                    parsers[name].build_parser().parse_args(argv)
            except SystemExit:
                bad.append(f"{page.name}: {name} {' '.join(argv)[:90]}: {err.getvalue()[-160:]}")
    assert not bad, "\n".join(bad)
    assert seen > 60


def test_the_masking_ratio_and_random_map_recipes_are_the_papers():
    """docs/reproduce.md runs Tables 8 and 9 at the supplement's settings: 400 epochs, tau 0.75
    without scheduling, TokenCut maps (random maps for Table 8's control), ratios 0.7 / 0.75 /
    0.8."""
    from attgmae.cli import train as train_cli

    text = (REPO / "docs" / "reproduce.md").read_text(encoding="utf-8")
    section = text[text.index("## 6. Ablations") :]
    runs = [argv for name, argv in documented_commands(section) if name == "attg-train"]
    assert len(runs) == 2
    for argv, maps in zip(runs, ("maps/tokencut.zarr", "maps/random.zarr")):
        args = train_cli.build_parser().parse_args(argv)
        assert (args.epochs, args.tau_schedule, args.tau, args.maps) == (
            400,
            "constant",
            0.75,
            maps,
        )
    assert "for RATIO in 0.7 0.75 0.8; do" in section and "--mask_ratio $RATIO" in section


@pytest.mark.parametrize("page, command", [("generate.md", ("maps", "generate")),
                                           ("finetune.md", ("eval", "finetune"))])  # fmt: skip
def test_flag_tables_name_every_flag(page, command):
    """The pages with a table of a command's flags name every flag the command has."""
    import argparse
    import importlib

    module, name = command
    parser = importlib.import_module(f"attgmae.cli.{module}").build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    text = (REPO / "docs" / page).read_text(encoding="utf-8")
    missing = [
        action.option_strings[0]
        for action in sub.choices[name]._actions
        if action.option_strings
        and action.option_strings[0] not in ("-h", "--version")
        and not re.search(re.escape(action.option_strings[0]) + r"(?![\w-])", text)
    ]
    assert not missing, f"docs/{page} does not name {missing}"
