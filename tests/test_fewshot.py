"""The few-shot sampler: balanced, reproducible, nested; the training subset a probe uses."""

import hashlib

import numpy as np
import pytest

from attgmae.core.errors import InputError
from attgmae.eval.fewshot import fewshot_indices, subset_sha256, training_subset


@pytest.fixture
def labels():
    # Unequal classes (10, 25, 7 images), shuffled, plus two unlabelled images.
    rng = np.random.default_rng(0)
    y = np.array([0] * 10 + [1] * 25 + [2] * 7 + [-1] * 2)
    return y[rng.permutation(len(y))]


def test_shots_are_balanced_and_reproducible(labels):
    idx = fewshot_indices(labels, shots=5, seed=3)
    assert np.bincount(labels[idx]).tolist() == [5, 5, 5]
    assert len(set(idx.tolist())) == len(idx) and (labels[idx] >= 0).all()
    assert np.array_equal(idx, fewshot_indices(labels, shots=5, seed=3))
    assert not np.array_equal(idx, fewshot_indices(labels, shots=5, seed=4))


def test_smaller_subsets_are_nested_in_larger(labels):
    one = set(fewshot_indices(labels, shots=1, seed=7).tolist())
    five = set(fewshot_indices(labels, shots=5, seed=7).tolist())
    assert one < five


def test_percent_samples_each_class_at_the_same_rate(labels):
    idx = fewshot_indices(labels, percent=20, seed=0)
    # round(0.2 * n): 10 -> 2, 25 -> 5, 7 -> 1
    assert np.bincount(labels[idx]).tolist() == [2, 5, 1]
    tiny = fewshot_indices(labels, percent=1, seed=0)
    assert np.bincount(labels[tiny]).tolist() == [1, 1, 1]  # at least one per class
    assert len(fewshot_indices(labels, percent=100, seed=0)) == 42


def test_a_class_pick_does_not_depend_on_other_classes(labels):
    idx = fewshot_indices(labels, shots=3, seed=1)
    keep = labels != 1
    sub_idx = fewshot_indices(np.where(keep, labels, -1), shots=3, seed=1)
    assert np.array_equal(idx[labels[idx] != 1], sub_idx)


def test_bad_requests(labels):
    with pytest.raises(ValueError, match="fewer than --shots 8"):
        fewshot_indices(labels, shots=8)
    with pytest.raises(ValueError, match="exactly one"):
        fewshot_indices(labels, shots=1, percent=1)
    with pytest.raises(ValueError, match="percent"):
        fewshot_indices(labels, percent=0)


KEYS = ["cat/cat_1.JPEG", "cat/cat_2.JPEG", "dog/dog_1.JPEG", "dog/dog_2.JPEG", "dog/dog_3.JPEG"]
LABELS = np.array([0, 0, 1, 1, 1])


def test_training_subset_from_a_list_file_of_names_or_keys(tmp_path):
    listed = tmp_path / "1percent.txt"
    listed.write_text("dog_3.JPEG\ncat/cat_2.JPEG\n")  # a SimCLR-style name, and a key
    picked = training_subset(KEYS, LABELS, subset_file=listed, seed=0)
    assert picked.tolist() == [1, 4]
    assert np.array_equal(picked, training_subset(KEYS, LABELS, subset_file=listed, seed=9))
    assert training_subset(KEYS, LABELS).tolist() == [0, 1, 2, 3, 4]
    assert np.bincount(LABELS[training_subset(KEYS, LABELS, shots=1, seed=2)]).tolist() == [1, 1]
    listed.write_text("dog_3.JPEG\nbird_1.JPEG\n")
    with pytest.raises(InputError, match=r"--subset_file .*1percent.txt: 1 of 2 listed .*bird_1"):
        training_subset(KEYS, LABELS, subset_file=listed)
    with pytest.raises(InputError, match="at most one of --subset_file, --shots and --percent"):
        training_subset(KEYS, LABELS, subset_file=listed, shots=1)


def test_subset_digest_is_the_sha256_of_the_int64_indices():
    want = hashlib.sha256(np.array([1, 4], dtype="<i8").tobytes()).hexdigest()
    assert subset_sha256(np.array([1, 4], dtype=np.int32)) == want
    assert subset_sha256([1, 3]) != want
