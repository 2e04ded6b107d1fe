"""A supervised training run: DDP, bf16, gradient accumulation, per-iteration lr, exact resume.

One iteration: a batch of ``train_set[index]`` (augmented with every RNG seeded from
``(seed, epoch, index)``, ``SeededSamples``) in the order of ``EpochSampler`` (this rank's share
of a permutation seeded by epoch) -> on the device -> ``batch_hook(batch, step)`` (mixup/cutmix;
RNGs seeded from ``(seed, epoch, iteration)``) -> ``loss_fn(model, batch, step)`` under autocast
(RNGs seeded from ``(seed, epoch, iteration, rank)``: drop path) -> backward of loss / accum_iter,
DDP syncing only on the last micro-batch of a step -> optional gradient clipping -> AdamW step.
The lr is set at the first micro-batch of every step from the fractional epoch
(``scheduled_lr``: linear warmup from ``warmup_lr``, then half-cycle cosine), times each
group's ``lr_scale`` (layer decay).

After every epoch: ``evaluate(model)`` -> metrics (every ``eval_every`` epochs and after the
last; ``run.epoch`` says which epoch it follows), one JSON line in ``log.txt`` (``EpochLog``)
and TensorBoard (x axis: MAE's epoch_1000x, as every command's),
``checkpoint-last.pth`` (and ``checkpoint-N.pth`` every ``save_every`` epochs and after the
last; also ``checkpoint-last.pth`` every ``ckpt_every_steps`` optimizer steps). Checkpoints are
official MAE dicts plus ``resume`` (``attgmae.checkpoint``), written atomically by rank 0. A run
killed anywhere continues from its newest readable checkpoint with the same samples, the same
random draws and the same running loss sums: its weights and ``log.txt`` end as an uninterrupted
run's. A partial accumulation group at the end of an epoch is dropped, as official MAE does.
Which checkpoint is resumed, and the refusal of one made with other settings, follow
``attgmae.engine.resume``. On SIGTERM / SIGUSR1 (``attgmae.core.signals``) every rank stops at
the same optimizer step, saves ``checkpoint-last.pth`` there and raises ``Preempted`` (exit 75).
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from attgmae.checkpoint import LAST_NAME, restore_state, save_checkpoint, training_checkpoint
from attgmae.core.device import resolve_precision
from attgmae.core.distributed import DistInfo, barrier, sum_across_ranks
from attgmae.core.errors import AttgError, InputError
from attgmae.core.progress import loop_pace
from attgmae.core.signals import ignore_stop_signals, preempted, stop_agreed, stop_requests
from attgmae.core.tensorboard import epoch_1000x, open_tensorboard
from attgmae.engine.config import (
    RunConfig,
    engine_settings,
    evaluation_due,
    scheduled_lr,
    validate_run,
)
from attgmae.engine.history import EpochLog
from attgmae.engine.resume import check_settings, find_checkpoint, jsonable
from attgmae.engine.seeding import (
    BATCH_STREAM,
    MODEL_STREAM,
    EpochSampler,
    SeededSamples,
    seed_everything,
    stable_seed,
)
from attgmae.optim import set_lr


class RunFailed(AttgError):
    """A run that failed (a diverged loss): exit code 1."""


class _StopRequested(Exception):
    """stop_after_iters reached: leave as a killed run would (no extra checkpoint)."""


@dataclass(frozen=True)
class Step:
    """Where the loop stands; given to the batch hook and the loss."""

    epoch: int
    iteration: int  # this rank's micro-batch index within the epoch
    epoch_float: float  # epoch + iteration / iterations per epoch: the schedules' clock


LossFn = Callable[[nn.Module, Any, Step], torch.Tensor]  # (model, batch, step) -> scalar loss
BatchHook = Callable[[Any, Step], Any]  # (batch on the device, step) -> batch
Evaluate = Callable[[nn.Module], dict]  # model (not DDP-wrapped) -> {"acc1": ..., ...}


def to_device(batch, device: torch.device):
    """Tensors of a batch (nested in tuples, lists, dicts) moved to ``device``."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {key: to_device(value, device) for key, value in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(value, device) for value in batch)
    return batch


def _zero_sums() -> dict:
    return {"loss": 0.0, "lr": 0.0, "iterations": 0}


class SupervisedRun:
    """Train ``model`` on ``train_set`` as ``cfg`` says; ``fit()`` runs every remaining epoch.

    ``param_groups``: AdamW groups over the model's parameters (``lr_scale`` and
    ``weight_decay`` per group honoured). ``args``: stored as the checkpoints' ``args``
    (official MAE's Namespace). ``fingerprint``: a JSON-able dict of the command's settings that
    define the run (its config's ``DEFINES_RUN``, the pretrained weights' and data subset's
    digests); with the engine's own (``engine_settings``) they are ``settings``, recorded in
    every checkpoint and compared on resume (``attgmae.engine.resume``). ``history``: the
    changes a resume accepted, for the command's config.json.
    """

    def __init__(
        self,
        cfg: RunConfig,
        model: nn.Module,
        param_groups: list[dict],
        train_set,
        loss_fn: LossFn,
        *,
        evaluate: Evaluate | None = None,
        batch_hook: BatchHook | None = None,
        args=None,
        fingerprint: dict | None = None,
        info: DistInfo | None = None,
        device=None,
        log=print,
    ):
        validate_run(cfg)
        self.cfg = cfg
        self.info = info or DistInfo()
        self.device = torch.device(device or "cpu")
        self.loss_fn, self.evaluate, self.batch_hook = loss_fn, evaluate, batch_hook
        self.args = args if args is not None else argparse.Namespace()
        self._print = log
        self.amp = resolve_precision(cfg.amp, self.device)
        self.settings = jsonable(  # the engine's resolved values win over a command's own
            {**(fingerprint or {}), **engine_settings(cfg, self.info.world_size, self.amp)}
        )
        self.history: list[dict] = []
        self.out_dir = Path(cfg.output_dir) if cfg.output_dir else None

        self.sampler = EpochSampler(len(train_set), self.info.world_size, self.info.rank, cfg.seed)
        self.iters_per_epoch = self.sampler.num_samples // cfg.batch_size
        if self.iters_per_epoch == 0:
            raise InputError(
                f"batch size {cfg.batch_size} is larger than the {self.sampler.num_samples} "
                f"training samples each of the {self.info.world_size} process(es) gets: lower it"
            )
        self.loader = DataLoader(
            SeededSamples(train_set, cfg.seed),
            batch_size=cfg.batch_size,
            sampler=self.sampler,
            num_workers=cfg.num_workers,
            pin_memory=cfg.pin_mem and self.device.type == "cuda",
            drop_last=True,
            persistent_workers=cfg.num_workers > 0,
            worker_init_fn=ignore_stop_signals,  # the main process answers SIGTERM / SIGUSR1
        )

        self.model = model.to(self.device)  # moved in place: param_groups still hold its tensors
        self.ddp_model = self.model
        if self.info.distributed:
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            self.ddp_model = nn.parallel.DistributedDataParallel(self.model, device_ids=device_ids)
        self.train_model = torch.compile(self.ddp_model) if cfg.compile else self.ddp_model
        fused = True if self.device.type == "cuda" else None
        self.optimizer = torch.optim.AdamW(param_groups, lr=cfg.lr, betas=cfg.betas, fused=fused)
        # bf16 and fp32 need no loss scaling; the disabled scaler keeps the official key.
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=False)
        self.n_parameters = sum(p.numel() for p in self.model.parameters() if p.requires_grad)

        self.start_epoch, self.start_step, self.global_step = 0, 0, 0
        self.epoch = 0  # the epoch being trained (or just trained, during ``evaluate``)
        self.resumed_sums = _zero_sums()
        self.last_good_checkpoint: Path | None = None
        self.iters_run = 0
        self._resume()

    # ------------------------------------------------------------------ set-up
    def log(self, message: str) -> None:
        if self.info.is_main:
            self._print(message)

    def _resume(self) -> None:
        cfg = self.cfg
        found = find_checkpoint(
            cfg.output_dir,
            resume=cfg.resume,
            auto_resume=cfg.auto_resume,
            overwrite=cfg.overwrite,
            trusted=cfg.trust_checkpoint,
            is_main=self.info.is_main,
            log=self.log,
        )
        if found is None:
            return
        path, ckpt = found
        note = f"the lr cosine now ends at epoch {cfg.epochs}"
        self.history = check_settings(
            path, ckpt, self.settings, cfg.accept_changed, self.log, epochs_note=note
        )
        point = restore_state(ckpt, path, self.model, self.optimizer, self.scaler, self.device)
        self.start_epoch = point.epoch or 0
        self.global_step = point.global_step
        # Samples already consumed in that epoch (all ranks), re-split for this world size.
        self.start_step = point.samples_seen // self.info.world_size // self.cfg.batch_size
        if self.start_step:
            self.resumed_sums = {**_zero_sums(), **(point.state.get("sums") or {})}
        if self.start_step >= self.iters_per_epoch:  # (a larger batch than before)
            self.start_epoch, self.start_step = self.start_epoch + 1, 0
        self.last_good_checkpoint = path
        at = f", iteration {self.start_step}" if self.start_step else ""
        self.log(f"resumed from {path}: continuing at epoch {self.start_epoch}{at}")

    # ------------------------------------------------------------------ checkpoints
    def checkpoint(self, epoch: int, step: int, lr: float, sums: dict) -> dict:
        """State after ``step`` iterations of ``epoch`` (step 0 of epoch + 1 = epoch done)."""
        return training_checkpoint(
            self.model,
            self.optimizer,
            self.scaler,
            self.args,
            epoch=epoch,
            samples_seen=step * self.cfg.batch_size * self.info.world_size,
            global_step=self.global_step,
            lr=lr,
            device=self.device,
            extra={"sums": dict(sums), "settings": self.settings, "history": self.history},
        )

    def save(self, ckpt: dict, numbered_epoch: int | None) -> None:
        """checkpoint-last.pth (and checkpoint-{epoch}.pth when asked), written by rank 0."""
        if self.out_dir is None:
            return
        if self.info.is_main:
            save_checkpoint(ckpt, self.out_dir, numbered_epoch)
        self.last_good_checkpoint = self.out_dir / LAST_NAME

    # ------------------------------------------------------------------ one epoch
    def autocast(self):
        if self.amp == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return nullcontext()

    def _forward_backward(self, batch, step: Step, update: bool) -> torch.Tensor:
        """Loss of one micro-batch, left on the device (reading it would make the host wait for
        the device every step: ``_read_losses`` reads a window of them), gradient accumulated."""
        sync = self.ddp_model.no_sync() if self.info.distributed and not update else nullcontext()
        with sync:
            with self.autocast():
                loss = self.loss_fn(self.train_model, batch, step)
            (loss / self.cfg.accum_iter).backward()
        return loss.detach().float()

    def _read_losses(self, losses: list, epoch: int, first: int, lr: float) -> float:
        """The sum of a window's micro-batch losses (each the mean over the ranks), read at log
        lines and before saves only. A non-finite one stops every rank together (they all see
        the same sum), naming the first such iteration of this rank; no save comes between."""
        values = torch.stack(losses).double()  # [n] on the device
        total = float(values.sum().item())
        if self.info.distributed:
            total = sum_across_ranks([total], self.info)[0] / self.info.world_size
        if not math.isfinite(total):
            bad = torch.nonzero(~torch.isfinite(values)).flatten().tolist()
            at = first + (bad[0] if bad else len(losses) - 1)  # else: another rank's
            value = float(values[bad[0]]) if bad else total
            step = Step(epoch, at, epoch + at / self.iters_per_epoch)
            raise RunFailed(self._diverged_message(value, step, lr))
        return total

    def _optimizer_step(self) -> None:
        if self.cfg.clip_grad is not None:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.clip_grad)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.global_step += 1

    def train_one_epoch(self, epoch: int) -> dict:
        """Train the rest of ``epoch`` -> {"loss", "lr": means over all its iterations,
        "last_lr", "img_per_s"}."""
        cfg, iters, accum = self.cfg, self.iters_per_epoch, self.cfg.accum_iter
        self.model.train(True)
        start, self.start_step = self.start_step, 0
        sums, self.resumed_sums = (self.resumed_sums if start else _zero_sums()), _zero_sums()
        self.sampler.set_epoch(epoch, start=start * cfg.batch_size)
        self.optimizer.zero_grad(set_to_none=True)
        lr = float("nan")
        epoch_t0 = window_t0 = time.perf_counter()
        window, losses = 0, []  # the losses since the last read, on the device
        stopping = False  # a stop signal agreed by every rank: leave at the next optimizer step
        for it, batch in enumerate(self.loader, start=start):
            if it % accum == 0 or it == start:
                group_start = it - it % accum  # a resume may land inside a group
                progress = epoch + group_start / iters
                lr = scheduled_lr(cfg, progress)
                set_lr(self.optimizer, lr)
            step = Step(epoch, it, epoch + it / iters)
            batch = to_device(batch, self.device)
            if self.batch_hook is not None:  # the same draws on every rank
                seed_everything(stable_seed(cfg.seed, BATCH_STREAM, epoch, it))
                batch = self.batch_hook(batch, step)
            seed_everything(stable_seed(cfg.seed, MODEL_STREAM, epoch, it, self.info.rank))
            update = (it + 1) % accum == 0
            losses.append(self._forward_backward(batch, step, update))
            if update:
                self._optimizer_step()
            sums["lr"] += lr
            sums["iterations"] += 1
            window += 1
            log_due = (it + 1) % cfg.print_freq == 0 or it + 1 == iters
            # Ranks agree on a stop signal at log lines (a collective: not every step, where it
            # would make the host wait for the device); one process looks every step.
            if not stopping and (log_due or not self.info.distributed):
                stopping = stop_agreed(self.info)
            steps_due = cfg.ckpt_every_steps and self.global_step % cfg.ckpt_every_steps == 0
            save_due = update and (steps_due or stopping) and it + 1 < iters
            if log_due or save_due:  # the host waits for the device here only
                window_loss = self._read_losses(losses, epoch, it + 1 - len(losses), lr)
                sums["loss"] += window_loss
                mean_loss, losses = window_loss / len(losses), []
            if log_due:
                seconds = max(time.perf_counter() - window_t0, 1e-9)
                img_per_s = window * cfg.batch_size * self.info.world_size / seconds
                timing = loop_pace(epoch_t0, start, it, iters, epoch, cfg.epochs, self.device)
                self.log(
                    f"epoch {epoch} [{it + 1}/{iters}] loss {mean_loss:.4f} lr {lr:.3e} "
                    f"img/s {img_per_s:.1f} {timing}"
                )
                window_t0, window = time.perf_counter(), 0
            if save_due:
                self.save(self.checkpoint(epoch, it + 1, lr, sums), None)
                if stopping:
                    barrier(self.info)  # rank 0 has written it
                    raise preempted(f"{self.last_good_checkpoint} (epoch {epoch}, iteration "
                                    f"{it + 1} of {iters})")  # fmt: skip
            self.iters_run += 1
            if cfg.stop_after_iters and self.iters_run >= cfg.stop_after_iters:
                raise _StopRequested
        seconds = max(time.perf_counter() - epoch_t0, 1e-9)
        count = max(sums["iterations"], 1)
        return {
            "loss": sums["loss"] / count,
            "lr": sums["lr"] / count,
            "last_lr": lr,
            "img_per_s": (iters - start) * cfg.batch_size * self.info.world_size / seconds,
        }

    def _diverged_message(self, loss_value: float, step: Step, lr: float) -> str:
        kept = self.last_good_checkpoint or "none written yet"
        return (
            f"loss is {loss_value} at epoch {step.epoch}, iteration {step.iteration} "
            f"(lr {lr:.3g}): stopping. The last good checkpoint is kept: {kept}. Lower the lr, "
            f"clip gradients, or check the inputs; resume from that checkpoint to continue."
        )

    # ------------------------------------------------------------------ the run
    def _numbered(self, epoch: int) -> int | None:
        last = epoch + 1 == self.cfg.epochs
        return epoch if last or (epoch + 1) % self.cfg.save_every == 0 else None

    def fit(self) -> dict:
        """Every remaining epoch -> {"history": the log's records, "epochs_done", "stopped",
        "epoch_seconds", "img_per_s", "last_checkpoint"}."""
        main = self.info.is_main and self.out_dir is not None
        epoch_log = EpochLog(self.out_dir, self.start_epoch) if main else None
        log_dir = (self.cfg.log_dir or self.out_dir / "tensorboard") if main else None
        writer = open_tensorboard(log_dir) if main else None
        history = []  # this run's records (rank 0 returns the whole log's)
        result = {"epochs_done": 0, "stopped": False, "epoch_seconds": [], "img_per_s": []}
        try:
            with stop_requests():  # SIGTERM / SIGUSR1: save at the next step and leave
                self._epochs(epoch_log, writer, history, result)
        except _StopRequested:
            result["stopped"] = True
            self.log(f"stopped after {self.iters_run} iterations (stop_after_iters)")
        finally:
            if writer is not None:
                writer.close()
        result["history"] = epoch_log.records if epoch_log is not None else history
        result["last_checkpoint"] = self.last_good_checkpoint and str(self.last_good_checkpoint)
        return result

    def _epochs(self, epoch_log, writer, history: list, result: dict) -> None:
        for epoch in range(self.start_epoch, self.cfg.epochs):
            t0 = time.perf_counter()
            self.epoch = epoch
            train = self.train_one_epoch(epoch)
            due = self.evaluate is not None and evaluation_due(self.cfg, epoch)
            metrics = self.evaluate(self.model) if due else {}
            record = {
                "train_loss": train["loss"],
                "train_lr": train["lr"],
                **{f"test_{key}": value for key, value in metrics.items()},
                "epoch": epoch,
                "n_parameters": self.n_parameters,
            }
            if epoch_log is not None:
                epoch_log.append(record)
            scalars = {k: v for k, v in record.items() if k.startswith(("train_", "test_"))}
            if writer is not None:
                for key, value in scalars.items():  # at the epoch's end: epoch_1000x (epoch + 1)
                    writer.add_scalar(key.replace("_", "/", 1), value, epoch_1000x(epoch + 1))
                writer.flush()
            done = self.checkpoint(epoch + 1, 0, train["last_lr"], _zero_sums())
            self.save(done, self._numbered(epoch))
            barrier(self.info)
            history.append(record)
            result["epochs_done"] += 1
            result["epoch_seconds"].append(time.perf_counter() - t0)
            result["img_per_s"].append(train["img_per_s"])
            self.log(f"epoch {epoch}: " + ", ".join(f"{k} {v:.4g}" for k, v in scalars.items()))
            # a signal during the epoch's last iterations or its evaluation: leave here
            if epoch + 1 < self.cfg.epochs and stop_agreed(self.info):
                raise preempted(f"{self.last_good_checkpoint} (epoch {epoch} done)")
