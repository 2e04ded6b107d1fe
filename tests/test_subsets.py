"""ImageNet 1% / 10% list files name a training subset."""

import numpy as np
import pytest

from attgmae.core.errors import InputError
from attgmae.eval.subsets import read_subset_file, subset_indices

KEYS = [
    "n01440764/n01440764_10026.JPEG",
    "n01440764/n01440764_10027.JPEG",
    "n01443537/n01443537_10007.JPEG",
    "n01443537/shared.JPEG",
    "n01484850/shared.JPEG",
]


def test_simclr_style_names_and_keys_select_the_images(tmp_path):
    listed = tmp_path / "1percent.txt"
    listed.write_text(
        "n01443537_10007.JPEG\n\n# a comment\nn01440764_10026.JPEG\n  n01484850/shared.JPEG  \n"
    )
    names = read_subset_file(listed)
    assert names == ["n01443537_10007.JPEG", "n01440764_10026.JPEG", "n01484850/shared.JPEG"]
    indices = subset_indices(KEYS, names)
    assert indices.dtype == np.int64 and indices.tolist() == [0, 2, 4]


def test_unknown_ambiguous_and_repeated_names_are_errors(tmp_path):
    with pytest.raises(InputError, match="1 of 2 listed images are not in the training set"):
        subset_indices(KEYS, ["n01440764_10026.JPEG", "n09999999_1.JPEG"], "1percent.txt")
    with pytest.raises(InputError, match="shared.JPEG names images in several class folders"):
        subset_indices(KEYS, ["shared.JPEG"])
    twice = tmp_path / "twice.txt"
    twice.write_text("a.JPEG\nb.JPEG\na.JPEG\n")
    with pytest.raises(InputError, match="lists 1 images twice, e.g. a.JPEG"):
        read_subset_file(twice)
    (tmp_path / "empty.txt").write_text("\n# nothing\n")
    with pytest.raises(InputError, match="lists no images"):
        read_subset_file(tmp_path / "empty.txt")
    with pytest.raises(InputError, match="not found"):
        read_subset_file(tmp_path / "missing.txt")
