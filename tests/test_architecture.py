"""The layout holds: imports flow one way (cli -> pipelines -> attgmae, the store and core at the
bottom), modules stay small, and ruff finds nothing."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# Folder in the repository -> the package it installs as.
PACKAGES = {"attgmae": "attgmae", "pipelines": "attgmae.pipelines", "cli": "attgmae.cli"}
MAX_MODULE_LINES = 450  # the guide is ~400; beyond this a module holds several jobs


def modules():
    """(dotted module name, path) of every module of the three folders."""
    for folder, package in PACKAGES.items():
        for path in sorted((REPO / folder).rglob("*.py")):
            parts = path.relative_to(REPO / folder).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            yield ".".join((package, *parts)), path


def attgmae_imports(name: str, path: Path) -> set[str]:
    """The attgmae modules ``path`` imports (relative imports resolved)."""
    is_package = path.name == "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("attgmae")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")
                base = base[: len(base) - node.level + (1 if is_package else 0)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.startswith("attgmae"):
                found.add(target)
    return found


def layer(module: str) -> str:
    parts = module.split(".")
    if parts[1:2] in (["cli"], ["pipelines"]):
        return parts[1]
    return "library"


def test_imports_flow_one_way():
    problems = []
    for name, path in modules():
        here = layer(name)
        for target in attgmae_imports(name, path):
            there = layer(target)
            if here == "library" and there != "library":
                problems.append(f"{name} (library) imports {target}")
            if here == "pipelines" and there == "cli":
                problems.append(f"{name} (pipeline) imports {target}")
            if here == "pipelines" and there == "pipelines":
                # A pipeline may use its own parts (generate -> generate_loop), not another's.
                own = name.split(".")[2].split("_")[0]
                if not target.split(".")[2].startswith(own):
                    problems.append(f"{name} imports another pipeline, {target}")
            if name.startswith("attgmae.core") and not target.startswith("attgmae.core"):
                problems.append(f"{name} (core) imports {target}")
            if name.startswith("attgmae.store") and not target.startswith(
                ("attgmae.store", "attgmae.core")
            ):
                problems.append(f"{name} (store) imports {target}")
    assert not problems, "\n".join(problems)


def test_the_checker_sees_violations(tmp_path):
    """The import walk resolves relative imports (a wrong one would pass every module)."""
    module = tmp_path / "writer.py"
    module.write_text("from .layout import X\nfrom ..data.images import decode_rgb\n")
    found = attgmae_imports("attgmae.store.writer", module)
    assert found == {"attgmae.store.layout", "attgmae.data.images"}


def test_modules_stay_small():
    big = [
        f"{name}: {len(path.read_text().splitlines())} lines"
        for name, path in modules()
        if len(path.read_text().splitlines()) > MAX_MODULE_LINES
    ]
    assert not big, f"split these by job: {big}"


def test_ruff_finds_nothing():
    ruff = Path(sys.executable).with_name("ruff")
    if not ruff.exists():
        pytest.fail(f"ruff is not installed beside {sys.executable}: pip install -e '.[test]'")
    folders = ["attgmae", "cli", "pipelines", "tests", "benchmarks", "scripts"]
    result = subprocess.run([ruff, "check", *folders], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:]
