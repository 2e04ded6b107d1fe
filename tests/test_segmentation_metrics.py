"""Segmentation scores from one confusion matrix, and whole-image / sliding-window inference."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from attgmae.eval.segmentation import (
    ConfusionMatrix,
    miou,
    predict_logits,
    segmentation_scores,
    sliding_window_logits,
    window_starts,
)


def test_hand_computed_example():
    # (target, pred) pairs of the 7 labelled pixels: (0,0) (0,1) (1,1) (1,1) (2,2) (2,0) (1,2)
    target = np.array([[0, 0, 1, 1], [2, 2, 255, 1]])
    pred = np.array([[0, 1, 1, 1], [2, 0, 0, 2]])
    scores = miou(pred, target, num_classes=3, ignore_index=255)
    # TP 1, 2, 1; target pixels 2, 3, 2; predicted pixels 2, 3, 2; union 3, 4, 3
    assert scores["class_iou"] == pytest.approx([100 / 3, 50.0, 100 / 3])
    assert scores["miou"] == pytest.approx(100 * 7 / 18)
    assert scores["class_acc"] == pytest.approx([50.0, 200 / 3, 50.0])
    assert scores["mean_class_acc"] == pytest.approx(100 * 5 / 9)
    assert scores["pixel_acc"] == pytest.approx(100 * 4 / 7)
    assert scores["num_pixels"] == 7


def test_absent_classes_leave_the_mean_but_false_positives_count():
    target = np.array([0, 0])
    pred = np.array([0, 3])  # class 3 predicted, never true; classes 1 and 2 nowhere
    scores = miou(pred, target, num_classes=4, ignore_index=255)
    assert scores["class_iou"] == [50.0, None, None, 0.0]
    assert scores["miou"] == pytest.approx(25.0)
    assert scores["class_acc"] == [50.0, None, None, None]
    assert scores["mean_class_acc"] == pytest.approx(50.0)


def brute_force(pred, target, num_classes, ignore_index):
    """The definition, class by class with boolean masks."""
    labelled = target != ignore_index
    ious, accs = [], []
    for c in range(num_classes):
        is_pred, is_true = (pred == c) & labelled, (target == c) & labelled
        union = (is_pred | is_true).sum()
        if union:
            ious.append((is_pred & is_true).sum() / union)
        if is_true.sum():
            accs.append((is_pred & is_true).sum() / is_true.sum())
    pixel = ((pred == target) & labelled).sum() / labelled.sum()
    return 100 * np.mean(ious), 100 * np.mean(accs), 100 * pixel


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_a_per_class_loop_and_accumulates_over_batches(seed):
    rng = np.random.default_rng(seed)
    num_classes = 7
    target = rng.integers(0, num_classes - 2, (4, 9, 11))  # two classes never true
    target[rng.random(target.shape) < 0.2] = 255
    pred = np.where(rng.random(target.shape) < 0.6, target, rng.integers(0, num_classes, 1))
    pred = np.where(pred == 255, 0, pred)
    want = brute_force(pred, target, num_classes, 255)
    matrix = ConfusionMatrix(num_classes)
    for b in range(len(pred)):  # one image at a time
        matrix.update(torch.from_numpy(pred[b]), torch.from_numpy(target[b]))
    scores = matrix.scores()
    got = (scores["miou"], scores["mean_class_acc"], scores["pixel_acc"])
    assert got == pytest.approx(want)
    assert scores == miou(pred, target, num_classes, 255)  # one batch: the same matrix


def test_bad_inputs_are_errors():
    with pytest.raises(ValueError, match="outside"):
        miou(np.array([0, 5]), np.array([0, 1]), num_classes=3)
    with pytest.raises(ValueError, match="outside"):
        miou(np.array([0, 1]), np.array([0, 9]), num_classes=3)
    with pytest.raises(ValueError, match="no labelled pixels"):
        miou(np.array([0, 1]), np.array([255, 255]), num_classes=3)
    with pytest.raises(ValueError, match="differ"):
        miou(np.zeros((2, 2)), np.zeros((2, 3)), num_classes=3)


def _rank_counts(rank, world, init_file, preds, targets, queue):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    matrix = ConfusionMatrix(5)
    matrix.update(preds[rank], targets[rank])
    matrix.all_reduce()
    queue.put((rank, matrix.counts.tolist()))
    dist.destroy_process_group()


def test_all_reduce_over_two_ranks_gives_the_whole_set(tmp_path):
    gen = torch.Generator().manual_seed(0)
    preds = torch.randint(0, 5, (2, 6, 6), generator=gen)
    targets = torch.randint(0, 5, (2, 6, 6), generator=gen)
    context = mp.get_context("fork")  # no re-import of torch in the children: fast
    queue = context.Queue()
    ranks = [
        context.Process(target=_rank_counts, args=(r, 2, tmp_path / "init", preds, targets, queue))
        for r in range(2)
    ]
    for process in ranks:
        process.start()
    got = dict(queue.get(timeout=60) for _ in ranks)
    for process in ranks:
        process.join(timeout=60)
        assert process.exitcode == 0
    whole = ConfusionMatrix(5)
    whole.update(preds, targets)
    assert got[0] == got[1] == whole.counts.tolist()
    assert whole.counts.sum() == 72


def test_segmentation_scores_takes_counts():
    counts = torch.tensor([[3, 1], [0, 0]])
    scores = segmentation_scores(counts)
    assert scores["class_iou"] == [75.0, 0.0]  # class 1 predicted once, never true
    assert scores["miou"] == pytest.approx(37.5)


# ---- inference ---------------------------------------------------------------------------


def test_window_starts_cover_the_image():
    assert window_starts(10, 4, 3) == [0, 3, 6]
    assert window_starts(11, 4, 3) == [0, 3, 6, 7]  # the last one moved back to the border
    assert window_starts(4, 4, 2) == [0]


class CropMean(torch.nn.Module):
    """Logits of 2 classes, constant over the window: its mean, and its mean plus its height."""

    def forward(self, crop):
        mean = crop.mean(dim=(1, 2, 3), keepdim=True)  # [B, 1, 1, 1]
        return torch.cat([mean, mean + crop.shape[-2]], dim=1).expand(-1, -1, *crop.shape[-2:])


def test_window_equal_to_the_image_is_whole_image_inference():
    images = torch.randn(2, 3, 8, 12)
    whole = predict_logits(CropMean(), images, 2, "whole")
    slide = predict_logits(CropMean(), images, 2, "slide", window=(8, 12), stride=4)
    assert torch.equal(slide, whole)


def test_overlapping_windows_are_averaged():
    images = torch.randn(1, 3, 4, 6)
    got = sliding_window_logits(CropMean(), images, 2, window=4, stride=2)
    # windows start at columns 0 and 2: columns 0-1 see the first, 4-5 the second, 2-3 both
    first, second = images[..., 0:4].mean(), images[..., 2:6].mean()
    want = torch.stack([first, first, (first + second) / 2, (first + second) / 2, second, second])
    assert torch.allclose(got[0, 0], want.expand(4, 6), atol=1e-6)
    assert torch.allclose(got[0, 1], want.expand(4, 6) + 4, atol=1e-6)


def test_an_image_smaller_than_the_window_is_padded_and_cut_back():
    images = torch.ones(1, 3, 5, 3)
    got = sliding_window_logits(CropMean(), images, 2, window=6, stride=3, pad_value=0.0)
    assert got.shape == (1, 2, 5, 3)
    assert torch.allclose(got[0, 0], torch.full((5, 3), 15 / 36))  # 15 ones among 6 x 6
