"""scripts/imagenet_subset.py: the small labelled set of the k-NN monitor ($IN1K_SMALL)."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "imagenet_subset.py"


@pytest.fixture(scope="module")
def subset_script():
    spec = importlib.util.spec_from_file_location("imagenet_subset", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if not p.is_dir())


def test_builds_linked_subset_of_chosen_classes(subset_script, example_root, tmp_path):
    dst = tmp_path / "small"
    code = subset_script.main(
        [str(example_root), str(dst), "--classes", "2", "--train_per_class", "4",
         "--val_per_class", "2"]  # fmt: skip
    )
    assert code == 0
    train, val = _files(dst / "train"), _files(dst / "val")
    # 2 classes spread over the 4 sorted ones: the first and the last
    assert {k.split("/")[0] for k in train} == {"circle", "triangle"}
    assert len(train) == 8 and len(val) == 4
    for key in train:
        link = dst / "train" / key
        assert link.is_symlink()
        assert os.path.samefile(link, example_root / "train" / key)
    assert not (tmp_path / "small.partial").exists()
    # the same seed picks the same images
    again = tmp_path / "again"
    subset_script.main([str(example_root), str(again), "--classes", "2", "--train_per_class",
                        "4", "--val_per_class", "2"])  # fmt: skip
    assert _files(again) == _files(dst)


def test_short_class_takes_all_and_warns(subset_script, example_root, tmp_path):
    lines = []
    counts = subset_script.build_subset(
        example_root, tmp_path / "s", classes=4, train_per_class=100, val_per_class=1,
        copy=True, log=lines.append,
    )  # fmt: skip
    assert counts == {"classes": 4, "train": 24, "val": 4}
    assert len(lines) == 4 and "fewer than 100" in lines[0]
    assert not any(p.is_symlink() for p in (tmp_path / "s").rglob("*"))


def test_refuses_existing_output_and_missing_val(subset_script, example_root, tmp_path, capsys):
    dst = tmp_path / "s"
    dst.mkdir()
    assert subset_script.main([str(example_root), str(dst)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    only_train = tmp_path / "only_train"
    (only_train / "train" / "a").mkdir(parents=True)
    assert subset_script.main([str(only_train), str(tmp_path / "x")]) == 2
    assert "val not found" in capsys.readouterr().err
