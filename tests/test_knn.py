"""k-NN classifier against a plain, obvious per-image implementation."""

import math

import numpy as np
import pytest
import torch

from attgmae.eval.knn import knn_classifier, knn_classify_multi


def dino_rank(totals):
    """Classes ranked as DINO ranks them: its float32 vote totals through torch.sort(descending),
    which decides the order of equal totals (e.g. the zero-vote classes)."""
    return torch.sort(torch.tensor(totals, dtype=torch.float32), descending=True).indices.tolist()


def plain_knn(train_x, train_y, test_x, test_y, k, T, num_classes):
    """One test image at a time: the k most similar training images (torch.topk, which picks
    among equally similar ones as in DINO), float32 votes added up per class, classes ranked as
    DINO; top-5 looks at the first min(5, k) classes."""
    train_x = np.asarray(train_x, dtype=np.float32)
    test_x = np.asarray(test_x, dtype=np.float32)
    hit1 = hit5 = 0
    for x, y in zip(test_x, test_y):
        sims = torch.tensor([np.float32(np.dot(x, t)) for t in train_x])
        top_sims, order = sims.topk(k)
        totals = [np.float32(0.0)] * num_classes
        for sim, j in zip(top_sims.tolist(), order.tolist()):
            totals[int(train_y[j])] += np.float32(math.exp(sim / T))
        ranked = dino_rank(totals)
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


def dino_structured_knn(train, train_y, test, test_y, k, T, num_classes=1000):
    """The same computation laid out as DINO's eval_knn.py lays it out: chunks of
    num_test // 100 test images, one [chunk, N] similarity matmul each, topk, one-hot rows of
    the neighbours' classes times their weights summed over the neighbours, torch.sort."""
    rows = max(1, len(test_y) // 100)
    hit1 = hit5 = 0
    for start in range(0, len(test_y), rows):
        sims, idx = (test[start : start + rows] @ train.T).topk(k, sorted=True)
        one_hot = torch.nn.functional.one_hot(train_y[idx], num_classes).float()  # [B, k, C]
        totals = torch.sum(one_hot * (sims / T).exp()[..., None], 1)
        ranked = totals.sort(1, True).indices
        hits = ranked == test_y[start : start + rows, None]
        hit1 += int(hits[:, 0].sum())
        hit5 += int(hits[:, : min(5, k)].sum())
    return 100.0 * hit1 / len(test_y), 100.0 * hit5 / len(test_y)


def test_ties_in_vote_totals_fall_as_in_dino():
    """Equal vote totals (duplicated training features, classes balanced within each copy) and
    exactly equal similarities (0/1 features): DINO's chunks and one-hot sums decide the ties;
    adding the votes in another order (scatter_add) ranks some tied classes differently."""
    g = torch.Generator().manual_seed(0)
    base = torch.nn.functional.normalize(torch.randn(10, 64, generator=g), dim=1)
    train, train_y = base.repeat_interleave(50, 0), torch.arange(10).repeat(50)
    copies = base[torch.randint(0, 10, (100,), generator=g)]
    others = torch.randn(100, 64, generator=g)
    test = torch.nn.functional.normalize(torch.cat([copies, others]), dim=1)
    test_y = torch.randint(0, 10, (200,), generator=g)
    binary = torch.randint(0, 2, (500, 64), generator=g).float()
    binary_test = torch.randint(0, 2, (200, 64), generator=g).float()
    binary_y, binary_test_y = torch.randint(0, 40, (500,), generator=g), test_y * 4
    for args in ((train, train_y, test, test_y), (binary, binary_y, binary_test, binary_test_y)):
        ks = [10, 20, 100, 200]
        multi = knn_classify_multi(*args, ks, 0.07, 1000)
        for k in ks:
            assert multi[k] == dino_structured_knn(*args, k, 0.07), k


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


def test_tied_neighbours_are_picked_by_topk_for_each_k():
    # 100 equally similar training images of 100 classes: which ones are the k nearest is
    # torch.topk's choice, made afresh for each k as DINO calls it (not the first k of one
    # search for the largest k).
    train = torch.ones(100, 2) / math.sqrt(2)
    labels = torch.arange(100)
    test = torch.ones(1, 2) / math.sqrt(2)
    for k in (1, 2, 3):
        for target in range(100):
            want = plain_knn(train, labels, test, torch.tensor([target]), k, 0.07, 100)
            got = knn_classifier(train, labels, test, torch.tensor([target]), k, 0.07, 100)
            assert got == want, (k, target)
    multi = knn_classify_multi(train, labels, test, torch.tensor([0]), [1, 3], 0.07, 100)
    assert multi[1] == knn_classifier(train, labels, test, torch.tensor([0]), 1, 0.07, 100)


def test_tied_classes_go_to_lower_class_index_and_zero_votes_count_for_top5():
    # At most 32 classes on the CPU, torch.sort (DINO's ranking) keeps equal totals in class order.
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


def test_zero_vote_classes_are_ordered_as_dino_with_many_classes():
    # 100 classes, but the neighbours of each test image come from 1-2 classes: the top 5 is
    # filled with zero-vote classes in the order torch.sort gives equal totals (on the CPU not
    # class order above 32 classes), so top-5 at k <= 5 depends on that order being DINO's.
    rng = np.random.default_rng(4)
    num_classes = 100
    centers = normalized(rng, 3, 16)
    train_x = centers[np.arange(60) % 3] + 0.05 * rng.standard_normal((60, 16)).astype(np.float32)
    train_x /= np.linalg.norm(train_x, axis=1, keepdims=True)
    train_y = np.where(np.arange(60) % 3 == 0, 40, 70 + np.arange(60) % 3)
    test_x = centers[np.arange(300) % 3] + 0.05 * rng.standard_normal((300, 16)).astype(np.float32)
    test_x /= np.linalg.norm(test_x, axis=1, keepdims=True)
    zero_vote = [c for c in range(num_classes) if c not in (40, 71, 72)]
    test_y = np.array([zero_vote[i % len(zero_vote)] for i in range(300)])  # never voted for
    args = [torch.from_numpy(a) for a in (train_x, train_y, test_x, test_y)]
    for k in (1, 3, 5):
        got = knn_classifier(*args, k, 0.07, num_classes)
        want = plain_knn(train_x, train_y, test_x, test_y, k, 0.07, num_classes)
        assert got == pytest.approx(want), k
    # The case is not vacuous: some zero-vote targets are in DINO's top 5 at k = 5.
    assert knn_classifier(*args, 5, 0.07, num_classes)[1] > 0
