"""The engine's two additions for the dense protocols: a warmup that starts at ``warmup_lr``
(MultiMAE's, the paper's 1e-6) and evaluation every ``eval_every`` epochs; both leave MAE's
schedule and every-epoch evaluation exactly as they were by default."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from attgmae.core.errors import InputError
from attgmae.engine import RunConfig, SupervisedRun, evaluation_due, scheduled_lr
from attgmae.optim import lr_at


def test_warmup_starts_at_warmup_lr_and_the_rest_is_maes_schedule():
    cfg = RunConfig(epochs=10, lr=3e-4, warmup_epochs=3, warmup_lr=1e-6, min_lr=0.0)
    assert scheduled_lr(cfg, 0.0) == 1e-6
    assert scheduled_lr(cfg, 1.5) == pytest.approx((1e-6 + 3e-4) / 2, rel=1e-12)
    assert scheduled_lr(cfg, 3.0) == pytest.approx(3e-4, rel=1e-12)
    for epoch in (3.0, 4.25, 6.5, 9.99):  # after the warmup: MAE's cosine, unchanged
        assert scheduled_lr(cfg, epoch) == lr_at(epoch, 3e-4, 0.0, 3, 10)
    # warmup_lr 0 (the default) is MAE's schedule exactly, warmup included
    mae = RunConfig(epochs=10, lr=3e-4, warmup_epochs=3, min_lr=1e-6)
    for epoch in (0.0, 0.1, 1.0, 2.999, 3.0, 7.3):
        assert scheduled_lr(mae, epoch) == lr_at(epoch, 3e-4, 1e-6, 3, 10)


def test_evaluation_after_every_nth_epoch_and_the_last():
    cfg = RunConfig(epochs=64, lr=1.0, eval_every=20)
    assert [e for e in range(64) if evaluation_due(cfg, e)] == [0, 20, 40, 60, 63]
    assert all(evaluation_due(RunConfig(epochs=5, lr=1.0), e) for e in range(5))
    with pytest.raises(InputError, match="eval_every must be >= 1"):
        SupervisedRun(RunConfig(epochs=1, lr=1.0, eval_every=0), nn.Linear(2, 2), [], [], None)
    with pytest.raises(InputError, match="warmup_lr >= 0"):
        SupervisedRun(RunConfig(epochs=1, lr=1.0, warmup_lr=-1), nn.Linear(2, 2), [], [], None)


def test_a_run_steps_with_the_warmup_lr_and_logs_the_evaluated_epochs(tmp_path):
    torch.manual_seed(0)
    model = nn.Linear(4, 2)
    data = TensorDataset(torch.randn(8, 4), torch.randint(0, 2, (8,)))
    cfg = RunConfig(
        epochs=3,
        lr=0.1,
        warmup_epochs=1,
        warmup_lr=0.01,
        batch_size=4,
        num_workers=0,
        eval_every=2,
        output_dir=str(tmp_path),
    )
    groups = [{"params": list(model.parameters()), "lr_scale": 0.5}]
    evaluated = []

    def evaluate(net):
        evaluated.append(run.epoch)
        return {"score": float(run.epoch)}

    def loss_fn(net, batch, step):
        return F.cross_entropy(net(batch[0]), batch[1])

    run = SupervisedRun(cfg, model, groups, data, loss_fn, evaluate=evaluate, log=lambda m: None)
    step_lrs = []
    optimizer_step = run.optimizer.step

    def record(*args, **kwargs):
        step_lrs.append(run.optimizer.param_groups[0]["lr"])
        return optimizer_step(*args, **kwargs)

    run.optimizer.step = record
    run.fit()
    # 2 steps an epoch: the warmup's steps at epochs 0 and 0.5, scaled by the group's 0.5
    assert step_lrs[:2] == pytest.approx([0.5 * 0.01, 0.5 * (0.01 + 0.09 * 0.5)], rel=1e-12)
    assert evaluated == [0, 2]
    lines = [json.loads(x) for x in (tmp_path / "log.txt").read_text().splitlines()]
    assert [("test_score" in x) for x in lines] == [True, False, True]
