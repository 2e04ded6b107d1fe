"""Linear probing on a frozen encoder (the MAE protocol): the head, the batches, one epoch.

Head: BatchNorm1d(D, affine=False, eps=1e-6) then Linear(D, C), weight trunc-normal std 0.01,
bias 0 (MAE, following MoCo v3). LARS (momentum 0.9, no weight decay), lr = blr * effective
batch / 256 (blr 0.1), linear warmup then half-cycle cosine, set per iteration from the
fractional epoch (as MAE's lr_sched). Gradients are accumulated over ``accum_iter``
micro-batches so the effective batch (4096 by default) need not fit the device at once; each
micro-batch's summed loss is divided by its whole group's size, so a step uses the mean
gradient over the samples of its effective batch. The head's BatchNorm sees one micro-batch at
a time. A training image's crop and flip are drawn from ``(seed, epoch, slot)`` (``SeededDraws``),
so a resumed run and a run on several processes draw the same ones.

Which samples an epoch's micro-batches hold (``epoch_batches``), reproducible from
(seed, epoch) alone so a resumed run sees the same batches:

- a training set of at least one effective batch: MAE's drop_last. A permutation seeded with
  (seed, epoch), cut into whole effective batches; the trailing incomplete one is not used
  (as MAE: with accumulation it discards the gradient of a trailing incomplete group, on 8 GPUs
  each rank drops its last incomplete batch), e.g. 312 steps of 4096 per ImageNet epoch.
- a smaller set (few-shot), ``small_subset="cycle"`` (the paper's A.8: "we calculate the
  learning rate as if the batch size would be the same by accumulating the gradients from
  multiple batches"): one epoch is one optimizer step on exactly one effective batch, drawn from
  the endless stream pass 0, pass 1, ... of the set, pass p a permutation seeded with
  (seed, p); epoch e takes stream positions [e * eff_batch, (e + 1) * eff_batch), so over the
  run every sample is used equally often (within one). Why one step per epoch: an epoch is a
  pass over the training set, and with N < eff_batch a pass is less than one step; one step
  (eff_batch / N passes) is the smallest whole number of steps that holds a pass. So
  --epochs, --warmup_epochs and the cosine count optimizer steps, and validation and the
  checkpoint come after each step, as after each epoch on the full set.
- ``small_subset="partial"`` (the former behaviour, kept to compare): every sample once per
  epoch in one partial step of fewer than eff_batch samples, at the full-batch lr; a last
  micro-batch of a single sample joins the previous one (BatchNorm cannot train on one sample).
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from attgmae.core.distributed import DistInfo, all_gather_rows
from attgmae.core.errors import InputError
from attgmae.core.progress import pace
from attgmae.core.signals import ignore_stop_signals
from attgmae.engine.seeding import SAMPLE_STREAM, seeded, stable_seed
from attgmae.eval.features import autocast_for
from attgmae.models.tokens import features as encoder_features


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


SMALL_SUBSET_MODES = ("cycle", "partial")


def cycled_samples(num_samples: int, *, seed: int, start: int, count: int) -> np.ndarray:
    """Positions ``start .. start + count - 1`` of the stream pass 0, pass 1, ... where pass p
    is a permutation of ``range(num_samples)`` seeded with (seed, p): int64 [count]."""
    first, last = start // num_samples, (start + count - 1) // num_samples
    passes = [
        np.random.default_rng([seed, p]).permutation(num_samples) for p in range(first, last + 1)
    ]
    offset = start - first * num_samples
    return np.concatenate(passes)[offset : offset + count]


def epoch_batches(
    num_samples: int,
    batch_size: int,
    *,
    seed: int,
    epoch: int,
    accum_iter: int = 1,
    small_subset: str = "cycle",
) -> list[np.ndarray]:
    """One epoch's micro-batches of sample positions (see the module docstring): whole
    effective batches of ``batch_size * accum_iter`` samples, or for a smaller set one cycled
    effective batch (``cycle``) or every sample once (``partial``)."""
    if batch_size < 2:
        raise InputError(f"--batch_size {batch_size}: the head's BatchNorm needs at least 2")
    if num_samples < 2:
        raise InputError(f"{num_samples} training sample(s): BatchNorm needs at least 2")
    eff_batch = batch_size * accum_iter
    if num_samples >= eff_batch:
        order = np.random.default_rng([seed, epoch]).permutation(num_samples)
        used = num_samples // eff_batch * eff_batch  # drop_last: whole effective batches
        return [order[i : i + batch_size] for i in range(0, used, batch_size)]
    if small_subset == "cycle":
        order = cycled_samples(num_samples, seed=seed, start=epoch * eff_batch, count=eff_batch)
        return np.split(order, accum_iter)
    if small_subset != "partial":
        raise InputError(f"--small_subset {small_subset}: choose one of {SMALL_SUBSET_MODES}")
    order = np.random.default_rng([seed, epoch]).permutation(num_samples)
    batches = [order[i : i + batch_size] for i in range(0, num_samples, batch_size)]
    if len(batches) > 1 and len(batches[-1]) == 1:
        tail = batches.pop()
        batches[-1] = np.concatenate([batches[-1], tail])
    return batches


def epoch_sampling(num_used: int, eff_batch: int, small_subset: str) -> tuple[str, str]:
    """(name, description) of how ``epoch_batches`` draws an epoch's samples."""
    if num_used >= eff_batch:
        steps = num_used // eff_batch
        return "whole", (
            f"{steps} optimizer step(s) of {eff_batch} samples per epoch, a seeded permutation "
            f"cut into whole effective batches, the last {num_used - steps * eff_batch} unused "
            "(MAE's drop_last)"
        )
    if small_subset == "cycle":
        return "cycle", (
            f"1 optimizer step of {eff_batch} samples per epoch, cycled through the {num_used} "
            f"training images (each pass a permutation seeded with (seed, pass)): the gradient "
            "of a full effective batch at its lr (the paper's A.8)"
        )
    return "partial", (
        f"1 optimizer step of the {num_used} training images per epoch (fewer than "
        f"{eff_batch}), at the lr of {eff_batch} (not the paper's A.8)"
    )


class SeededDraws(Dataset):
    """``dataset[position]`` with its random draws (crop, flip) seeded from ``(seed, epoch,
    slot)``, ``slot`` the sample's place in the epoch's list of micro-batches: the same image
    whichever process, worker or resumed run draws it, and a position listed twice in a cycled
    epoch still gets two crops. Items are ``(position, epoch, slot)``."""

    def __init__(self, dataset, seed: int):
        self.dataset, self.seed = dataset, int(seed)

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, item):
        position, epoch, slot = item
        with seeded(stable_seed(self.seed, SAMPLE_STREAM, epoch, slot)):
            return self.dataset[position]


class ImageFeatureBatches:
    """Training micro-batches as features [B, D] (fp32) of augmented images through the frozen
    encoder; ``dataset`` yields (image, label, row) at the positions the batches name.

    Under torchrun (``dist``) rank r encodes micro-batches r, r + world, r + 2 world, ... and
    every rank receives every micro-batch's features, in order: each rank then runs the same
    head steps on the same features (the head is tiny next to the encoder), so N processes train
    exactly the head of one process whose accumulation holds N times as many micro-batches.
    """

    def __init__(self, encoder, dataset, device, *, pool: str, precision: str, num_workers: int,
                 seed: int = 0, dist: DistInfo | None = None):  # fmt: skip
        self.encoder, self.dataset, self.device = encoder, dataset, device
        self.pool, self.precision, self.num_workers = pool, precision, num_workers
        self.seed, self.dist = seed, dist or DistInfo()

    def _encode(self, imgs):
        with torch.no_grad(), autocast_for(self.device, self.precision):
            imgs = imgs.to(self.device, non_blocking=True)
            return encoder_features(self.encoder, imgs, self.pool).float()

    def epoch(self, batches, epoch: int = 0, start: int = 0):
        """Features of ``batches[start:]`` (a resumed epoch starts at micro-batch ``start``;
        each sample keeps the slot it has in the whole epoch)."""
        info = self.dist
        starts = np.cumsum([0, *[len(b) for b in batches]])
        mine = range(start + info.rank, len(batches), info.world_size)
        # A position listed twice (a cycled epoch) is loaded, and augmented, twice.
        loader = DataLoader(
            SeededDraws(self.dataset, self.seed),
            batch_sampler=[
                [(int(p), epoch, int(starts[j]) + i) for i, p in enumerate(batches[j])]
                for j in mine
            ],
            num_workers=self.num_workers,
            pin_memory=self.device.type == "cuda",
            worker_init_fn=ignore_stop_signals,  # the main process answers SIGTERM / SIGUSR1
        )
        if not info.distributed:
            for imgs, targets, _ in loader:
                yield self._encode(imgs), targets
            return
        own = iter(loader)
        for first in range(start, len(batches), info.world_size):
            if first + info.rank < len(batches):
                imgs, targets, _ = next(own)
                feats = self._encode(imgs)
            else:  # the last round may leave a rank without a micro-batch
                feats, targets = torch.zeros(0, 0), torch.zeros(0, dtype=torch.int64)
            all_feats = all_gather_rows(feats, info)
            all_targets = all_gather_rows(targets, info)
            for rank in range(min(info.world_size, len(batches) - first)):
                yield all_feats[rank], all_targets[rank]


class CachedFeatureBatches:
    """Training micro-batches drawn from features [N, D] computed once (no augmentation)."""

    def __init__(self, feats, labels, device):
        self.feats, self.labels = feats.to(device), labels.to(device)

    def epoch(self, batches, epoch: int = 0, start: int = 0):
        for batch in batches[start:]:
            rows = torch.as_tensor(batch, device=self.feats.device)
            yield self.feats[rows], self.labels[rows]


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
    epochs: int | None = None,
    start: int = 0,
    sums: dict | None = None,
    should_stop=None,
) -> dict:
    """One epoch over ``feature_batches`` (yields (feats [B, D], targets [B]) in the order of
    ``batch_sizes[start:]``); optimizer step after each group of ``accum_iter`` micro-batches.
    Every ``log_every`` micro-batches a line with the loss, lr, img/s and the ETA of the epoch
    (and of the run, ``epochs`` long).

    Each micro-batch's loss is its summed cross-entropy divided by the size of its whole group,
    so the accumulated gradient is the mean over the effective batch. A resumed epoch starts at
    micro-batch ``start`` (a group's first) with the running ``sums`` of its first part.
    ``should_stop()``, asked after every optimizer step but the epoch's last, ends the epoch
    early (a stop signal): the result's ``stopped_at`` is then the micro-batches done and
    ``sums`` what a resumed epoch continues with.
    Returns {"loss": mean loss per sample, "lr": last lr, "img_per_s", "steps": optimizer
    steps, "samples": samples seen, "stopped_at": None or micro-batches done, "sums"}.
    """
    head.train()
    num_batches = len(batch_sizes)
    group_sizes = [sum(batch_sizes[g : g + accum_iter]) for g in range(0, num_batches, accum_iter)]
    optimizer.zero_grad(set_to_none=True)
    sums = dict(sums or {"loss_sum": 0.0, "seen": 0, "steps": 0})
    lr, stopped_at, seen_here = 0.0, None, 0
    started = time.perf_counter()
    for step, (feats, targets) in enumerate(feature_batches, start=start):
        if step % accum_iter == 0 or step == start:
            lr = lr_at(epoch + (step - step % accum_iter) / num_batches)
            for group in optimizer.param_groups:
                group["lr"] = lr
        feats = feats.to(device, non_blocking=True).float()
        targets = targets.to(device, non_blocking=True)
        loss = F.cross_entropy(head(feats), targets, reduction="sum")
        if not math.isfinite(loss.item()):
            raise FloatingPointError(f"loss is {loss.item()} at epoch {epoch} step {step}")
        (loss / group_sizes[step // accum_iter]).backward()
        sums["loss_sum"] += loss.item()
        sums["seen"] += targets.shape[0]
        seen_here += targets.shape[0]
        if log_every and (step + 1) % log_every == 0:
            elapsed = max(time.perf_counter() - started, 1e-9)
            left = num_batches - step - 1
            later_epochs = (epochs or epoch + 1) - epoch - 1
            per_step = elapsed / (step + 1 - start)
            timing = pace(per_step, left, left + later_epochs * num_batches, device)
            log(
                f"epoch {epoch} [{step + 1}/{num_batches}] loss {loss.item() / len(targets):.4f}"
                f" lr {lr:.6f} img/s {seen_here / elapsed:.1f} {timing}"
            )
        if (step + 1) % accum_iter == 0 or step + 1 == num_batches:
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            sums["steps"] += 1
            if should_stop is not None and step + 1 < num_batches and should_stop():
                stopped_at = step + 1
                break
    elapsed = max(time.perf_counter() - started, 1e-9)
    return {
        "loss": sums["loss_sum"] / max(sums["seen"], 1),
        "lr": lr,
        "img_per_s": seen_here / elapsed,
        "steps": sums["steps"],
        "samples": sums["seen"],
        "stopped_at": stopped_at,
        "sums": sums,
    }


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
