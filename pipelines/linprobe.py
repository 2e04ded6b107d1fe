"""Linear probing (the MAE protocol) and few-shot probing over several seeds.

One run writes to its output directory: ``log.txt`` (one JSON line per epoch, as MAE),
``checkpoint-last.pth`` every epoch and ``checkpoint-<last epoch>.pth`` at the end (head,
optimizer, epoch, config, resume state; written atomically: ``pipelines/linprobe_state.py``),
``linprobe.json`` (every number) and ``linprobe.png`` (validation top-1 per epoch). A run
resumes as every command does (``attgmae.engine.resume``): from its output directory's
checkpoints by default, refusing one made with other settings (``--accept_changed`` names the
changes to allow, recorded under ``changes``). On SIGTERM / SIGUSR1 it saves
``checkpoint-last.pth`` after the current optimizer step and leaves with exit code 75; the rerun
continues inside that epoch (exactly so with ``cached_features``). Several seeds: one
sub-directory ``seed_<s>`` each, and ``fewshot_summary.json`` / ``fewshot.png`` with mean and
std.

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

Under torchrun, MAE's batch arithmetic (``batch_size`` per process, effective batch = batch x
accum x processes, the same lr rule) and one process's results: the ranks share the encoder's
work (validation features as ``split_features``, training micro-batches as
``ImageFeatureBatches``) and every rank runs the same head steps on the gathered features; rank
0 alone evaluates and writes. With ``cached_features`` rank 0 alone trains the head.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from dataclasses import asdict
from functools import partial
from pathlib import Path

import torch

from attgmae.core.device import resolve_precision
from attgmae.core.distributed import main_value
from attgmae.core.errors import InputError
from attgmae.core.files import file_sha256, write_json_atomic
from attgmae.core.outputs import claim_output
from attgmae.core.progress import duration
from attgmae.core.provenance import software_versions
from attgmae.core.signals import preempted, stop_agreed, stop_requested, stop_requests
from attgmae.engine.launch import distributed_session
from attgmae.engine.resume import config_settings
from attgmae.eval.features import (
    ImageSplit,
    LabelledImages,
    check_class_count,
    check_data_root,
    extraction_options,
    image_split,
    split_features,
)
from attgmae.eval.fewshot import configured_subset, subset_sha256, subset_text
from attgmae.eval.lars import LARS
from attgmae.eval.linprobe import (
    SMALL_SUBSET_MODES,
    CachedFeatureBatches,
    ImageFeatureBatches,
    LinearProbeHead,
    epoch_batches,
    epoch_sampling,
    evaluate,
)
from attgmae.eval.linprobe import train_one_epoch as train_head_one_epoch
from attgmae.eval.report import plot_probe
from attgmae.eval.transforms import probe_train_transform
from attgmae.models.encoder import load_encoder_as_configured
from attgmae.optim import lr_at
from attgmae.pipelines.linprobe_config import LinprobeConfig
from attgmae.pipelines.linprobe_state import ProbeState, find_probe_checkpoint


def _check(cfg: LinprobeConfig) -> None:
    if cfg.warmup_epochs > cfg.epochs:
        raise InputError(f"--warmup_epochs {cfg.warmup_epochs} exceeds --epochs {cfg.epochs}")
    if cfg.small_subset not in SMALL_SUBSET_MODES:
        raise InputError(f"--small_subset {cfg.small_subset}: choose one of {SMALL_SUBSET_MODES}")
    check_data_root(cfg.data_path, cfg.checkpoint)


def _quiet(message: str) -> None:
    pass


def run_linprobe(cfg: LinprobeConfig, log=print) -> dict | None:
    """One probe; under torchrun the ranks share the encoder's work (``ImageFeatureBatches``,
    ``split_features``) and rank 0 alone evaluates and writes (the result on rank 0, None on
    the others)."""
    _check(cfg)
    with distributed_session(cfg.device) as (info, device):
        with claim_output(cfg.output_dir, "--output_dir", info=info):
            return _probe(cfg, info, device, log)


def _probe(cfg: LinprobeConfig, info, device, log) -> dict | None:
    log = log if info.is_main else _quiet
    out_dir = Path(cfg.output_dir)
    if info.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
    features_dir = Path(cfg.features_dir) if cfg.features_dir else out_dir / "features"
    started = time.perf_counter()

    train = image_split(cfg.data_path, "train")
    check_class_count(train, cfg.nb_classes)
    val = image_split(cfg.data_path, "val", train.class_names)
    num_classes = len(train.class_names)
    subset = configured_subset(cfg, train)
    digests = {
        "checkpoint_sha256": file_sha256(cfg.checkpoint),
        "subset_sha256": subset_sha256(subset),
        "subset_file_sha256": file_sha256(cfg.subset_file) if cfg.subset_file else None,
    }
    sha256 = digests["checkpoint_sha256"]
    # MAE's arithmetic: batch_size per process, effective batch = batch x accum x processes.
    world = info.world_size
    accum_iter = cfg.accum_iter or max(1, round(cfg.eff_batch_size / (cfg.batch_size * world)))
    eff_batch = cfg.batch_size * accum_iter * world
    lr = cfg.lr if cfg.lr is not None else cfg.blr * eff_batch / 256
    sampling, sampling_text = epoch_sampling(len(subset), eff_batch, cfg.small_subset)
    settings = config_settings(  # what a resumed run must share with the run it continues
        cfg, epochs=cfg.epochs, accum_iter=accum_iter * world,  # (micro-batches per step, all
        eff_batch_size=eff_batch, lr=lr,                         # ranks: any world size fits)
        precision=resolve_precision(cfg.precision, device), sampling=sampling, **digests,
    )  # fmt: skip
    resumed = find_probe_checkpoint(cfg, out_dir, settings, log, info.is_main)  # before extraction
    encoder, info_encoder = load_encoder_as_configured(cfg, sha256)
    encoder.to(device)
    log(
        f"train images: {len(subset)} of {len(train.keys)}, val: {len(val.keys)}, "
        f"classes: {num_classes}; micro-batch {cfg.batch_size} x accum {accum_iter} x {world} "
        f"proc = effective batch {eff_batch}; lr {lr:.4g} (blr {cfg.blr}); {sampling_text}"
    )

    common = extraction_options(cfg, info_encoder, device, features_dir, log, dist=info)
    val_feats, val_labels = split_features(encoder, val, "val", **common)
    if cfg.cached_features:
        # Only the subset's images: a 1% probe should not extract the other 99%.
        used = ImageSplit(
            train.root, [train.keys[i] for i in subset], train.labels[subset], train.class_names
        )
        train_feats, train_labels = split_features(encoder, used, "train", **common)
        del encoder
        if not info.is_main:  # rank 0 alone trains the head on the gathered features
            return None
        source = CachedFeatureBatches(train_feats, train_labels, device)
    else:
        dataset = LabelledImages(train, probe_train_transform(cfg.input_size), subset)
        source = ImageFeatureBatches(
            encoder,
            dataset,
            device,
            pool=cfg.pool,
            precision=cfg.precision,
            num_workers=cfg.num_workers,
            seed=cfg.seed,
            dist=info,
        )

    # Seeded here, not earlier: whether features came from the cache (no loader drew from the
    # global RNG) must not change the head's initial weights. The same head on every rank.
    torch.manual_seed(cfg.seed)
    width = main_value(val_feats.shape[1] if info.is_main else 0, info)
    head = LinearProbeHead(width, num_classes).to(device)
    optimizer = LARS(head.parameters(), lr=lr, weight_decay=cfg.weight_decay, momentum=cfg.momentum)
    probe = ProbeState(cfg, out_dir, head, optimizer, settings, resumed, log, writes=info.is_main)
    lr_schedule = partial(
        lr_at, lr=lr, min_lr=cfg.min_lr, warmup_epochs=cfg.warmup_epochs, epochs=cfg.epochs
    )
    # With cached features rank 0 alone trains (the others left above); else every rank runs the
    # same head steps and they agree on a stop after each optimizer step.
    alone = not info.distributed or cfg.cached_features
    run_started, first_epoch = time.perf_counter(), probe.start_epoch
    with stop_requests():  # SIGTERM / SIGUSR1: save after the current optimizer step, leave
        for epoch in range(probe.start_epoch, cfg.epochs):
            # One process's micro-batches (accum_iter x world of them per step): the ranks
            # share them
            batches = epoch_batches(
                len(subset),
                cfg.batch_size,
                seed=cfg.seed,
                epoch=epoch,
                accum_iter=accum_iter * world,
                small_subset=cfg.small_subset,
            )
            start, sums = probe.take_start()
            train_stats = train_head_one_epoch(
                head,
                source.epoch(batches, epoch, start=start),
                [len(b) for b in batches],
                optimizer,
                epoch=epoch,
                accum_iter=accum_iter * world,
                lr_at=lr_schedule,
                device=device,
                log_every=cfg.log_every,
                log=log,
                epochs=cfg.epochs,
                start=start,
                sums=sums,
                should_stop=(lambda: stop_requested() is not None)
                if alone
                else (lambda: stop_agreed(info)),
            )
            if train_stats["stopped_at"] is not None:
                raise preempted(probe.save_partial(epoch, train_stats))
            test_stats = evaluate(head, val_feats, val_labels, device) if info.is_main else {}
            probe.end_epoch(epoch, train_stats, test_stats)
            if info.is_main:
                per_epoch = (time.perf_counter() - run_started) / (epoch + 1 - first_epoch)
                log(
                    f"epoch {epoch}: {train_stats['img_per_s']:.1f} img/s, "
                    f"{duration(per_epoch)} per epoch, "
                    f"ETA {duration(per_epoch * (cfg.epochs - epoch - 1))}"
                )
            more = epoch + 1 < cfg.epochs
            if more and (stop_requested() is not None if alone else stop_agreed(info)):
                raise preempted(f"{out_dir / 'checkpoint-last.pth'} (epoch {epoch} done)")
    history = probe.history

    if not info.is_main:
        return None
    if not history:
        raise InputError(f"nothing to do: --epochs {cfg.epochs}")
    acc1 = [h["test_acc1"] for h in history]
    result = {
        "protocol": "linprobe",
        "checkpoint": str(Path(cfg.checkpoint).resolve()),
        "checkpoint_sha256": sha256,
        "encoder": info_encoder.to_dict(),
        "data_path": str(Path(cfg.data_path).resolve()),
        "num_train_used": len(subset),
        "num_train": len(train.keys),
        "num_val": len(val.keys),
        "num_classes": num_classes,
        "fewshot": {
            "subset_file": cfg.subset_file,
            "subset_file_sha256": digests["subset_file_sha256"],
            "shots": cfg.shots,
            "percent": cfg.percent,
            "seed": cfg.seed,
            "subset_sha256": digests["subset_sha256"],
        },
        "protocol_details": {
            "head": "BatchNorm1d(affine=False, eps=1e-6) + Linear (trunc-normal std 0.01)",
            "optimizer": f"LARS momentum {cfg.momentum}, weight decay {cfg.weight_decay}",
            "lr": lr,
            "blr": cfg.blr,
            "effective_batch": eff_batch,
            "accum_iter": accum_iter,
            "world_size": world,
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
        "changes": probe.changes,  # settings resumes were told to accept (when, old, new)
        "software": software_versions(python=True),
    }
    write_json_atomic(out_dir / "linprobe.json", result)
    plot_probe(
        {f"seed {cfg.seed}": acc1},
        out_dir / "linprobe.png",
        f"Linear probe (MAE protocol) of {Path(cfg.checkpoint).name}: val top-1 per epoch\n"
        f"{subset_text(cfg, len(subset))}, effective batch {eff_batch}, seed {cfg.seed}",
    )
    log(
        f"final val top-1 {result['final']['acc1']:.2f} (best {result['best_acc1']:.2f}); "
        f"results: {out_dir / 'linprobe.json'}"
    )
    return result


def run_seeds(cfg: LinprobeConfig, seeds, log=print) -> dict | None:
    """One probe per seed, then mean and std of the final top-1. A seed draws the head's
    initialisation, the training order and a per-class subset; a --subset_file subset is the
    same for every seed."""
    seeds = [int(s) for s in seeds]
    out_dir = Path(cfg.output_dir)
    features_dir = cfg.features_dir or str(out_dir / "features")  # shared by the seeds
    seeded_cfgs = [
        dataclasses.replace(
            cfg, seed=seed, output_dir=str(out_dir / f"seed_{seed}"), features_dir=features_dir
        )
        for seed in seeds
    ]
    for seeded_cfg in seeded_cfgs:
        _check(seeded_cfg)
    runs = []
    with distributed_session(cfg.device) as (info, device):
        with claim_output(cfg.output_dir, "--output_dir", info=info):  # and each seed its own
            if cfg.subset_file and info.is_main:
                log(f"{cfg.subset_file} fixes the subset: the seeds vary the head's init and "
                    "the order")  # fmt: skip
            for seed, seeded_cfg in zip(seeds, seeded_cfgs):
                if info.is_main:
                    log(f"--- seed {seed} ---")
                with claim_output(seeded_cfg.output_dir, "--output_dir", info=info):
                    runs.append(_probe(seeded_cfg, info, device, log))
            if not info.is_main:
                return None
            return _seed_summary(cfg, seeds, runs, log)


def _seed_summary(cfg: LinprobeConfig, seeds: list[int], runs: list[dict], log) -> dict:
    out_dir = Path(cfg.output_dir)
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
        f"{subset_text(cfg, runs[0]['num_train_used'])}, seeds {', '.join(map(str, seeds))}: "
        f"{summary['acc1_mean']:.2f} +- {summary['acc1_std']:.2f}",
    )
    log(f"top-1 over seeds {seeds}: {summary['acc1_mean']:.2f} +- {summary['acc1_std']:.2f}")
    return summary
