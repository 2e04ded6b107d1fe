"""Weighted k-NN classification on frozen features (the DINO protocol).

For each test image the ``k`` training images with the highest cosine similarity vote for their
class with weight ``exp(similarity / T)``; the prediction is the class with the highest total.
``knn_classifier`` has the signature and results of the function of that name in DINO's
``eval_knn.py``; ``knn_classify_multi`` evaluates several ``k`` on one similarity matrix per
chunk of test images.

Features are expected L2-normalized (then a dot product is the cosine similarity); the functions
themselves only take dot products, as DINO's does.

Ties are left to torch exactly where DINO leaves them, so that on the same device the results
are DINO's, ties included:
- the neighbours are ``torch.topk(k, sorted=True)`` of the similarities, one call per k (not
  the first k of one search for the largest k: which of several equally similar images topk
  keeps at the k-th place is its own choice, and differs between k);
- classes are ranked by ``torch.sort(descending=True)`` (not stable) of the float32 vote totals
  [B, C]. That order decides which of the classes with equal totals come first, above all the
  classes that got no vote at all, which fill the top 5 whenever fewer than 5 classes got votes
  (a zero-vote class can then be "in the top 5"). torch puts equal totals in class order (lower
  first) on CUDA with more than 32 classes and on the CPU with at most 32; elsewhere its order
  is its own (deterministic for a given torch version and device), and DINO's with it.
Top-5 counts only the first ``min(5, k)`` predictions, as DINO does ("top5 does not make sense
if k < 5").
"""

from __future__ import annotations

import torch

# Chunk budget: DINO's chunks of num_test // 100 rows unless the [rows, N_train] similarity
# matrix, topk's working space and the one-hot votes would exceed this many bytes (ImageNet:
# 500 rows x 1.28M train images at k = 200 need about 3.6 GB).
DEFAULT_CHUNK_BYTES = 4 << 30
# DINO's eval_knn.py never passes num_classes: its vote matrix has the function's default 1000
# columns whatever the dataset.
DINO_NUM_CLASSES = 1000


def vote_columns(num_classes: int) -> int:
    """Columns of the vote matrix as DINO's evaluation script has them: 1000 (its default) for
    any dataset of at most 1000 classes. The classes that do not exist never get a vote, but they
    are among the zero-vote classes whose order (torch.sort's) fills the top 5 when fewer than 5
    classes got votes: with 5 real classes, top-5 at k = 5 is not always 100% in DINO."""
    return max(DINO_NUM_CLASSES, int(num_classes))


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


def _chunk_rows(num_test, num_train, element_size, max_k, num_classes, max_chunk_bytes):
    """DINO's chunks: num_test // 100 test images each (the rounding of the similarity matmul
    depends on the chunk, and so do near ties), fewer only when a chunk's similarity rows, topk's
    working space and one-hot votes [rows * k, C] would not fit ``max_chunk_bytes``."""
    per_row = num_train * (element_size + 1) + max_k * num_classes * 4
    fitting = max(1, int(max_chunk_bytes // max(per_row, 1)))
    return min(max(1, num_test // 100), fitting)


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
    progress=None,
):
    """Weighted k-NN top-1 / top-5 (percent) for every k in ``ks``, each as DINO's function.

    train_features [N, D], train_labels [N] int, test_features [M, D], test_labels [M] int, all
    on the device the search runs on (the train features' device). Test images are processed in
    DINO's chunks of M // 100 (smaller only if a chunk would not fit ``max_chunk_bytes``).
    ``progress``: called with the number of test images done after each chunk.
    Returns {k: (top1, top5)}.
    """
    ks = [int(k) for k in ks]
    _check_inputs(train_features, train_labels, test_features, test_labels, ks, T, num_classes)
    device = train_features.device
    train_labels = train_labels.to(device=device, dtype=torch.int64)
    num_test = test_features.shape[0]
    rows = _chunk_rows(
        num_test,
        train_features.shape[0],
        train_features.element_size(),
        max(ks),
        num_classes,
        max_chunk_bytes,
    )
    correct1 = dict.fromkeys(ks, 0)
    correct5 = dict.fromkeys(ks, 0)
    for start in range(0, num_test, rows):
        feats = test_features[start : start + rows].to(device)  # [B, D]
        targets = test_labels[start : start + rows].to(device=device, dtype=torch.int64)  # [B]
        similarity = feats @ train_features.T  # [B, N]
        for k in ks:
            sims, idx = similarity.topk(k, dim=1, largest=True, sorted=True)  # [B, k]
            weights = (sims.float() / T).exp()  # [B, k], float32 as DINO
            # DINO's vote totals: one-hot rows times the weights, summed over the neighbours
            # (the same float additions in the same order; scatter_add_ would sum otherwise)
            batch = feats.shape[0]
            one_hot = torch.zeros(batch * k, num_classes, dtype=torch.float32, device=device)
            one_hot.scatter_(1, train_labels[idx].view(-1, 1), 1)
            scores = (one_hot.view(batch, k, num_classes) * weights.view(batch, k, 1)).sum(1)
            n_top = min(5, k, num_classes)
            # DINO's sort (float32, descending, not stable): its order of equal totals, e.g.
            # the zero-vote classes that fill the top 5, is what DINO reports (module doc).
            ranked = scores.sort(dim=1, descending=True).indices[:, :n_top]
            hits = ranked == targets[:, None]  # [B, n_top]
            correct1[k] += int(hits[:, 0].sum())
            correct5[k] += int(hits.any(dim=1).sum())
        if progress is not None:
            progress(start + feats.shape[0])
    return {k: (100.0 * correct1[k] / num_test, 100.0 * correct5[k] / num_test) for k in ks}


def knn_classifier(
    train_features, train_labels, test_features, test_labels, k, T, num_classes=1000
):
    """DINO's ``knn_classifier``: weighted k-NN top-1 and top-5 accuracy in percent."""
    return knn_classify_multi(
        train_features, train_labels, test_features, test_labels, [k], T, num_classes
    )[int(k)]
