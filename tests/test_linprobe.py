"""Linear-probe pieces: head, schedule, micro-batches, gradient accumulation, accuracy."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from attgmae.eval.lars import LARS
from attgmae.eval.linprobe import (
    LinearProbeHead,
    epoch_batches,
    evaluate,
    topk_correct,
    train_one_epoch,
)
from attgmae.optim import lr_at


def test_head_is_mae_head():
    torch.manual_seed(0)
    head = LinearProbeHead(512, 1000)
    assert isinstance(head.norm, nn.BatchNorm1d) and not head.norm.affine
    assert head.norm.eps == 1e-6
    assert head.fc.weight.std().item() == pytest.approx(0.01, rel=0.02)
    assert torch.count_nonzero(head.fc.bias) == 0


def test_schedule_warmup_then_half_cosine():
    lr, warm, total = 1.6, 10, 90
    assert lr_at(0, lr, 0.0, warm, total) == 0
    assert lr_at(5, lr, 0.0, warm, total) == pytest.approx(0.8)
    assert lr_at(10, lr, 0.0, warm, total) == pytest.approx(1.6)
    assert lr_at(50, lr, 0.0, warm, total) == pytest.approx(0.8)  # half-way down the cosine
    assert lr_at(90, lr, 0.1, warm, total) == pytest.approx(0.1)
    x = 37.25
    want = 0.5 * lr * (1 + math.cos(math.pi * (x - warm) / (total - warm)))
    assert lr_at(x, lr, 0.0, warm, total) == pytest.approx(want)


def test_epoch_batches_reproducible_and_never_single():
    a = epoch_batches(21, 4, seed=3, epoch=2, accum_iter=6, small_subset="partial")
    b = epoch_batches(21, 4, seed=3, epoch=2, accum_iter=6, small_subset="partial")
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert [len(x) for x in a] == [4, 4, 4, 4, 5]  # the single tail sample joins the last batch
    assert sorted(np.concatenate(a).tolist()) == list(range(21))
    c = epoch_batches(21, 4, seed=3, epoch=3, accum_iter=6, small_subset="partial")
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))
    assert [len(x) for x in epoch_batches(22, 4, seed=0, epoch=0)] == [4] * 5
    with pytest.raises(ValueError, match="at least 2"):
        epoch_batches(1, 4, seed=0, epoch=0)
    with pytest.raises(ValueError, match="--batch_size 1"):
        epoch_batches(100, 1, seed=0, epoch=0)
    with pytest.raises(ValueError, match="--small_subset sometimes"):
        epoch_batches(5, 4, seed=0, epoch=0, accum_iter=2, small_subset="sometimes")


def test_drop_last_keeps_whole_effective_batches_as_mae():
    # MAE makes floor(N / effective batch) steps per epoch, each on a full effective batch
    # (ImageNet at 512 x 8: 312 steps, the 6 micro-batches of a 313th group are not used).
    for mode in ("cycle", "partial"):  # a set of at least one effective batch ignores the mode
        batches = epoch_batches(47, 4, seed=0, epoch=0, accum_iter=3, small_subset=mode)
        assert [len(b) for b in batches] == [4] * 9  # 11 full micro-batches -> 3 whole groups
        assert len(set(np.concatenate(batches).tolist())) == 36
    exact = epoch_batches(12, 4, seed=0, epoch=0, accum_iter=3)
    assert sorted(np.concatenate(exact).tolist()) == list(range(12))  # N == eff: one step


def test_cycled_epochs_are_one_effective_batch_from_the_seeded_passes():
    num, batch, accum = 10, 4, 6  # N = 10 < eff = 24
    epochs = [epoch_batches(num, batch, seed=3, epoch=e, accum_iter=accum) for e in range(5)]
    for batches in epochs:
        assert [len(b) for b in batches] == [batch] * accum  # exactly eff samples, full batches
        counts = np.bincount(np.concatenate(batches), minlength=num)
        assert counts.sum() == 24 and 1 <= counts.min() and counts.max() <= 4  # 2.4x on average
    # Epoch after epoch the samples walk one stream of passes, each pass a permutation seeded
    # with (seed, pass): resuming at any epoch needs nothing but (seed, epoch).
    stream = np.concatenate([np.concatenate(b) for b in epochs])  # 120 samples = 12 passes
    assert np.bincount(stream).tolist() == [12] * num  # over the run, every sample equally often
    for p in range(12):
        want = np.random.default_rng([3, p]).permutation(num)
        assert np.array_equal(stream[p * num : (p + 1) * num], want)
    again = epoch_batches(num, batch, seed=3, epoch=3, accum_iter=accum)
    assert all(np.array_equal(x, y) for x, y in zip(again, epochs[3]))
    other = epoch_batches(num, batch, seed=4, epoch=3, accum_iter=accum)
    assert not all(np.array_equal(x, y) for x, y in zip(other, epochs[3]))


class _GradRecorder(torch.optim.SGD):
    """Records each step's gradients (and leaves the weights unchanged at lr 0)."""

    def __init__(self, params):
        super().__init__(params, lr=0.0)
        self.grads = []

    def step(self, closure=None):
        self.grads.append([p.grad.clone() for g in self.param_groups for p in g["params"]])
        return super().step(closure)


@pytest.mark.parametrize("probe_head", [False, True])
def test_a_cycled_step_is_the_mean_gradient_over_its_effective_batch(probe_head):
    g = torch.Generator().manual_seed(5)
    num, batch, accum, dim = 10, 4, 6, 5  # 24 samples cycled through 10 per step
    feats, labels = torch.randn(num, dim, generator=g), torch.randint(0, 3, (num,), generator=g)
    batches = epoch_batches(num, batch, seed=1, epoch=1, accum_iter=accum)
    torch.manual_seed(0)
    head = LinearProbeHead(dim, 3) if probe_head else nn.Linear(dim, 3)
    recorder = _GradRecorder(head.parameters())
    stats = train_one_epoch(
        head,
        ((feats[b], labels[b]) for b in batches),
        [len(b) for b in batches],
        recorder,
        epoch=1,
        accum_iter=accum,
        lr_at=lambda e: 0.0,
        device="cpu",
    )
    assert stats["steps"] == len(recorder.grads) == 1 and stats["samples"] == 24
    # Directly: the 24 samples of epoch 1 are stream positions 24..47 (passes 2, 3 and 4).
    stream = np.concatenate([np.random.default_rng([1, p]).permutation(num) for p in range(5)])
    rows = stream[24:48]
    assert np.array_equal(np.concatenate(batches), rows)
    head.zero_grad()
    if probe_head:  # BatchNorm normalises each micro-batch of 4 on its own, as in training
        loss = sum(
            nn.functional.cross_entropy(head(feats[r]), labels[r], reduction="sum")
            for r in np.split(rows, accum)
        ) / len(rows)
    else:
        loss = nn.functional.cross_entropy(head(feats[rows]), labels[rows])  # mean over 24
    loss.backward()
    for got, param in zip(recorder.grads[0], head.parameters()):
        assert torch.allclose(got, param.grad, atol=1e-6)
    # The mean over the subset once (the "partial" alternative) is a different gradient.
    head.zero_grad()
    nn.functional.cross_entropy(head(feats), labels).backward()
    assert not torch.allclose(recorder.grads[0][-1], list(head.parameters())[-1].grad, atol=1e-4)


def _grad_step(sizes, accum_iter, feats, labels):
    """Weights after one epoch of a plain linear head, micro-batches in order."""
    torch.manual_seed(0)
    head = nn.Linear(feats.shape[1], 3)
    opt = LARS(head.parameters(), lr=0.5)
    bounds = np.cumsum([0, *sizes])
    batches = [(feats[s:e], labels[s:e]) for s, e in zip(bounds[:-1], bounds[1:])]
    train_one_epoch(
        head,
        iter(batches),
        sizes,
        opt,
        epoch=0,
        accum_iter=accum_iter,
        lr_at=lambda e: 0.5,
        device="cpu",
    )
    return head.weight.detach().clone(), head.bias.detach().clone()


def test_accumulated_micro_batches_equal_one_big_batch():
    g = torch.Generator().manual_seed(1)
    feats, labels = torch.randn(8, 5, generator=g), torch.randint(0, 3, (8,), generator=g)
    big = _grad_step([8], 1, feats, labels)
    acc = _grad_step([4, 4], 2, feats, labels)
    acc_uneven = _grad_step([2, 3, 3], 3, feats, labels)
    for want, got in ((big, acc), (big, acc_uneven)):
        assert torch.allclose(want[0], got[0], atol=1e-6)
        assert torch.allclose(want[1], got[1], atol=1e-6)
    # Separate steps are different from accumulation (the test can tell them apart).
    assert not torch.allclose(big[0], _grad_step([4, 4], 1, feats, labels)[0], atol=1e-6)


def test_trailing_partial_group_steps_on_its_own_mean():
    g = torch.Generator().manual_seed(2)
    feats, labels = torch.randn(11, 5, generator=g), torch.randint(0, 3, (11,), generator=g)
    # Groups: [4, 4] then [3] alone; equal to two explicit epochs-worth of steps.
    got = _grad_step([4, 4, 3], 2, feats, labels)
    torch.manual_seed(0)
    head = nn.Linear(5, 3)
    opt = LARS(head.parameters(), lr=0.5)
    for rows in (slice(0, 8), slice(8, 11)):
        opt.zero_grad()
        nn.functional.cross_entropy(head(feats[rows]), labels[rows]).backward()
        opt.step()
    assert torch.allclose(head.weight.detach(), got[0], atol=1e-6)


def test_topk_and_evaluate():
    logits = torch.tensor([[0.1, 0.9, 0.0], [0.8, 0.1, 0.3], [0.2, 0.3, 0.5]])
    targets = torch.tensor([1, 2, 0])
    assert topk_correct(logits, targets, ks=(1, 2, 5)) == [1, 2, 3]
    head = nn.Identity()
    stats = evaluate(head, logits, targets, "cpu", batch_size=2)
    assert stats["acc1"] == pytest.approx(100 / 3) and stats["acc5"] == 100.0
    want_loss = nn.functional.cross_entropy(logits, targets).item()
    assert stats["loss"] == pytest.approx(want_loss)
