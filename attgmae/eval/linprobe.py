"""Linear probing on a frozen encoder (the MAE protocol): the head, the schedule, one epoch.

Head: BatchNorm1d(D, affine=False, eps=1e-6) then Linear(D, C), weight trunc-normal std 0.01,
bias 0 (MAE, following MoCo v3). LARS (momentum 0.9, no weight decay), lr = blr * effective
batch / 256 (blr 0.1), linear warmup then half-cycle cosine, set per iteration from the
fractional epoch (as MAE's lr_sched). Gradients are accumulated over ``accum_iter``
micro-batches so the effective batch (4096 by default) need not fit the device at once.

Batches are drawn from a permutation seeded with (seed, epoch), so a resumed run sees the same
batches. With ``drop_last`` (a training set of at least one effective batch) an epoch keeps only
whole effective batches, as MAE: there every optimizer step sees exactly ``eff_batch`` samples
(with accumulation MAE discards the gradient of a trailing incomplete group; on 8 GPUs each
rank drops its last incomplete batch), e.g. 312 steps of 4096 per ImageNet epoch, not 312 plus
one of 3072. Without it (a few-shot subset smaller than one effective batch) every sample is
used: a trailing group with fewer than ``accum_iter`` micro-batches still makes an optimizer
step, averaged over the samples it holds, and when the last micro-batch would hold a single
sample it joins the previous one (BatchNorm cannot train on one sample).
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from attgmae.core.errors import InputError


class LinearProbeHead(nn.Module):
    """features [B, D] -> logits [B, C]."""

    def __init__(self, embed_dim: int, num_classes: int):
        super().__init__()
        self.norm = nn.BatchNorm1d(embed_dim, affine=False, eps=1e-6)
        self.fc = nn.Linear(embed_dim, num_classes)
        nn.init.trunc_normal_(self.fc.weight, std=0.01)
        nn.init.zeros_(self.fc.bias)

    def forward(self, feats):
        return self.fc(self.norm(feats))


def epoch_batches(
    num_samples: int,
    batch_size: int,
    *,
    seed: int,
    epoch: int,
    drop_last: bool,
    accum_iter: int = 1,
) -> list[np.ndarray]:
    """Shuffled micro-batches of sample positions for one epoch (reproducible per epoch).

    ``drop_last``: keep only whole groups of ``accum_iter`` full micro-batches (whole effective
    batches, as MAE) when there is at least one, else only the full micro-batches.
    """
    if batch_size < 2:
        raise InputError(f"--batch_size {batch_size}: the head's BatchNorm needs at least 2")
    order = np.random.default_rng([seed, epoch]).permutation(num_samples)
    batches = [order[i : i + batch_size] for i in range(0, num_samples, batch_size)]
    full = num_samples // batch_size  # micro-batches of exactly batch_size
    if drop_last and full >= 1:
        keep = full // accum_iter * accum_iter
        batches = batches[: keep if keep else full]
    elif len(batches) > 1 and len(batches[-1]) == 1:
        tail = batches.pop()
        batches[-1] = np.concatenate([batches[-1], tail])
    if not batches or len(batches[0]) < 2:
        raise InputError(f"{num_samples} training sample(s): BatchNorm needs at least 2")
    return batches


def train_one_epoch(
    head,
    feature_batches,
    batch_sizes,
    optimizer,
    *,
    epoch: int,
    accum_iter: int,
    lr_at,
    device,
    log_every: int = 0,
    log=print,
) -> dict:
    """One epoch over ``feature_batches`` (yields (feats [B, D], targets [B]) in the order of
    ``batch_sizes``); optimizer step after each group of ``accum_iter`` micro-batches.

    Each micro-batch's loss is its summed cross-entropy divided by the size of its whole group,
    so the accumulated gradient is the mean over the effective batch.
    Returns {"loss": mean loss per sample, "lr": last lr, "img_per_s"}.
    """
    head.train()
    num_batches = len(batch_sizes)
    group_sizes = [sum(batch_sizes[g : g + accum_iter]) for g in range(0, num_batches, accum_iter)]
    optimizer.zero_grad(set_to_none=True)
    loss_sum, seen, lr = 0.0, 0, 0.0
    start = time.perf_counter()
    for step, (feats, targets) in enumerate(feature_batches):
        if step % accum_iter == 0:
            lr = lr_at(epoch + step / num_batches)
            for group in optimizer.param_groups:
                group["lr"] = lr
        feats = feats.to(device, non_blocking=True).float()
        targets = targets.to(device, non_blocking=True)
        loss = F.cross_entropy(head(feats), targets, reduction="sum")
        if not math.isfinite(loss.item()):
            raise FloatingPointError(f"loss is {loss.item()} at epoch {epoch} step {step}")
        (loss / group_sizes[step // accum_iter]).backward()
        if (step + 1) % accum_iter == 0 or step + 1 == num_batches:
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        loss_sum += loss.item()
        seen += targets.shape[0]
        if log_every and (step + 1) % log_every == 0:
            log(
                f"epoch {epoch} [{step + 1}/{num_batches}] loss {loss.item() / len(targets):.4f}"
                f" lr {lr:.6f}"
            )
    elapsed = max(time.perf_counter() - start, 1e-9)
    return {"loss": loss_sum / max(seen, 1), "lr": lr, "img_per_s": seen / elapsed}


def topk_correct(logits, targets, ks=(1, 5)) -> list[int]:
    """Number of samples whose target is among the top-k logits, for each k (k capped at C)."""
    k_max = min(max(ks), logits.shape[1])
    ranked = logits.topk(k_max, dim=1).indices  # [B, k_max]
    hits = ranked == targets[:, None]
    return [int(hits[:, : min(k, k_max)].any(dim=1).sum()) for k in ks]


@torch.no_grad()
def evaluate(head, feats, labels, device, batch_size: int = 1024) -> dict:
    """Top-1 / top-5 (percent) and mean cross-entropy of the head on fixed features [N, D]."""
    head.eval()
    correct1 = correct5 = 0
    loss_sum = 0.0
    for start in range(0, feats.shape[0], batch_size):
        x = feats[start : start + batch_size].to(device).float()
        y = labels[start : start + batch_size].to(device)
        logits = head(x)
        loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
        c1, c5 = topk_correct(logits, y)
        correct1, correct5 = correct1 + c1, correct5 + c5
    n = feats.shape[0]
    return {"acc1": 100.0 * correct1 / n, "acc5": 100.0 * correct5 / n, "loss": loss_sum / n}
