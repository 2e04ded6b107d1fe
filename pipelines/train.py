"""Stage 2: guided MAE pretraining (the training loop of ``attg-train``).

Data flows: ``<data_path>/train`` images joined by key with the map store (once, in the main
process) -> workers decode + crop + flip each image and draw its mask noise -> on the device,
the batch's maps are cut with their images' crop boxes and turned into per-patch loss weights
-> MAE forward/backward -> AdamW with the per-iteration lr (and tau) schedule. Checkpoints and
``log.txt`` follow official MAE so its fine-tuning code and tooling keep working.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from attgmae.pipelines.distributed import (
    DistInfo,
    barrier,
    cleanup,
    init_distributed,
    sum_across_ranks,
)
from torch.utils.data import DataLoader, default_collate

from attgmae.checkpoint import (
    LAST_NAME,
    CheckpointError,
    epoch_name,
    find_resume_checkpoint,
    load_checkpoint,
    save_atomic,
)
from attgmae.data.pretrain_dataset import (
    GUIDANCE_MODES,
    MISSING_POLICIES,
    BadImageError,
    EpochSampler,
    MapJoinError,
    PretrainDataset,
    join_maps,
    list_train_keys,
)
from attgmae.data.transforms import (
    AUGMENTATIONS,
    JointTransform,
    crop_resize_maps,
    normalize_images,
)
from attgmae.guidance import loss_weights, tau_at
from attgmae.models import MODEL_FACTORIES, create_mae
from attgmae.optim import lr_at, make_adamw, set_lr
from attgmae.store import StoreError

AMP_MODES = ("auto", "bf16", "fp16", "none")
PAPER_EFFECTIVE_BATCH = 512  # the paper's (supplementary Table 1)


@dataclass
class TrainConfig:
    """Every ``attg-train`` flag, one to one. Defaults are the paper's recipe."""

    data_path: str
    output_dir: str = "./output_dir"
    log_dir: str | None = None  # TensorBoard; None = output_dir
    model: str = "mae_vit_large_patch16"
    input_size: int = 224
    batch_size: int = 64  # per process
    accum_iter: int | None = None  # None: enough to reach the paper's effective batch of 512
    epochs: int = 800
    warmup_epochs: int = 40
    blr: float = 1.5e-4
    lr: float | None = None  # absolute; None = blr * effective batch / 256
    min_lr: float = 0.0
    weight_decay: float = 0.05
    mask_ratio: float = 0.75
    norm_pix_loss: bool = True
    guidance: str = "store"
    maps: str | None = None
    tau: float = 0.75
    tau_end: float | None = None
    gamma: float = 1.0
    missing_maps: str = "error"
    aug: str = "rrc"
    resume: str = ""
    auto_resume: bool = False
    start_epoch: int = 0
    num_workers: int = 10
    pin_mem: bool = True
    seed: int = 0
    device: str = "cuda"
    amp: str = "auto"
    compile: bool = False
    dist_url: str = "env://"
    save_every: int = 20
    ckpt_every_min: float = 30.0
    ckpt_every_steps: int = 0
    stop_after_iters: int = 0
    print_freq: int = 20
    vis_every: int = 0
    vis_count: int = 4
    knn_every: int = 0
    knn_data: str | None = None
    skip_bad_images: bool = False


class TrainError(Exception):
    """A user-facing failure; ``exit_code`` 2 for bad input, 1 for a failed run."""

    def __init__(self, message: str, exit_code: int = 1):
        super().__init__(message)
        self.exit_code = exit_code


def validate(cfg: TrainConfig) -> None:
    """Reject inconsistent flags before any work (exit code 2)."""
    problems = []
    if cfg.model not in MODEL_FACTORIES:
        problems.append(f"--model {cfg.model!r} is not one of {', '.join(MODEL_FACTORIES)}")
    if cfg.guidance not in GUIDANCE_MODES:
        problems.append(f"--guidance must be one of {GUIDANCE_MODES}")
    if cfg.guidance == "store" and not cfg.maps:
        problems.append("--guidance store needs --maps STORE (or --guidance none for vanilla MAE)")
    if cfg.missing_maps not in MISSING_POLICIES:
        problems.append(f"--missing_maps must be one of {MISSING_POLICIES}")
    if cfg.aug not in AUGMENTATIONS:
        problems.append(f"--aug must be one of {AUGMENTATIONS}")
    if cfg.amp not in AMP_MODES:
        problems.append(f"--amp must be one of {AMP_MODES}")
    if cfg.tau <= 0 or (cfg.tau_end is not None and cfg.tau_end <= 0):
        problems.append("--tau and --tau_end must be > 0")
    if not 0.0 < cfg.mask_ratio < 1.0:  # 0 masks nothing: the loss would be 0 / 0
        problems.append("--mask_ratio must be in (0, 1)")
    if cfg.batch_size < 1 or (cfg.accum_iter is not None and cfg.accum_iter < 1):
        problems.append("--batch_size and --accum_iter must be >= 1")
    if cfg.epochs < 1 or cfg.warmup_epochs < 0:
        problems.append("--epochs must be >= 1 and --warmup_epochs >= 0")
    if cfg.dist_url != "env://":
        problems.append("--dist_url: only env:// (torchrun or SLURM set the rendezvous)")
    if cfg.knn_every and not cfg.knn_data:
        problems.append("--knn_every needs --knn_data ROOT (with train/ and val/)")
    if cfg.save_every < 1 or cfg.print_freq < 1 or cfg.vis_count < 1:
        problems.append("--save_every, --print_freq and --vis_count must be >= 1")
    if problems:
        raise TrainError("; ".join(problems), exit_code=2)


def resolve_device(name: str) -> torch.device:
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise TrainError("CUDA is not available here: pass --device cpu", exit_code=2)
    return device


def resolve_amp(amp: str, device: torch.device) -> str:
    """'auto' -> bf16 autocast on CUDA, fp32 ('none') on CPU."""
    if amp == "auto":
        return "bf16" if device.type == "cuda" else "none"
    return amp


def resolve_accum(accum_iter: int | None, batch_size: int, world_size: int, iters: int) -> int:
    """Explicit ``--accum_iter``, or the smallest that reaches the paper's effective batch (512),
    capped at the iterations of one epoch (tiny data sets)."""
    if accum_iter is not None:
        return accum_iter
    needed = -(-PAPER_EFFECTIVE_BATCH // (batch_size * world_size))
    return max(1, min(needed, iters))


class _StopRequested(Exception):
    """--stop_after_iters reached: leave as a killed run would (no extra checkpoint)."""


class PretrainRun:
    """One training run: built from a config, then ``fit()``."""

    def __init__(self, cfg: TrainConfig, info: DistInfo, device: torch.device):
        self.cfg = cfg
        self.info = info
        self.device = device
        self.amp = resolve_amp(cfg.amp, device)
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
        patch = self.model_without_ddp.patch_size
        if cfg.input_size < patch or cfg.input_size % patch:
            raise TrainError(
                f"--input_size {cfg.input_size} is not a multiple of {cfg.model}'s patch size "
                f"{patch}: use e.g. {max(round(cfg.input_size / patch), 1) * patch}",
                exit_code=2,
            )
        self._build_data()
        self._build_model()
        self._resume()
        self.log_writer = self._tensorboard()

    # ------------------------------------------------------------------ building
    def log(self, message: str) -> None:
        if self.info.is_main:
            print(message, flush=True)

    def _build_data(self) -> None:
        cfg = self.cfg
        image_root, keys = list_train_keys(cfg.data_path)
        self.join = None
        if cfg.guidance == "store":
            self.join = join_maps(keys, cfg.maps, cfg.missing_maps)
            joined = len(keys) - len(self.join.missing)
            note = f"{joined}/{len(keys)} images joined with {cfg.maps} ({self.join.method} maps)"
            if len(self.join.missing):
                note += f"; {len(self.join.missing)} without a map train with uniform weights"
            if self.join.extra:
                note += f"; {self.join.extra} maps match no training image (ignored)"
            self.log(note)
        self.dataset = PretrainDataset(
            image_root,
            keys,
            JointTransform(cfg.input_size, cfg.aug),
            num_patches=self.model_without_ddp.patch_embed.num_patches,
            guidance=cfg.guidance,
            join=self.join,
            seed=cfg.seed,
            skip_bad_images=cfg.skip_bad_images,
        )
        self.sampler = EpochSampler(
            len(self.dataset), self.info.world_size, self.info.rank, seed=cfg.seed
        )
        self.iters_per_epoch = self.sampler.num_samples // cfg.batch_size
        if self.iters_per_epoch == 0:
            raise TrainError(
                f"--batch_size {cfg.batch_size} is larger than the {self.sampler.num_samples} "
                f"images each of the {self.info.world_size} process(es) gets: lower it",
                exit_code=2,
            )
        self.accum_iter = resolve_accum(
            cfg.accum_iter, cfg.batch_size, self.info.world_size, self.iters_per_epoch
        )
        self.eff_batch_size = cfg.batch_size * self.accum_iter * self.info.world_size
        self.base_lr = cfg.lr if cfg.lr is not None else cfg.blr * self.eff_batch_size / 256
        self.loader = DataLoader(
            self.dataset,
            batch_size=cfg.batch_size,
            sampler=self.sampler,
            num_workers=cfg.num_workers,
            pin_memory=cfg.pin_mem and self.device.type == "cuda",
            drop_last=True,
            persistent_workers=cfg.num_workers > 0,
        )

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
            self.base_lr,
            cfg.weight_decay,
            fused=self.device.type == "cuda",
        )
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp == "fp16")
        self.start_epoch = cfg.start_epoch
        self.start_step = 0
        self.global_step = 0
        n_params = sum(p.numel() for p in self.model_without_ddp.parameters())
        self.log(
            f"model {cfg.model} ({n_params / 1e6:.1f}M params), guidance {cfg.guidance}, "
            f"tau {cfg.tau}{'->' + str(cfg.tau_end) if cfg.tau_end is not None else ''}, "
            f"gamma {cfg.gamma}; effective batch {self.eff_batch_size} = {cfg.batch_size} x "
            f"{self.accum_iter} accum x {self.info.world_size} proc; lr {self.base_lr:.3g} "
            f"(blr {self.base_lr * 256 / self.eff_batch_size:.3g}); amp {self.amp}; "
            f"{self.iters_per_epoch} iterations/epoch"
        )

    def _resume(self) -> None:
        cfg = self.cfg
        path = cfg.resume or None
        if path is None and cfg.auto_resume and self.out_dir is not None:
            path = find_resume_checkpoint(self.out_dir)
        if path is None:
            return
        ckpt = load_checkpoint(path)
        args = ckpt.get("args")
        saved_model = getattr(args, "model", None) if args is not None else None
        if isinstance(args, dict):
            saved_model = args.get("model")
        same_model = MODEL_FACTORIES.get(saved_model) is MODEL_FACTORIES.get(cfg.model)
        if saved_model is not None and not same_model:  # (aliases like *_dec512d8b are equal)
            raise TrainError(f"{path} holds a {saved_model}, not --model {cfg.model}", 2)
        try:
            self.model_without_ddp.load_state_dict(ckpt["model"])
        except RuntimeError as err:
            raise TrainError(f"{path}: weights do not fit --model {cfg.model} ({err})", 2) from None
        if "optimizer" in ckpt and "epoch" in ckpt:
            self.optimizer.load_state_dict(ckpt["optimizer"])
            self.start_epoch = int(ckpt["epoch"]) + 1
            if self.scaler.is_enabled() and ckpt.get("scaler"):
                self.scaler.load_state_dict(ckpt["scaler"])
        state = ckpt.get("resume")
        if state:
            self.start_epoch = int(state["epoch"])
            self.global_step = int(state.get("global_step", 0))
            # Samples already consumed this epoch (global), re-split for this world size.
            per_rank = int(state.get("samples_seen", 0)) // self.info.world_size
            self.start_step = per_rank // self.cfg.batch_size
            if self.start_step >= self.iters_per_epoch:  # (a larger batch than before)
                self.start_epoch, self.start_step = self.start_epoch + 1, 0
            if "torch_rng" in state:
                torch.set_rng_state(state["torch_rng"])
            if "cuda_rng" in state and self.device.type == "cuda":
                torch.cuda.set_rng_state(state["cuda_rng"], self.device)
        self.last_good_checkpoint = Path(path)
        where = f"epoch {self.start_epoch}" + (
            f", iteration {self.start_step}" if self.start_step else ""
        )
        self.log(f"resumed from {path}: continuing at {where}")

    def _tensorboard(self):
        if not self.info.is_main or self.out_dir is None:
            return None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # tensorboard not installed: log.txt only
            return None
        return SummaryWriter(log_dir=self.cfg.log_dir or str(self.out_dir))

    # ------------------------------------------------------------------ checkpoints
    def resolved_args(self) -> argparse.Namespace:
        """The config as official MAE's ``args`` (Namespace; ``args.model`` is the factory name,
        ``args.lr`` the absolute lr and ``args.accum_iter`` the accumulation actually used)."""
        args = argparse.Namespace(**asdict(self.cfg))
        args.lr = self.base_lr
        args.accum_iter = self.accum_iter
        args.amp = self.amp
        args.eff_batch_size = self.eff_batch_size
        args.world_size = self.info.world_size
        args.maps_method = self.join.method if self.join is not None else None
        return args

    def checkpoint(self, epoch: int, step: int, lr: float, tau: float) -> dict:
        """State after ``step`` iterations of ``epoch`` (step 0 of epoch+1 = epoch finished)."""
        resume = {
            "epoch": epoch,
            "samples_seen": step * self.cfg.batch_size * self.info.world_size,
            "global_step": self.global_step,
            "lr": lr,
            "tau": tau,
            "torch_rng": torch.get_rng_state(),
        }
        if self.device.type == "cuda":
            resume["cuda_rng"] = torch.cuda.get_rng_state(self.device)
        return {
            "model": self.model_without_ddp.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "epoch": epoch - 1,  # last completed epoch, as official MAE counts
            "scaler": self._scaler_state(),
            "args": self.resolved_args(),
            "resume": resume,
        }

    def _scaler_state(self) -> dict:
        """The grad scaler's state; without one (bf16, fp32) a fresh fp16 scaler's, because
        official MAE's ``load_model`` loads ``checkpoint['scaler']`` into its always-enabled
        scaler, which refuses the empty state of a disabled one."""
        if self.scaler.is_enabled():
            return self.scaler.state_dict()
        return torch.amp.GradScaler("cpu").state_dict()

    def save(self, ckpt: dict, numbered_epoch: int | None) -> None:
        """Write checkpoint-last.pth (and checkpoint-{epoch}.pth, hard-linked, when asked)."""
        if not self.info.is_main or self.out_dir is None:
            return
        last = self.out_dir / LAST_NAME
        if numbered_epoch is None:
            save_atomic(ckpt, last)
        else:
            numbered = save_atomic(ckpt, self.out_dir / epoch_name(numbered_epoch))
            tmp = last.with_name(f".{LAST_NAME}.link{os.getpid()}")
            try:
                os.link(numbered, tmp)  # same bytes, no second write of a multi-GB file
                os.replace(tmp, last)
            except OSError:
                save_atomic(ckpt, last)
        self.last_good_checkpoint = last

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
        self.sampler.set_epoch(epoch, start=start_step * cfg.batch_size)
        loss_sum, loss_count, bad_keys = 0.0, 0, []
        lr = tau = float("nan")
        epoch_t0 = window_t0 = time.perf_counter()
        window_iters = 0
        last_save = time.monotonic()
        lr_sum, tau_sum = 0.0, 0.0
        for it, batch in enumerate(self.loader, start=start_step):
            if it % self.accum_iter == 0 or it == start_step:
                # The schedule point of this accumulation group's first iteration: a run resumed
                # with another world size or batch size may start inside a group.
                group_start = it - it % self.accum_iter
                epoch_float = epoch + group_start / self.iters_per_epoch
                lr = lr_at(epoch_float, self.base_lr, cfg.min_lr, cfg.warmup_epochs, cfg.epochs)
                set_lr(self.optimizer, lr)
                tau = tau_at(epoch_float, cfg.epochs, cfg.tau, cfg.tau_end)
            bad_keys.extend(k for k in batch["bad"] if k)
            images = normalize_images(batch["image"].to(self.device, non_blocking=True))
            noise = batch["noise"].to(self.device, non_blocking=True)
            weights = self.batch_weights(batch, tau)
            update = (it + 1) % self.accum_iter == 0
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
                loss_value = loss.detach().float().item()
                if self.info.distributed:  # every rank sees the same value, stops together
                    loss_value = sum_across_ranks([loss_value], self.info)[0] / self.info.world_size
                if not math.isfinite(loss_value):
                    raise TrainError(self._diverged_message(loss_value, epoch, it, lr))
                self.scaler.scale(loss / self.accum_iter).backward()
            if update:
                self.scaler.step(self.optimizer)
                self.scaler.update()
                self.optimizer.zero_grad(set_to_none=True)
                self.global_step += 1
            loss_sum += loss_value
            lr_sum += lr
            tau_sum += tau
            loss_count += 1
            window_iters += 1
            self.iters_run += 1
            if self.log_writer is not None and update:
                x = int((epoch + it / self.iters_per_epoch) * 1000)  # epoch_1000x as MAE
                self.log_writer.add_scalar("train_loss", loss_value, x)
                self.log_writer.add_scalar("lr", lr, x)
                self.log_writer.add_scalar("tau", tau, x)
            if (it + 1) % cfg.print_freq == 0 or it + 1 == self.iters_per_epoch:
                seconds = time.perf_counter() - window_t0
                img_per_s = window_iters * cfg.batch_size * self.info.world_size / seconds
                self.log(
                    f"Epoch [{epoch}] [{it + 1}/{self.iters_per_epoch}] loss {loss_value:.4f} "
                    f"lr {lr:.3e} tau {tau:.3f} img/s {img_per_s:.1f}"
                )
                window_t0, window_iters = time.perf_counter(), 0
            if update and it + 1 < self.iters_per_epoch and self._mid_epoch_save_due(it, last_save):
                self.save(self.checkpoint(epoch, it + 1, lr, tau), None)
                last_save = time.monotonic()
            if cfg.stop_after_iters and self.iters_run >= cfg.stop_after_iters:
                raise _StopRequested
        seconds = time.perf_counter() - epoch_t0
        done = self.iters_per_epoch - start_step
        bad_keys = self._gather_bad(bad_keys)
        count = max(loss_count, 1)
        return {  # loss and lr averaged over the epoch's iterations, as official MAE logs them
            "loss": loss_sum / count,
            "lr": lr_sum / count,
            "tau": tau_sum / count,
            "last_lr": lr,
            "last_tau": tau,
            "img_per_s": done * cfg.batch_size * self.info.world_size / max(seconds, 1e-9),
            "bad_images": len(bad_keys),
        }

    def _mid_epoch_save_due(self, it: int, last_save: float) -> bool:
        cfg = self.cfg
        if cfg.ckpt_every_steps and (it + 1) % cfg.ckpt_every_steps == 0:
            return True
        return cfg.ckpt_every_min > 0 and time.monotonic() - last_save > cfg.ckpt_every_min * 60

    def _gather_bad(self, bad_keys: list[str]) -> list[str]:
        if self.info.distributed:
            gathered = [None] * self.info.world_size
            torch.distributed.all_gather_object(gathered, bad_keys)
            bad_keys = [k for part in gathered for k in part]
        if bad_keys and self.info.is_main and self.out_dir is not None:
            self.bad_images.extend(bad_keys)
            with open(self.out_dir / "bad_images.txt", "a", encoding="utf-8") as f:
                f.writelines(k + "\n" for k in bad_keys)
            self.log(f"skipped {len(bad_keys)} undecodable images (listed in bad_images.txt)")
        return bad_keys

    def _diverged_message(self, loss_value: float, epoch: int, it: int, lr: float) -> str:
        kept = self.last_good_checkpoint or "none written yet"
        return (
            f"loss is {loss_value} at epoch {epoch}, iteration {it} (lr {lr:.3g}): stopping. "
            f"The last good checkpoint is kept: {kept}. Lower --blr, prefer --amp bf16 over fp16, "
            f"or check the inputs; --resume from that checkpoint to continue."
        )

    # ------------------------------------------------------------------ epoch extras
    def visualize(self, epoch: int) -> Path | None:
        """PNG of original | masked | reconstruction | loss weights for fixed images."""
        from PIL import Image

        from attgmae.visualize import reconstruction_panels, with_titles

        count = min(self.cfg.vis_count, len(self.dataset))
        picks = np.linspace(0, len(self.dataset) - 1, count).round().astype(int)
        batch = default_collate([self.dataset[(int(i), 0)] for i in picks])
        images = normalize_images(batch["image"].to(self.device))
        tau = tau_at(epoch + 1, self.cfg.epochs, self.cfg.tau, self.cfg.tau_end)
        weights = self.batch_weights(batch, tau)
        panel = reconstruction_panels(
            self.model_without_ddp,
            images,
            batch["noise"].to(self.device),
            self.cfg.mask_ratio,
            weights,
        )
        path = self.out_dir / "vis" / f"recon-epoch{epoch:04d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp.png")
        Image.fromarray(with_titles(panel)).save(tmp)
        os.replace(tmp, path)
        return path

    def knn(self) -> float:
        from attgmae.eval.monitor import knn_top1  # the eval helper's; only when asked

        was_training = self.model_without_ddp.training
        self.model_without_ddp.eval()
        try:
            return float(knn_top1(self.model_without_ddp, self.cfg.knn_data, self.device))
        finally:
            self.model_without_ddp.train(was_training)

    def _due(self, every: int, epoch: int) -> bool:
        return every > 0 and ((epoch + 1) % every == 0 or epoch + 1 == self.cfg.epochs)

    # ------------------------------------------------------------------ the run
    def fit(self) -> dict:
        cfg = self.cfg
        if self.info.is_main and self.out_dir is not None:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            (self.out_dir / "config.json").write_text(
                json.dumps(vars(self.resolved_args()), indent=2) + "\n"
            )
        result = {"epochs_done": 0, "stopped": False, "log": []}
        t0 = time.time()
        try:
            for epoch in range(self.start_epoch, cfg.epochs):
                stats = self.train_one_epoch(epoch)
                keep = epoch % cfg.save_every == 0 or epoch + 1 == cfg.epochs
                numbered = epoch if keep else None
                last_lr, last_tau = stats.pop("last_lr"), stats.pop("last_tau")
                self.save(self.checkpoint(epoch + 1, 0, last_lr, last_tau), numbered)
                log_stats = {f"train_{k}": v for k, v in stats.items()}
                log_stats["epoch"] = epoch
                if self.info.is_main and self.out_dir is not None:
                    if self._due(cfg.vis_every, epoch):
                        log_stats["vis"] = str(self.visualize(epoch))
                    if self._due(cfg.knn_every, epoch):
                        log_stats["knn_top1"] = self.knn()
                        if self.log_writer is not None:
                            self.log_writer.add_scalar("knn_top1", log_stats["knn_top1"], epoch)
                    with open(self.out_dir / "log.txt", "a", encoding="utf-8") as f:
                        f.write(json.dumps(log_stats) + "\n")
                    if self.log_writer is not None:
                        self.log_writer.flush()
                barrier(self.info)
                result["log"].append(log_stats)
                result["epochs_done"] += 1
        except _StopRequested:
            result["stopped"] = True
            self.log(f"stopped after {self.iters_run} iterations (--stop_after_iters)")
        self.log(f"training time {time.time() - t0:.1f} s")
        if self.log_writer is not None:
            self.log_writer.close()
        return result


def _worker_message(err: Exception) -> str:
    """The original message of an exception re-raised from a DataLoader worker."""
    text = str(err)
    marker = f"{type(err).__name__}: "
    tail = text.strip().splitlines()[-1] if text.strip() else text
    return tail.split(marker, 1)[1] if marker in tail else tail


def run_pretrain(cfg: TrainConfig) -> dict:
    """Train as configured; returns {'epochs_done', 'stopped', 'log': [per-epoch stats]}.

    Raises TrainError (with an exit code) for anything the user must fix.
    """
    validate(cfg)
    device = resolve_device(cfg.device)
    info = init_distributed(device.type)  # torchrun / SLURM environment (env://)
    if device.type == "cuda" and info.distributed:
        device = torch.device("cuda", info.local_rank)
    try:
        run = PretrainRun(cfg, info, device)
        return run.fit()
    except (MapJoinError, StoreError, CheckpointError, FileNotFoundError) as err:
        raise TrainError(str(err), exit_code=2) from None
    except BadImageError as err:
        raise TrainError(_worker_message(err), exit_code=2) from None
    except torch.OutOfMemoryError:
        half = max(cfg.batch_size // 2, 1)
        if cfg.accum_iter is None:  # the automatic --accum_iter grows to keep the batch of 512
            fix = f"--batch_size {half} (--accum_iter then doubles by itself)"
        else:
            fix = f"--batch_size {half} --accum_iter {cfg.accum_iter * 2}"
        raise TrainError(
            f"out of memory with --batch_size {cfg.batch_size} on {device}: keep the effective "
            f"batch and use less memory, e.g. {fix}"
        ) from None
    finally:
        cleanup(info)
