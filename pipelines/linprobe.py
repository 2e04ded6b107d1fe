"""Linear probing (the MAE protocol) and few-shot probing over several seeds.

One run writes to its output directory: ``log.txt`` (one JSON line per epoch, as MAE),
``checkpoint-last.pth`` every epoch and ``checkpoint-<last epoch>.pth`` at the end (head,
optimizer, epoch, config; written atomically), ``linprobe.json`` (every number) and
``linprobe.png`` (validation top-1 per epoch). A run finds its ``checkpoint-last.pth`` and
resumes (``auto_resume``) or resumes from ``resume``. Several seeds: one sub-directory
``seed_<s>`` each, and ``fewshot_summary.json`` / ``fewshot.png`` with mean and std.

The training subset is every image, a list file (``subset_file``, fixed: the seeds then vary
only the head's initialisation and the training order) or a seeded per-class sample (``shots``
/ ``percent``). A subset smaller than one effective batch is cycled (``small_subset="cycle"``,
the paper's A.8): every epoch is one optimizer step on exactly ``eff_batch_size`` samples at the
full-batch lr; ``attgmae.eval.linprobe`` says why an epoch is then one step.

Validation features never change (frozen encoder, deterministic center crop), so they are
computed once per run (and cached in ``features_dir``) rather than every epoch; the head is
evaluated on them after every epoch. ``cached_features`` trains on cached center-crop features
of the training images too: much faster, but without augmentation (an approximation of the
protocol, documented as such in the result).
"""

from __future__ import annotations

import dataclasses
import json
import statistics
import time
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import torch

from attgmae.core.device import resolve_device, use_device
from attgmae.core.errors import InputError
from attgmae.core.files import file_sha256, write_json_atomic
from attgmae.core.outputs import claim_output
from attgmae.core.provenance import software_versions
from attgmae.core.tensorboard import open_tensorboard
from attgmae.core.torchfile import load_torch_file, save_torch_file
from attgmae.eval.features import (
    ImageSplit,
    LabelledImages,
    check_data_root,
    extraction_options,
    image_split,
    split_features,
)
from attgmae.eval.fewshot import configured_subset, subset_sha256
from attgmae.eval.lars import LARS
from attgmae.eval.linprobe import (
    SMALL_SUBSET_MODES,
    CachedFeatureBatches,
    ImageFeatureBatches,
    LinearProbeHead,
    epoch_batches,
    evaluate,
)
from attgmae.eval.linprobe import train_one_epoch as train_head_one_epoch
from attgmae.eval.report import plot_probe
from attgmae.eval.transforms import probe_train_transform
from attgmae.models.encoder import load_encoder_as_configured
from attgmae.optim import lr_at


@dataclass
class LinprobeConfig:
    checkpoint: str
    data_path: str
    output_dir: str = "output_linprobe"
    model: str | None = None
    num_heads: int | None = None
    force_model: bool = False  # take the heads from --model even if it contradicts
    checkpoint_key: str | None = None  # DINO/iBOT training checkpoints: teacher (default)
    pool: str = "cls"
    epochs: int = 90
    warmup_epochs: int = 10
    batch_size: int = 512  # micro-batch per step
    eff_batch_size: int = 4096  # gradient accumulated up to this many samples per update
    accum_iter: int | None = None  # default: eff_batch_size / batch_size
    blr: float = 0.1
    lr: float | None = None  # absolute lr; default blr * effective batch / 256
    min_lr: float = 0.0
    weight_decay: float = 0.0
    momentum: float = 0.9
    subset_file: str | None = None  # ImageNet 1% / 10% list: one image name (or key) a line
    shots: int | None = None
    percent: float | None = None
    small_subset: str = "cycle"  # a subset < eff_batch_size: "cycle" (A.8) or "partial"
    seed: int = 0
    cached_features: bool = False
    features_dir: str | None = None  # default: <output_dir>/features
    device: str = "auto"
    precision: str = "auto"
    num_workers: int = 8
    input_size: int = 224
    resume: str | None = None
    auto_resume: bool = True
    log_every: int = 50
    trust_checkpoint: bool = False  # the checkpoint may be unpickled in full


def _find_resume(cfg: LinprobeConfig, out_dir: Path):
    if cfg.resume:
        return Path(cfg.resume)
    last = out_dir / "checkpoint-last.pth"
    return last if cfg.auto_resume and last.is_file() else None


def _subset_text(cfg: LinprobeConfig, num_used: int) -> str:
    """The training subset in words, for figure titles."""
    if cfg.subset_file:
        return f"{num_used} images listed in {Path(cfg.subset_file).name}"
    if cfg.shots is not None:
        return f"{cfg.shots} shot(s) per class ({num_used} images)"
    if cfg.percent is not None:
        return f"{cfg.percent:g}% of each class ({num_used} images)"
    return f"all {num_used} training images"


def _sampling(cfg: LinprobeConfig, num_used: int, eff_batch: int) -> tuple[str, str]:
    """(name, description) of how an epoch's samples are drawn (``epoch_batches``)."""
    if num_used >= eff_batch:
        steps = num_used // eff_batch
        return "whole", (
            f"{steps} optimizer step(s) of {eff_batch} samples per epoch, a seeded permutation "
            f"cut into whole effective batches, the last {num_used - steps * eff_batch} unused "
            "(MAE's drop_last)"
        )
    if cfg.small_subset == "cycle":
        return "cycle", (
            f"1 optimizer step of {eff_batch} samples per epoch, cycled through the {num_used} "
            f"training images (each pass a permutation seeded with (seed, pass)): the gradient "
            "of a full effective batch at its lr (the paper's A.8)"
        )
    return "partial", (
        f"1 optimizer step of the {num_used} training images per epoch (fewer than "
        f"{eff_batch}), at the lr of {eff_batch} (not the paper's A.8)"
    )


def run_linprobe(cfg: LinprobeConfig, log=print) -> dict:
    if cfg.warmup_epochs > cfg.epochs:
        raise InputError(f"--warmup_epochs {cfg.warmup_epochs} exceeds --epochs {cfg.epochs}")
    if cfg.small_subset not in SMALL_SUBSET_MODES:
        raise InputError(f"--small_subset {cfg.small_subset}: choose one of {SMALL_SUBSET_MODES}")
    check_data_root(cfg.data_path, cfg.checkpoint)
    with claim_output(cfg.output_dir, "--output_dir"):
        return _probe(cfg, log)


def _probe(cfg: LinprobeConfig, log) -> dict:
    device = use_device(resolve_device(cfg.device))
    out_dir = Path(cfg.output_dir)
    features_dir = Path(cfg.features_dir) if cfg.features_dir else out_dir / "features"
    started = time.perf_counter()

    train = image_split(cfg.data_path, "train")
    val = image_split(cfg.data_path, "val", train.class_names)
    num_classes = len(train.class_names)
    subset = configured_subset(cfg, train)
    fingerprint = {  # what a resumed run must share with the run it continues
        "checkpoint_sha256": file_sha256(cfg.checkpoint),
        "subset_sha256": subset_sha256(subset),
        "subset_file_sha256": file_sha256(cfg.subset_file) if cfg.subset_file else None,
    }
    sha256 = fingerprint["checkpoint_sha256"]
    encoder, info = load_encoder_as_configured(cfg, sha256)
    encoder.to(device)
    accum_iter = cfg.accum_iter or max(1, round(cfg.eff_batch_size / cfg.batch_size))
    eff_batch = cfg.batch_size * accum_iter
    lr = cfg.lr if cfg.lr is not None else cfg.blr * eff_batch / 256
    sampling, sampling_text = _sampling(cfg, len(subset), eff_batch)
    fingerprint["sampling"] = sampling
    log(
        f"train images: {len(subset)} of {len(train.keys)}, val: {len(val.keys)}, "
        f"classes: {num_classes}; micro-batch {cfg.batch_size} x accum {accum_iter} = "
        f"effective batch {eff_batch}; lr {lr:.4g} (blr {cfg.blr}); {sampling_text}"
    )

    common = extraction_options(cfg, sha256, device, features_dir, log)
    val_feats, val_labels = split_features(encoder, val, "val", **common)
    if cfg.cached_features:
        # Only the subset's images: a 1% probe should not extract the other 99%.
        used = ImageSplit(
            train.root, [train.keys[i] for i in subset], train.labels[subset], train.class_names
        )
        train_feats, train_labels = split_features(encoder, used, "train", **common)
        source = CachedFeatureBatches(train_feats, train_labels, device)
        del encoder
    else:
        dataset = LabelledImages(train, probe_train_transform(cfg.input_size), subset)
        source = ImageFeatureBatches(
            encoder,
            dataset,
            device,
            pool=cfg.pool,
            precision=cfg.precision,
            num_workers=cfg.num_workers,
        )

    # Seeded here, not earlier: whether features came from the cache (no loader drew from the
    # global RNG) must not change the head's initial weights.
    torch.manual_seed(cfg.seed)
    head = LinearProbeHead(val_feats.shape[1], num_classes).to(device)
    optimizer = LARS(head.parameters(), lr=lr, weight_decay=cfg.weight_decay, momentum=cfg.momentum)
    n_parameters = sum(p.numel() for p in head.parameters())

    history, start_epoch = [], 0
    resume_path = _find_resume(cfg, out_dir)
    if resume_path is not None:
        state = load_torch_file(resume_path)
        # Written before sampling was recorded: small subsets were then drawn as "partial".
        state.setdefault("sampling", "whole" if sampling == "whole" else "partial")
        keys = ("checkpoint_sha256", "subset_sha256", "sampling")
        changed = [key for key in keys if state.get(key) != fingerprint[key]]
        if changed:
            raise InputError(
                f"{resume_path} belongs to another encoder, training subset or --small_subset "
                f"({', '.join(changed)} differ); use another --output_dir or pass "
                "--no_auto_resume"
            )
        head.load_state_dict(state["head"])
        optimizer.load_state_dict(state["optimizer"])
        start_epoch, history = state["epoch"] + 1, state["history"]
        log(f"resumed from {resume_path} at epoch {start_epoch}")

    writer = open_tensorboard(out_dir / "tensorboard")
    lr_schedule = partial(
        lr_at, lr=lr, min_lr=cfg.min_lr, warmup_epochs=cfg.warmup_epochs, epochs=cfg.epochs
    )
    for epoch in range(start_epoch, cfg.epochs):
        batches = epoch_batches(
            len(subset),
            cfg.batch_size,
            seed=cfg.seed,
            epoch=epoch,
            accum_iter=accum_iter,
            small_subset=cfg.small_subset,
        )
        train_stats = train_head_one_epoch(
            head,
            source.epoch(batches),
            [len(b) for b in batches],
            optimizer,
            epoch=epoch,
            accum_iter=accum_iter,
            lr_at=lr_schedule,
            device=device,
            log_every=cfg.log_every,
            log=log,
        )
        test_stats = evaluate(head, val_feats, val_labels, device)
        stats = {
            **{f"train_{k}": v for k, v in train_stats.items()},
            **{f"test_{k}": v for k, v in test_stats.items()},
            "epoch": epoch,
            "n_parameters": n_parameters,
        }
        history.append(stats)
        log(
            f"epoch {epoch}: train loss {train_stats['loss']:.4f}, val top-1 "
            f"{test_stats['acc1']:.2f} top-5 {test_stats['acc5']:.2f}"
        )
        checkpoint = {
            "head": head.state_dict(),
            "optimizer": optimizer.state_dict(),
            "epoch": epoch,
            "config": asdict(cfg),
            "history": history,
            **fingerprint,
        }
        save_torch_file(checkpoint, out_dir / "checkpoint-last.pth")
        if epoch == cfg.epochs - 1:
            save_torch_file(checkpoint, out_dir / f"checkpoint-{epoch}.pth")
        with open(out_dir / "log.txt", "a", encoding="utf-8") as f:
            f.write(json.dumps(stats) + "\n")
        if writer is not None:
            for key in ("test_acc1", "test_acc5", "test_loss", "train_loss", "train_lr"):
                writer.add_scalar(key.replace("_", "/", 1), stats[key], epoch)
            writer.flush()

    if not history:
        raise InputError(f"nothing to do: --epochs {cfg.epochs}")
    acc1 = [h["test_acc1"] for h in history]
    result = {
        "protocol": "linprobe",
        "checkpoint": str(Path(cfg.checkpoint).resolve()),
        "checkpoint_sha256": sha256,
        "encoder": info.to_dict(),
        "data_path": str(Path(cfg.data_path).resolve()),
        "num_train_used": len(subset),
        "num_train": len(train.keys),
        "num_val": len(val.keys),
        "num_classes": num_classes,
        "fewshot": {
            "subset_file": cfg.subset_file,
            "subset_file_sha256": fingerprint["subset_file_sha256"],
            "shots": cfg.shots,
            "percent": cfg.percent,
            "seed": cfg.seed,
            "subset_sha256": fingerprint["subset_sha256"],
        },
        "protocol_details": {
            "head": "BatchNorm1d(affine=False, eps=1e-6) + Linear (trunc-normal std 0.01)",
            "optimizer": f"LARS momentum {cfg.momentum}, weight decay {cfg.weight_decay}",
            "lr": lr,
            "blr": cfg.blr,
            "effective_batch": eff_batch,
            "accum_iter": accum_iter,
            "sampling": sampling,
            "epoch_definition": sampling_text,
            "schedule": f"{cfg.warmup_epochs} warmup epochs, half-cycle cosine per iteration",
            "epochs": cfg.epochs,
            "train_features": (
                "cached center-crop features, no augmentation (approximation)"
                if cfg.cached_features
                else "RandomResizedCrop(224, bicubic) + flip, every epoch"
            ),
            "features": f"{cfg.pool} token after the final norm",
        },
        "final": {"acc1": history[-1]["test_acc1"], "acc5": history[-1]["test_acc5"]},
        "best_acc1": max(acc1),
        "history": history,
        "elapsed_s": time.perf_counter() - started,
        "device": str(device),
        "config": asdict(cfg),
        "software": software_versions(python=True),
    }
    write_json_atomic(out_dir / "linprobe.json", result)
    plot_probe(
        {f"seed {cfg.seed}": acc1},
        out_dir / "linprobe.png",
        f"Linear probe (MAE protocol) of {Path(cfg.checkpoint).name}: val top-1 per epoch\n"
        f"{_subset_text(cfg, len(subset))}, effective batch {eff_batch}, seed {cfg.seed}",
    )
    log(
        f"final val top-1 {result['final']['acc1']:.2f} (best {result['best_acc1']:.2f}); "
        f"results: {out_dir / 'linprobe.json'}"
    )
    return result


def run_seeds(cfg: LinprobeConfig, seeds, log=print) -> dict:
    """One probe per seed, then mean and std of the final top-1. A seed draws the head's
    initialisation, the training order and a per-class subset; a --subset_file subset is the
    same for every seed."""
    with claim_output(cfg.output_dir, "--output_dir"):  # (each seed claims its own folder)
        return _seeds(cfg, [int(s) for s in seeds], log)


def _seeds(cfg: LinprobeConfig, seeds: list[int], log) -> dict:
    out_dir = Path(cfg.output_dir)
    features_dir = cfg.features_dir or str(out_dir / "features")  # shared by the seeds
    if cfg.subset_file:
        log(f"{cfg.subset_file} fixes the subset: the seeds vary the head's init and the order")
    runs = []
    for seed in seeds:
        log(f"--- seed {seed} ---")
        runs.append(
            run_linprobe(
                dataclasses.replace(
                    cfg,
                    seed=seed,
                    output_dir=str(out_dir / f"seed_{seed}"),
                    features_dir=features_dir,
                ),
                log=log,
            )
        )
    final1 = [r["final"]["acc1"] for r in runs]
    final5 = [r["final"]["acc5"] for r in runs]

    def spread(values):  # sample std (n - 1); 0 for a single seed
        return statistics.stdev(values) if len(values) > 1 else 0.0

    summary = {
        "protocol": "linprobe-seeds",
        "checkpoint_sha256": runs[0]["checkpoint_sha256"],
        "fewshot": {
            "subset_file": cfg.subset_file,
            "shots": cfg.shots,
            "percent": cfg.percent,
            "subset_sha256": [r["fewshot"]["subset_sha256"] for r in runs],
        },
        "seeds_vary": (
            "head initialisation and training order (the subset file fixes the subset)"
            if cfg.subset_file
            else "head initialisation, training order and the per-class subset"
            if cfg.shots is not None or cfg.percent is not None
            else "head initialisation and training order"
        ),
        "seeds": seeds,
        "final_acc1": final1,
        "final_acc5": final5,
        "acc1_mean": statistics.fmean(final1),
        "acc1_std": spread(final1),
        "acc5_mean": statistics.fmean(final5),
        "acc5_std": spread(final5),
        "runs": [str(out_dir / f"seed_{s}" / "linprobe.json") for s in seeds],
    }
    write_json_atomic(out_dir / "fewshot_summary.json", summary)
    plot_probe(
        {f"seed {s}": [h["test_acc1"] for h in r["history"]] for s, r in zip(seeds, runs)},
        out_dir / "fewshot.png",
        f"Linear probe (MAE protocol) of {Path(cfg.checkpoint).name}: val top-1 per epoch\n"
        f"{_subset_text(cfg, runs[0]['num_train_used'])}, seeds {', '.join(map(str, seeds))}: "
        f"{summary['acc1_mean']:.2f} +- {summary['acc1_std']:.2f}",
    )
    log(f"top-1 over seeds {seeds}: {summary['acc1_mean']:.2f} +- {summary['acc1_std']:.2f}")
    return summary
