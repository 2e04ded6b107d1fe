"""k-NN classifier against a plain, obvious per-image implementation."""

import math

import numpy as np
import pytest
import torch

from attgmae.eval.knn import knn_classifier, knn_classify_multi, top_neighbors


def plain_knn(train_x, train_y, test_x, test_y, k, T, num_classes):
    """One test image at a time: sort neighbours by (similarity desc, index asc), vote, rank
    classes by (total desc, class asc); top-5 looks at the first min(5, k) classes."""
    train_x = np.asarray(train_x, dtype=np.float32)
    test_x = np.asarray(test_x, dtype=np.float32)
    hit1 = hit5 = 0
    for x, y in zip(test_x, test_y):
        sims = [float(np.float32(np.dot(x, t))) for t in train_x]
        order = sorted(range(len(sims)), key=lambda j: (-sims[j], j))[:k]
        votes = {c: [] for c in range(num_classes)}
        for j in order:
            votes[int(train_y[j])].append(math.exp(sims[j] / T))
        totals = {c: math.fsum(w) for c, w in votes.items()}
        ranked = sorted(range(num_classes), key=lambda c: (-totals[c], c))
        hit1 += ranked[0] == y
        hit5 += y in ranked[: min(5, k, num_classes)]
    n = len(test_y)
    return 100.0 * hit1 / n, 100.0 * hit5 / n


def normalized(rng, n, d):
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("k", [1, 3, 5, 20, 60])
def test_random_features_match_plain(k):
    rng = np.random.default_rng(0)
    num_classes = 7
    train_x, test_x = normalized(rng, 150, 16), normalized(rng, 37, 16)
    train_y = rng.integers(0, num_classes, 150)
    test_y = rng.integers(0, num_classes, 37)
    got = knn_classifier(
        torch.from_numpy(train_x),
        torch.from_numpy(train_y),
        torch.from_numpy(test_x),
        torch.from_numpy(test_y),
        k,
        0.07,
        num_classes,
    )
    want = plain_knn(train_x, train_y, test_x, test_y, k, 0.07, num_classes)
    assert got == pytest.approx(want, abs=1e-9)


def test_chunking_and_multi_k_equal_single_runs():
    rng = np.random.default_rng(1)
    train_x, test_x = normalized(rng, 300, 8), normalized(rng, 250, 8)
    train_y, test_y = rng.integers(0, 10, 300), rng.integers(0, 10, 250)
    args = [torch.from_numpy(a) for a in (train_x, train_y, test_x, test_y)]
    # A tiny chunk budget forces many chunks (a few test rows at a time).
    multi = knn_classify_multi(
        *args, ks=[1, 10, 200], T=0.07, num_classes=10, max_chunk_bytes=300 * 5 * 3
    )
    for k in (1, 10, 200):
        assert multi[k] == pytest.approx(knn_classifier(*args, k, 0.07, 10))
        assert multi[k] == pytest.approx(plain_knn(train_x, train_y, test_x, test_y, k, 0.07, 10))


def test_ties_on_a_grid_and_k_larger_than_a_class():
    # Features on a coarse grid: many exactly equal similarities, also at the k-th place.
    rng = np.random.default_rng(2)
    train_x = rng.integers(-1, 2, (120, 4)).astype(np.float32) / 4
    test_x = rng.integers(-1, 2, (30, 4)).astype(np.float32) / 4
    # Class sizes 3, 5, 112: k=10 and k=50 exceed the small classes.
    train_y = np.array([0] * 3 + [1] * 5 + [2] * 112)
    test_y = rng.integers(0, 3, 30)
    args = [torch.from_numpy(a) for a in (train_x, train_y, test_x, test_y)]
    for k in (1, 2, 4, 10, 50, 120):
        got = knn_classifier(*args, k, 0.07, 3)
        assert got == pytest.approx(plain_knn(train_x, train_y, test_x, test_y, k, 0.07, 3)), k


def test_tied_neighbours_go_to_lower_training_index():
    train = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    labels = torch.tensor([2, 1, 0, 3])
    _, idx = top_neighbors(torch.tensor([[1.0, 0.0]]) @ train.T, 2)
    assert idx.tolist() == [[0, 1]]
    # k=1: the tied neighbour with the lowest index (label 2) decides.
    top1, _ = knn_classifier(
        train, labels, torch.tensor([[1.0, 0.0]]), torch.tensor([2]), 1, 0.07, 4
    )
    assert top1 == 100.0


def test_tied_classes_go_to_lower_class_index_and_zero_votes_count_for_top5():
    # Two neighbours with identical similarity and different classes: a 1-1 vote tie.
    train = torch.tensor([[1.0, 0.0], [1.0, 0.0], [-1.0, 0.0]])
    labels = torch.tensor([4, 1, 0])
    test = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
    # Targets: 1 wins the tie (lower index than 4); 4 is second; 3 got no vote but is ranked
    # third among the classes (zero-vote classes in class order: 0, 2, 3) -> top-5 only.
    top1, top5 = knn_classifier(train, labels, test, torch.tensor([1, 4, 3]), 2, 0.07, 6)
    assert top1 == pytest.approx(100 / 3)
    # k=2 < 5: top-5 looks at the first 2 classes only (1 and 4), so the target 3 misses.
    assert top5 == pytest.approx(200 / 3)
    top1, top5 = knn_classifier(train, labels, test, torch.tensor([1, 4, 3]), 3, 0.07, 6)
    # k=3: classes 1, 4, 0 get votes, ranked 1, 4, 0; top-3 only, target 3 still misses.
    assert top5 == pytest.approx(200 / 3)


def test_fewer_than_100_test_images_and_one_image():
    # DINO's chunking (test images // 100) breaks below 100 test images; ours must not.
    rng = np.random.default_rng(3)
    train_x, test_x = normalized(rng, 40, 8), normalized(rng, 1, 8)
    train_y, test_y = rng.integers(0, 3, 40), rng.integers(0, 3, 1)
    got = knn_classifier(
        torch.from_numpy(train_x),
        torch.from_numpy(train_y),
        torch.from_numpy(test_x),
        torch.from_numpy(test_y),
        5,
        0.07,
        3,
    )
    assert got == plain_knn(train_x, train_y, test_x, test_y, 5, 0.07, 3)


def test_bad_inputs_are_refused_clearly():
    x, y = torch.randn(10, 4), torch.zeros(10, dtype=torch.long)
    with pytest.raises(ValueError, match="number of training images"):
        knn_classifier(x, y, x, y, 11, 0.07, 2)
    with pytest.raises(ValueError, match="must lie in"):
        knn_classifier(x, y + 5, x, y, 3, 0.07, 2)
    with pytest.raises(ValueError, match="width"):
        knn_classifier(x, y, torch.randn(10, 5), y, 3, 0.07, 2)


def test_zero_vote_classes_fill_top5_in_class_order():
    train = torch.tensor([[1.0, 0.0]] * 4 + [[-1.0, 0.0]])
    labels = torch.tensor([4, 4, 4, 4, 5])
    test = torch.tensor([[1.0, 0.0]] * 2)
    # Ranking: 4, 5 (votes), then the zero-vote classes 0, 1, 2, 3 in class order.
    _, top5 = knn_classifier(train, labels, test, torch.tensor([2, 3]), 5, 0.07, 6)
    assert top5 == 50.0
