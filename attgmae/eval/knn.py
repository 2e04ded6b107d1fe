"""Weighted k-NN classification on frozen features (the DINO protocol).

For each test image the ``k`` training images with the highest cosine similarity vote for their
class with weight ``exp(similarity / T)``; the prediction is the class with the highest total.
``knn_classifier`` has the signature and results of the function of that name in DINO's
``eval_knn.py``; ``knn_classify_multi`` evaluates several ``k`` from one neighbour search.

Features are expected L2-normalized (then a dot product is the cosine similarity); the functions
themselves only take dot products, as DINO's does.

Ties, made deterministic (DINO leaves them to ``torch.topk`` / ``torch.sort``):
- neighbours with equal similarity are ranked by training index, lower first, also at the k-th
  place (the rare rows with a tie across that boundary are re-ranked exactly);
- classes with equal vote totals are ranked by class index, lower first. This also orders the
  classes that got no vote at all, which matters for top-5 when fewer than 5 classes got votes
  (a zero-vote class can then be "in the top 5", as in DINO).
Top-5 counts only the first ``min(5, k)`` predictions, as DINO does ("top5 does not make sense
if k < 5").
"""

from __future__ import annotations

import torch

# Similarity chunk budget: rows of test images per chunk are chosen so the [rows, N_train]
# similarity matrix (plus a same-shape boolean mask) stays under this many bytes.
DEFAULT_CHUNK_BYTES = 1 << 30


def _check_inputs(train_features, train_labels, test_features, test_labels, ks, T, num_classes):
    if train_features.ndim != 2 or test_features.ndim != 2:
        raise ValueError(
            f"features must be 2-D [N, D]; got train {tuple(train_features.shape)}, "
            f"test {tuple(test_features.shape)}"
        )
    if train_features.shape[1] != test_features.shape[1]:
        raise ValueError(
            f"train and test features differ in width: {train_features.shape[1]} vs "
            f"{test_features.shape[1]}"
        )
    if train_labels.shape != (train_features.shape[0],):
        raise ValueError(
            f"train_labels must be [{train_features.shape[0]}], got {tuple(train_labels.shape)}"
        )
    if test_labels.shape != (test_features.shape[0],):
        raise ValueError(
            f"test_labels must be [{test_features.shape[0]}], got {tuple(test_labels.shape)}"
        )
    if test_features.shape[0] == 0:
        raise ValueError("no test images")
    for k in ks:
        if not 1 <= int(k) <= train_features.shape[0]:
            raise ValueError(
                f"k={k} must be between 1 and the number of training images "
                f"({train_features.shape[0]})"
            )
    if not T > 0:
        raise ValueError(f"temperature T must be > 0, got {T}")
    for name, labels in (("train_labels", train_labels), ("test_labels", test_labels)):
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
            raise ValueError(
                f"{name} must lie in [0, {num_classes}); got "
                f"[{int(labels.min())}, {int(labels.max())}]"
            )


def _rank_by_value_then_index(values, indices):
    """Reorder each row of (values, indices) by value descending, then index ascending."""
    by_index = torch.argsort(indices, dim=1, stable=True)
    values, indices = values.gather(1, by_index), indices.gather(1, by_index)
    by_value = torch.argsort(values, dim=1, descending=True, stable=True)
    return values.gather(1, by_value), indices.gather(1, by_value)


def top_neighbors(similarity, k):
    """The ``k`` most similar columns of each row, ties broken by lower column index.

    similarity: [B, N]. Returns (sims [B, k], indices [B, k] int64), sorted best first.
    """
    sims, idx = similarity.topk(k, dim=1, largest=True, sorted=True)  # [B, k]
    # A row is ambiguous when more columns reach the k-th value than there are places: topk may
    # then have picked any of the tied columns. Those (rare) rows get an exact stable sort.
    kth = sims[:, -1:]  # [B, 1]
    ambiguous = (similarity >= kth).sum(dim=1) > k  # [B]
    if bool(ambiguous.any()):
        rows = ambiguous.nonzero().squeeze(1)
        order = torch.argsort(similarity[rows], dim=1, descending=True, stable=True)[:, :k]
        idx[rows] = order
        sims[rows] = similarity[rows].gather(1, order)
    return _rank_by_value_then_index(sims, idx)


def _chunk_rows(num_train, element_size, max_chunk_bytes):
    per_row = num_train * (element_size + 1)  # similarity row + boolean tie mask row
    return max(1, int(max_chunk_bytes // max(per_row, 1)))


@torch.no_grad()
def knn_classify_multi(
    train_features,
    train_labels,
    test_features,
    test_labels,
    ks,
    T=0.07,
    num_classes=1000,
    max_chunk_bytes=DEFAULT_CHUNK_BYTES,
):
    """Weighted k-NN top-1 / top-5 (percent) for every k in ``ks`` from one neighbour search.

    train_features [N, D], train_labels [N] int, test_features [M, D], test_labels [M] int, all
    on the device the search runs on (the train features' device). Test images are processed in
    chunks so the [chunk, N] similarity matrix stays under ``max_chunk_bytes``.
    Returns {k: (top1, top5)}.
    """
    ks = [int(k) for k in ks]
    _check_inputs(train_features, train_labels, test_features, test_labels, ks, T, num_classes)
    device = train_features.device
    train_labels = train_labels.to(device=device, dtype=torch.int64)
    k_max = max(ks)
    num_test = test_features.shape[0]
    rows = _chunk_rows(train_features.shape[0], train_features.element_size(), max_chunk_bytes)
    correct1 = dict.fromkeys(ks, 0)
    correct5 = dict.fromkeys(ks, 0)
    for start in range(0, num_test, rows):
        feats = test_features[start : start + rows].to(device)  # [B, D]
        targets = test_labels[start : start + rows].to(device=device, dtype=torch.int64)  # [B]
        similarity = feats @ train_features.T  # [B, N]
        sims, idx = top_neighbors(similarity, k_max)  # [B, k_max], best first
        del similarity
        neighbor_labels = train_labels[idx]  # [B, k_max]
        weights = (sims.float() / T).exp()  # [B, k_max], float32 as DINO
        for k in ks:
            # Totals in float64: equal vote sets summed in another order still tie (small k).
            scores = torch.zeros(feats.shape[0], num_classes, dtype=torch.float64, device=device)
            scores.scatter_add_(1, neighbor_labels[:, :k], weights[:, :k].double())  # [B, C]
            n_top = min(5, k, num_classes)
            ranked = torch.argsort(scores, dim=1, descending=True, stable=True)[:, :n_top]
            hits = ranked == targets[:, None]  # [B, n_top]
            correct1[k] += int(hits[:, 0].sum())
            correct5[k] += int(hits.any(dim=1).sum())
    return {k: (100.0 * correct1[k] / num_test, 100.0 * correct5[k] / num_test) for k in ks}


def knn_classifier(
    train_features, train_labels, test_features, test_labels, k, T, num_classes=1000
):
    """DINO's ``knn_classifier``: weighted k-NN top-1 and top-5 accuracy in percent."""
    return knn_classify_multi(
        train_features, train_labels, test_features, test_labels, [k], T, num_classes
    )[int(k)]
