"""Stage 2: guided MAE pretraining (the training loop of ``attg-train``).

Data flows: ``<data_path>/train`` images joined by key with the map store (once, in the main
process) -> workers decode + crop + flip each image and draw its mask noise -> on the device,
the batch's maps are cut with their images' crop boxes and turned into per-patch loss weights
-> MAE forward/backward -> AdamW with the per-iteration lr (and tau) schedule. Checkpoints and
``log.txt`` follow official MAE so its fine-tuning code and tooling keep working. Resuming
follows ``attgmae.engine.resume`` (from ``--output_dir`` by default; a checkpoint of other
settings is refused); SIGTERM / SIGUSR1 save ``checkpoint-last.pth`` at the next optimizer step
and leave with exit code 75 (``attgmae.core.signals``).
"""

from __future__ import annotations

import argparse
import contextlib
import math
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from attgmae.checkpoint import (
    prune_checkpoints,
    restore_training,
    save_checkpoint,
    training_checkpoint,
)
from attgmae.core.device import rank_device, resolve_device
from attgmae.core.distributed import (
    DistInfo,
    RunningMean,
    barrier,
    cleanup,
    init_distributed,
    sum_across_ranks,
)
from attgmae.core.errors import AttgError
from attgmae.core.files import write_json_atomic
from attgmae.core.outputs import claim_output
from attgmae.core.progress import loop_pace
from attgmae.core.signals import preempted, stop_agreed, stop_requests
from attgmae.core.tensorboard import epoch_1000x, open_tensorboard
from attgmae.data.transforms import crop_resize_maps, normalize_images
from attgmae.engine.history import EpochLog
from attgmae.engine.resume import check_settings, find_checkpoint
from attgmae.eval.monitor import knn_top1
from attgmae.guidance import loss_weights
from attgmae.models import create_mae
from attgmae.optim import lr_at, make_adamw, set_lr
from attgmae.pipelines.train_config import (
    TrainConfig,
    check_model_fit,
    diverged_message,
    resolve_amp,
    run_settings,
    schedule_note,
    tau_schedule,
    validate,
)
from attgmae.pipelines.train_data import build_train_data, gather_on_main, record_bad_images
from attgmae.pipelines.train_launch import finished_message, launch_info, out_of_memory_message
from attgmae.pipelines.train_vis import write_reconstruction_png


class TrainError(AttgError):
    """A run that failed (a diverged loss, out of memory): exit code 1."""


def _zero_sums() -> dict:
    """An epoch's running sums over its iterations (and its undecodable images so far)."""
    return {"loss": 0.0, "lr": 0.0, "tau": 0.0, "iterations": 0, "bad_keys": []}


class _StopRequested(Exception):
    """--stop_after_iters reached: leave as a killed run would (no extra checkpoint)."""


class PretrainRun:
    """One training run: built from a config, then ``fit()``."""

    def __init__(self, cfg: TrainConfig, info: DistInfo, device: torch.device):
        self.cfg = cfg
        self.info = info
        self.device = device
        self.amp = resolve_amp(cfg.amp, device)
        self.tau_schedule = tau_schedule(cfg)
        self.out_dir = Path(cfg.output_dir) if cfg.output_dir else None
        self.iters_run = 0
        self.last_good_checkpoint: Path | None = None
        self.bad_images: list[str] = []
        torch.manual_seed(cfg.seed + info.rank)
        np.random.seed(cfg.seed + info.rank)
        if device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        self.model_without_ddp = create_mae(
            cfg.model, norm_pix_loss=cfg.norm_pix_loss, img_size=cfg.input_size
        )
        check_model_fit(cfg, self.model_without_ddp.patch_size)
        num_patches = self.model_without_ddp.patch_embed.num_patches
        self.data = build_train_data(cfg, info, device, num_patches, self.log)
        self.settings = run_settings(cfg, self.data, self.amp, self.tau_schedule)
        self.history: list[dict] = []  # the changes resumes accepted (config.json, checkpoints)
        self._build_model()
        self._resume()
        self.log_writer = self._tensorboard()

    # ------------------------------------------------------------------ building
    def log(self, message: str) -> None:
        if self.info.is_main:
            print(message, flush=True)

    def _build_model(self) -> None:
        cfg = self.cfg
        model = self.model_without_ddp.to(self.device)
        if self.info.distributed:
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            model = torch.nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
        self.ddp_model = model
        self.train_model = torch.compile(model) if cfg.compile else model
        self.optimizer = make_adamw(
            self.model_without_ddp,
            self.data.base_lr,
            cfg.weight_decay,
            fused=self.device.type == "cuda",
        )
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp == "fp16")
        self.start_epoch, self.start_step, self.global_step = cfg.start_epoch, 0, 0
        self.resumed_sums = _zero_sums()
        n_params = sum(p.numel() for p in self.model_without_ddp.parameters())
        data = self.data
        weighting = "" if self.vanilla else f"{self.tau_schedule.describe()}, gamma {cfg.gamma}; "
        self.log(
            f"model {cfg.model} ({n_params / 1e6:.1f}M params), guidance {cfg.guidance}, "
            f"{weighting}effective batch {data.eff_batch_size} = {cfg.batch_size} x "
            f"{data.accum_iter} accum x {self.info.world_size} proc; lr {data.base_lr:.3g} "
            f"(blr {data.base_lr * 256 / data.eff_batch_size:.3g}); amp {self.amp}; "
            f"{data.iters_per_epoch} iterations/epoch"
        )

    @property
    def vanilla(self) -> bool:
        return self.cfg.guidance == "none"  # no weights: no tau to speak of

    def _resume(self) -> None:
        cfg = self.cfg
        found = find_checkpoint(
            self.out_dir, resume=cfg.resume or None, auto_resume=cfg.auto_resume,
            overwrite=cfg.overwrite, trusted=cfg.trust_checkpoint, is_main=self.info.is_main,
            log=self.log,
        )  # fmt: skip
        if found is None:
            return
        path, ckpt = found
        note = schedule_note(cfg, self.tau_schedule)
        self.history = check_settings(path, ckpt, self.settings, cfg.accept_changed, self.log, note)
        model, optimizer = self.model_without_ddp, self.optimizer
        point = restore_training(ckpt, path, cfg.model, model, optimizer, self.scaler, self.device)
        self.start_epoch = point.epoch if point.epoch is not None else self.start_epoch
        self.global_step = point.global_step
        # Samples already consumed this epoch (global), re-split for this world size.
        self.start_step = point.samples_seen // self.info.world_size // cfg.batch_size
        if self.start_step >= self.data.iters_per_epoch:  # (a larger batch than before)
            self.start_epoch, self.start_step = self.start_epoch + 1, 0
        if self.start_step:  # the epoch's running sums so far: its log line covers all of it
            self.resumed_sums = {**_zero_sums(), **point.state.get("sums", {})}
        self.last_good_checkpoint = Path(path)
        where = f"epoch {self.start_epoch}" + (
            f", iteration {self.start_step}" if self.start_step else ""
        )
        self.log(f"resumed from {path}: continuing at {where}")

    def _tensorboard(self):
        if not self.info.is_main or self.out_dir is None:
            return None
        return open_tensorboard(self.cfg.log_dir or self.out_dir)

    # ------------------------------------------------------------------ checkpoints
    def resolved_args(self) -> argparse.Namespace:
        """The config as official MAE's ``args`` (Namespace; ``args.model`` is the factory name,
        ``args.lr`` the absolute lr and ``args.accum_iter`` the accumulation actually used)."""
        args = argparse.Namespace(**asdict(self.cfg))
        args.lr = self.data.base_lr
        args.accum_iter = self.data.accum_iter
        args.amp = self.amp
        args.eff_batch_size = self.data.eff_batch_size
        args.world_size = self.info.world_size
        args.maps_method = self.data.join.method if self.data.join is not None else None
        args.tau_plan = self.tau_schedule.as_dict()  # the temperature along the run (Fig. 3)
        return args

    def checkpoint(self, epoch: int, step: int, lr: float, tau: float, sums=None) -> dict:
        """State after ``step`` iterations of ``epoch`` (step 0 of epoch+1 = epoch finished), with
        the epoch's running ``sums`` when it is unfinished."""
        return training_checkpoint(
            self.model_without_ddp,
            self.optimizer,
            self.scaler,
            self.resolved_args(),
            epoch=epoch,
            samples_seen=step * self.cfg.batch_size * self.info.world_size,
            global_step=self.global_step,
            lr=lr,
            tau=tau,
            device=self.device,
            extra={"sums": dict(sums or {}), "settings": self.settings, "history": self.history},
        )

    def save(self, ckpt: dict, numbered_epoch: int | None) -> None:
        """Write checkpoint-last.pth (and checkpoint-{epoch}.pth when asked, keeping the newest
        --keep_checkpoints of those), on rank 0."""
        if self.info.is_main and self.out_dir is not None:
            self.last_good_checkpoint = save_checkpoint(ckpt, self.out_dir, numbered_epoch)
            if numbered_epoch is not None:
                keep = self.cfg.keep_checkpoints
                for path in prune_checkpoints(self.out_dir, keep):
                    self.log(f"removed {path.name} (--keep_checkpoints {keep})")

    # ------------------------------------------------------------------ one step
    def batch_weights(self, batch: dict, tau: float) -> torch.Tensor | None:
        """Per-patch loss weights [B, L] for the batch (None for vanilla MAE)."""
        if self.cfg.guidance == "none":
            return None
        maps = batch["map"].to(self.device, non_blocking=True)  # [B, G, G] whole image
        maps = crop_resize_maps(
            maps, batch["box"], batch["flip"], self.model_without_ddp.grid_size
        )  # [B, g, g] as the crop, flipped
        return loss_weights(maps, tau, self.cfg.gamma)

    def autocast(self):
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.amp)
        return torch.autocast(self.device.type, dtype=dtype, enabled=dtype is not None)

    def train_one_epoch(self, epoch: int) -> dict:
        cfg = self.cfg
        self.train_model.train(True)
        self.optimizer.zero_grad(set_to_none=True)
        start_step, self.start_step = self.start_step, 0
        self.data.sampler.set_epoch(epoch, start=start_step * cfg.batch_size)
        # the epoch's running sums: carried in mid-epoch checkpoints, so a resumed epoch's log
        # line averages all of its iterations
        sums, self.resumed_sums = (self.resumed_sums if start_step else _zero_sums()), _zero_sums()
        bad_keys = []
        lr = tau = float("nan")
        epoch_t0 = window_t0 = time.perf_counter()
        window = RunningMean(self.device, self.info)  # losses since the last read
        window_first = start_step
        last_save = time.monotonic()
        stopping = False  # a stop signal agreed by every rank: leave at the next optimizer step
        iters = self.data.iters_per_epoch
        for it, batch in enumerate(self.data.loader, start=start_step):
            if it % self.data.accum_iter == 0 or it == start_step:
                # The schedule point of this accumulation group's first iteration: a run resumed
                # with another world size or batch size may start inside a group.
                group_start = it - it % self.data.accum_iter
                epoch_float = epoch + group_start / self.data.iters_per_epoch
                lr = lr_at(
                    epoch_float, self.data.base_lr, cfg.min_lr, cfg.warmup_epochs, cfg.epochs
                )
                set_lr(self.optimizer, lr)
                tau = self.tau_schedule.at(epoch_float)
            bad_keys.extend(k for k in batch["bad"] if k)
            images = normalize_images(batch["image"].to(self.device, non_blocking=True))
            noise = batch["noise"].to(self.device, non_blocking=True)
            weights = self.batch_weights(batch, tau)
            update = (it + 1) % self.data.accum_iter == 0
            no_sync = (
                self.ddp_model.no_sync()
                if self.info.distributed and not update
                else contextlib.nullcontext()
            )
            with no_sync:
                with self.autocast():
                    loss, _, _ = self.train_model(
                        images, cfg.mask_ratio, loss_weights=weights, noise=noise
                    )
                self.scaler.scale(loss / self.data.accum_iter).backward()
            window.add(loss.detach())
            if update:
                self.scaler.step(self.optimizer)
                self.scaler.update()
                self.optimizer.zero_grad(set_to_none=True)
                self.global_step += 1
            sums["lr"] += lr
            sums["tau"] += tau
            sums["iterations"] += 1
            self.iters_run += 1
            # Ranks agree where the host waits anyway: at metric lines (every iteration alone).
            if not stopping and (not self.info.distributed or (it + 1) % cfg.print_freq == 0):
                stopping = stop_agreed(self.info)
            save_due = (
                update
                and it + 1 < iters
                and (stopping or self._mid_epoch_save_due(it, last_save))
            )
            last_of_epoch = it + 1 == self.data.iters_per_epoch
            if (it + 1) % cfg.print_freq == 0 or last_of_epoch or save_due:
                # The host waits for the device here only, and the losses are checked before
                # any save: a non-finite one stops every rank, the last good checkpoint stays.
                window_sum, window_iters = window.read()
                if not math.isfinite(window_sum):
                    kept = self.last_good_checkpoint or "none written yet"
                    where = (window_first, it, lr, tau)
                    raise TrainError(diverged_message(cfg, window_sum, epoch, *where, kept))
                window_first = it + 1
                sums["loss"] += window_sum
                seconds = time.perf_counter() - window_t0
                img_per_s = window_iters * cfg.batch_size * self.info.world_size / seconds
                timing = loop_pace(epoch_t0, start_step, it, iters, epoch, cfg.epochs, self.device)
                tau_text = "" if self.vanilla else f" tau {tau:.3f}"
                self.log(
                    f"Epoch [{epoch}] [{it + 1}/{iters}] loss {window_sum / window_iters:.4f} "
                    f"lr {lr:.3e}{tau_text} img/s {img_per_s:.1f} {timing}"
                )
                if self.log_writer is not None:
                    x = epoch_1000x(epoch + it / iters)  # as MAE
                    self.log_writer.add_scalar("train_loss", window_sum / window_iters, x)
                    self.log_writer.add_scalar("lr", lr, x)
                    if not self.vanilla:
                        self.log_writer.add_scalar("tau", tau, x)
                window_t0 = time.perf_counter()
            if save_due:
                # the undecodable images so far go into the checkpoint, held by rank 0 alone
                gathered = gather_on_main(bad_keys, self.info)
                sums["bad_keys"] = sums["bad_keys"] + gathered
                bad_keys = []
                self.save(self.checkpoint(epoch, it + 1, lr, tau, sums), None)
                last_save = time.monotonic()
                if stopping:
                    barrier(self.info)  # rank 0 has written it
                    where = f"epoch {epoch}, iteration {it + 1} of {iters}"
                    raise preempted(f"{self.out_dir / 'checkpoint-last.pth'} ({where})")
            if cfg.stop_after_iters and self.iters_run >= cfg.stop_after_iters:
                raise _StopRequested
        seconds = time.perf_counter() - epoch_t0
        done = self.data.iters_per_epoch - start_step
        bad_keys = sums["bad_keys"] + gather_on_main(bad_keys, self.info)
        if bad_keys and self._writes_outputs():
            self.bad_images.extend(bad_keys)
            record_bad_images(self.out_dir, bad_keys, self.log)
        count = max(sums["iterations"], 1)
        return {  # loss and lr averaged over the epoch's iterations, as official MAE logs them
            "loss": sums["loss"] / count,
            "lr": sums["lr"] / count,
            "tau": sums["tau"] / count,
            "last_lr": lr,
            "last_tau": tau,
            "img_per_s": done * cfg.batch_size * self.info.world_size / max(seconds, 1e-9),
            "bad_images": len(bad_keys),
        }

    def _mid_epoch_save_due(self, it: int, last_save: float) -> bool:
        """Every rank must agree (a save reads the losses, a collective): the step rule is the
        same everywhere; the clock rule is read at metric lines only, and rank 0's clock rules."""
        cfg = self.cfg
        if cfg.ckpt_every_steps and (it + 1) % cfg.ckpt_every_steps == 0:
            return True
        if cfg.ckpt_every_min <= 0 or (it + 1) % cfg.print_freq:
            return False
        due = self.info.is_main and time.monotonic() - last_save > cfg.ckpt_every_min * 60
        if self.info.distributed:
            due = sum_across_ranks([float(due)], self.info)[0] > 0
        return due

    def _writes_outputs(self) -> bool:
        return self.info.is_main and self.out_dir is not None

    def _due(self, every: int, epoch: int) -> bool:
        return every > 0 and ((epoch + 1) % every == 0 or epoch + 1 == self.cfg.epochs)

    # ------------------------------------------------------------------ the run
    def fit(self) -> dict:
        if self.info.is_main and self.out_dir is not None:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            config = {**vars(self.resolved_args()), "history": self.history}
            write_json_atomic(self.out_dir / "config.json", config)
        result = {"epochs_done": 0, "stopped": False, "log": []}
        # log.txt keeps one line per epoch: lines of epochs this run redoes are dropped
        history = EpochLog(self.out_dir, self.start_epoch) if self._writes_outputs() else None
        t0 = time.time()
        try:
            with stop_requests():  # SIGTERM / SIGUSR1: save at the next step and leave
                self._epochs(history, result)
        except _StopRequested:
            result["stopped"] = True
            self.log(f"stopped after {self.iters_run} iterations (--stop_after_iters)")
        finally:
            if self.log_writer is not None:
                self.log_writer.close()
        self.log(f"training time {time.time() - t0:.1f} s")
        if not result["stopped"] and self.out_dir is not None:
            self.log(finished_message(self.cfg, self.out_dir))
        return result

    def _epochs(self, history: EpochLog | None, result: dict) -> None:
        cfg = self.cfg
        for epoch in range(self.start_epoch, cfg.epochs):
            stats = self.train_one_epoch(epoch)
            last_lr, last_tau = stats.pop("last_lr"), stats.pop("last_tau")
            log_stats = {f"train_{k}": v for k, v in stats.items()}
            log_stats["epoch"] = epoch
            if history is not None:
                if self._due(cfg.vis_every, epoch):
                    log_stats["vis"] = str(write_reconstruction_png(self, epoch))
                if self._due(cfg.knn_every, epoch):
                    top1 = knn_top1(self.model_without_ddp, cfg.knn_data, self.device)
                    log_stats["knn_top1"] = float(top1)
                    if self.log_writer is not None:  # after the epoch: its end on the x axis
                        x = epoch_1000x(epoch + 1)
                        self.log_writer.add_scalar("knn_top1", log_stats["knn_top1"], x)
                # the log line before the checkpoint: a run killed in between redoes the end of
                # the epoch and replaces the line (after the checkpoint, it would be lost)
                history.append(log_stats)
                if self.log_writer is not None:
                    self.log_writer.flush()
            keep = epoch % cfg.save_every == 0 or epoch + 1 == cfg.epochs
            self.save(self.checkpoint(epoch + 1, 0, last_lr, last_tau), epoch if keep else None)
            barrier(self.info)
            result["log"].append(log_stats)
            result["epochs_done"] += 1
            # a signal during the epoch's last iterations, the k-NN monitor or the figure
            if epoch + 1 < cfg.epochs and stop_agreed(self.info):
                raise preempted(f"{self.out_dir / 'checkpoint-last.pth'} (epoch {epoch} done)")


def run_pretrain(cfg: TrainConfig) -> dict:
    """Train as configured; returns {'epochs_done', 'stopped', 'log': [per-epoch stats]}.

    Raises InputError for anything the user must fix, TrainError when the run fails.
    """
    validate(cfg)
    world_size, local_rank = launch_info(cfg)
    device = rank_device(resolve_device(cfg.device), local_rank, world_size)
    info = init_distributed(device, cfg.dist_timeout_min)  # torchrun / SLURM environment
    try:
        with claim_output(cfg.output_dir, "--output_dir", info=info):
            return PretrainRun(cfg, info, device).fit()
    except torch.OutOfMemoryError:
        raise TrainError(out_of_memory_message(cfg, device)) from None
    finally:
        cleanup(info)
