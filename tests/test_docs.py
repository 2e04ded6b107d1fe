"""The docs' shell examples run as written: a renamed flag breaks the build, not the user.

A fenced ```bash block right after the line ``<!-- runnable on the example set -->`` is run, in
order with the other marked blocks of its page, by bash (-e, -u, pipefail) in a fresh folder,
with this environment's attg-* commands first on PATH. Such blocks use the built-in example set
(`attg-maps make-example`) and tiny settings; the others (ImageNet paths) are only read.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MARKER = "<!-- runnable on the example set -->"
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
_BLOCK = re.compile(r"```bash\n(.*?)\n```", re.S)


def runnable_blocks(text: str, page: str = "page") -> list[str]:
    """The bash blocks that follow the marker; ValueError when a marker has no bash block."""
    blocks = []
    for part in text.split(MARKER)[1:]:
        match = _BLOCK.match(part.lstrip("\n"))
        if match is None:
            raise ValueError(f"{page}: '{MARKER}' is not followed by a ```bash block")
        blocks.append(match.group(1))
    return blocks


def test_marker_needs_a_bash_block():
    text = f"a\n{MARKER}\n```bash\necho one\n```\n{MARKER}\n```\necho two\n```\n"
    with pytest.raises(ValueError, match="not followed"):
        runnable_blocks(text)
    assert runnable_blocks(f"{MARKER}\n\n```bash\necho one\n```\n") == ["echo one"]


PAGES_WITH_EXAMPLES = {
    page.name: runnable_blocks(page.read_text(encoding="utf-8"), page.name)
    for page in PAGES
    if MARKER in page.read_text(encoding="utf-8")
}


def test_the_user_facing_pages_have_runnable_examples():
    expected = {"generate.md", "maps.md", "store-format.md", "training.md", "evaluation.md"}
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
