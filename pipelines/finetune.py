"""End-to-end fine-tuning (the MAE protocol, the paper's Table 5 and low-shot Sec. A.6).

Data flows: pretrained checkpoint (any accepted format) -> ViT with a new head (avg pooling +
fc_norm by default) -> AdamW over MAE's layer-decay groups -> ``attgmae.engine.SupervisedRun``
(DDP, bf16, accumulation, per-iteration lr, exact resume) on the training images (all, or a
subset) through MAE's augmentation, mixup/cutmix per batch -> validation top-1 / top-5 after
every epoch on center crops.

Writes to ``output_dir``: ``config.json`` (the resolved flags), ``log.txt`` (one JSON line per
epoch, as MAE), ``checkpoint-last.pth`` every epoch and ``checkpoint-N.pth`` every
``save_every`` epochs and after the last (official MAE format), ``finetune.json`` (every
number) and ``finetune.png`` (accuracy and loss per epoch). ``eval_only``: the checkpoint as it
is (a fine-tuned one) on the validation images -> ``finetune_eval.json``.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import asdict, replace
from functools import partial
from pathlib import Path

import torch

from attgmae.core.errors import InputError
from attgmae.core.files import file_sha256, write_json_atomic
from attgmae.core.outputs import claim_output
from attgmae.core.provenance import software_versions
from attgmae.engine import RunConfig, SupervisedRun, distributed_session, run_config_from
from attgmae.engine.resume import config_settings
from attgmae.eval import param_groups_lrd
from attgmae.eval.features import check_data_root
from attgmae.eval.finetune import (
    classification_criterion,
    classification_loss,
    evaluate_classifier,
    make_mixup,
    mixup_hook,
)
from attgmae.eval.finetune_model import finetune_model
from attgmae.eval.report import plot_finetune
from attgmae.pipelines.finetune_config import (
    FinetuneConfig,
    batch_arithmetic,
    by_model,
    validate,
)
from attgmae.pipelines.finetune_data import FinetuneData, build_finetune_data

BETAS = (0.9, 0.999)  # AdamW's defaults, as MAE's fine-tuning


def _run_config(cfg: FinetuneConfig, accum_iter: int, lr: float) -> RunConfig:
    return run_config_from(
        cfg,
        epochs=cfg.epochs,
        lr=lr,
        output_dir=cfg.output_dir,
        warmup_epochs=cfg.warmup_epochs,
        min_lr=cfg.min_lr,
        batch_size=cfg.batch_size,
        accum_iter=accum_iter,
        betas=BETAS,
    )


def _details(cfg: FinetuneConfig, accum: int, eff_batch: int, lr: float, world: int) -> dict:
    """How the protocol ran: recorded in the checkpoints' args and the result."""
    return {
        "preset": cfg.preset,
        "world_size": world,
        "accum_iter": accum,
        "effective_batch": eff_batch,
        "lr": lr,
        "blr": cfg.blr,
        "optimizer": f"AdamW betas {BETAS}, weight decay {cfg.weight_decay} (not on 1-D "
        f"parameters, cls_token, pos_embed), layer decay {cfg.layer_decay}",
        "schedule": f"{cfg.warmup_epochs} warmup epochs, half-cycle cosine to {cfg.min_lr}, "
        f"per iteration",
        "augmentation": f"timm create_transform: RandomResizedCrop({cfg.input_size}, bicubic) + "
        f"flip + {cfg.aa or 'no RandAugment'} + RandomErasing(p {cfg.reprob}, {cfg.remode})",
        "mixing": {"mixup": cfg.mixup, "cutmix": cfg.cutmix, "mode": cfg.mixup_mode},
        "smoothing": cfg.smoothing,
        "pool": cfg.global_pool,
        "drop_path": cfg.drop_path,
        "eval_transform": f"Resize(bicubic) + CenterCrop({cfg.input_size}) (MAE's crop ratio)",
    }


def _common_result(cfg, encoder, data: FinetuneData, device, started) -> dict:
    return {
        "checkpoint": str(Path(cfg.checkpoint).resolve()),
        "checkpoint_sha256": encoder.sha256,
        "encoder": encoder.to_dict(),
        "data_path": str(Path(cfg.data_path).resolve()),
        "num_train_used": len(data.subset),
        "num_train": len(data.train.keys),
        "num_val": len(data.val.keys),
        "num_classes": data.num_classes,
        "subset": {
            "subset_file": cfg.subset_file,
            "percent": cfg.percent,
            "shots": cfg.shots,
            "seed": cfg.seed,
            "subset_sha256": data.subset_sha256,
        },
        "elapsed_s": time.perf_counter() - started,
        "device": str(device),
        "config": asdict(cfg),
        "software": software_versions(python=True),
    }


def _supervised_run(
    cfg, model, encoder, data: FinetuneData, evaluate, details: dict, info, device, log
) -> SupervisedRun:
    """The run: MAE's layer-decay groups, mixup/cutmix and its loss, official MAE ``args``."""
    accum, lr = details["accum_iter"], details["lr"]
    no_decay = getattr(model, "no_weight_decay", set)()  # cls_token, pos_embed, ...
    groups = param_groups_lrd(model, cfg.weight_decay, no_decay, cfg.layer_decay)
    mixup = make_mixup(
        data.num_classes,
        cfg.mixup,
        cfg.cutmix,
        cfg.cutmix_minmax,
        cfg.mixup_prob,
        cfg.mixup_switch_prob,
        cfg.mixup_mode,
        cfg.smoothing,
    )
    criterion = classification_criterion(mixup is not None, cfg.smoothing)
    # Official MAE's args (the absolute lr, the accum_iter used), ``model`` where
    # read_checkpoint looks for it.
    args = argparse.Namespace(**{**asdict(cfg), **details})
    args.finetune, args.nb_classes = cfg.checkpoint, data.num_classes
    args.model = cfg.timm_model or encoder.model_name
    fingerprint = config_settings(  # what defines the run, with the engine's schedule
        cfg,
        checkpoint_sha256=encoder.sha256,
        subset_sha256=data.subset_sha256,
        num_classes=data.num_classes,
    )
    return SupervisedRun(
        _run_config(cfg, accum, lr),
        model,
        groups,
        data.train_set,
        classification_loss(criterion),
        evaluate=evaluate,
        batch_hook=mixup_hook(mixup) if mixup is not None else None,
        args=args,
        fingerprint=fingerprint,
        info=info,
        device=device,
        log=log,
    )


def _result(fit: dict, details: dict, loss_name: str) -> dict:
    history = fit["history"]
    last = history[-1] if history else {}
    return {
        "protocol": "finetune",
        "stopped": fit["stopped"],
        "protocol_details": {**details, "loss": loss_name},
        "final": {key: last.get(f"test_{key}") for key in ("acc1", "acc5", "loss")},
        "best_acc1": max((h["test_acc1"] for h in history), default=None),
        "history": history,
        "epoch_seconds": fit["epoch_seconds"],
        "train_img_per_s": fit["img_per_s"],
        "last_checkpoint": fit["last_checkpoint"],
    }


def run_finetune(cfg: FinetuneConfig, log=print) -> dict:
    """Fine-tune (or, with ``eval_only``, evaluate) as configured -> the result dict.

    Raises InputError for anything the user must fix, RunFailed when training diverges.
    """
    validate(cfg)
    check_data_root(cfg.data_path, cfg.checkpoint)
    started = time.perf_counter()
    with (
        distributed_session(cfg.device) as (info, device),
        claim_output(cfg.output_dir, "--output_dir", info=info),
    ):
        say = log if info.is_main else (lambda message: None)
        out_dir = Path(cfg.output_dir)
        data = build_finetune_data(cfg, info, device)
        accum, eff_batch, lr = batch_arithmetic(cfg, info.world_size)
        torch.manual_seed(cfg.seed)  # the new head (and fc_norm): the same on every rank
        model, encoder = finetune_model(
            cfg.checkpoint,
            data.num_classes,
            model_name=cfg.model,
            timm_model=cfg.timm_model,
            num_heads=cfg.num_heads,
            img_size=cfg.input_size,
            global_pool=cfg.global_pool,
            drop_path_rate=cfg.drop_path,
            trusted=cfg.trust_checkpoint,
            checkpoint_key=cfg.checkpoint_key,
            force_model=cfg.force_model,
            sha256=file_sha256(cfg.checkpoint),
        )
        # a preset's layer decay by the encoder's size (Sec. A.6), resolved and recorded
        depth = len(getattr(model, "blocks", ()))
        cfg = replace(cfg, layer_decay=by_model(cfg.layer_decay, depth))
        say(
            f"fine-tuning {encoder.source_format} {encoder.model_name or ''} from "
            f"{cfg.checkpoint} (new: {', '.join(encoder.new_parts) or 'nothing'}); train "
            f"images {len(data.subset)} of {len(data.train.keys)}, val {len(data.val.keys)}, "
            f"classes {data.num_classes}; effective batch {eff_batch} = {cfg.batch_size} x "
            f"{accum} accum x {info.world_size} proc; lr {lr:.3g} (blr {cfg.blr})"
        )
        evaluate = partial(
            evaluate_classifier,
            loader=data.val_loader,
            device=device,
            precision=cfg.amp,
            info=info,
        )
        details = _details(cfg, accum, eff_batch, lr, info.world_size)
        if cfg.eval_only:
            if encoder.new_parts:  # MAE's --eval loads strictly: a new part scores nothing
                raise InputError(
                    f"--eval_only: {cfg.checkpoint} has no fitting "
                    f"{', '.join(encoder.new_parts)} for {data.num_classes} classes with "
                    f"--global_pool {cfg.global_pool}: evaluate a checkpoint fine-tuned for "
                    f"these classes, with the pooling it was fine-tuned with"
                )
            metrics = evaluate(model.to(device))
            acc1, acc5, loss = metrics["acc1"], metrics["acc5"], metrics["loss"]
            say(f"* Acc@1 {acc1:.3f} Acc@5 {acc5:.3f} loss {loss:.3f}")  # as MAE's --eval
            result = {"protocol": "finetune-eval", "metrics": metrics}
            result.update(_common_result(cfg, encoder, data, device, started))
            if info.is_main:
                write_json_atomic(out_dir / "finetune_eval.json", result)
            return result
        run = _supervised_run(cfg, model, encoder, data, evaluate, details, info, device, say)
        if info.is_main:  # after the resume's checks: its accepted changes are in the history
            config = {**asdict(cfg), "resolved": details, "history": run.history}
            write_json_atomic(out_dir / "config.json", config)
        fit = run.fit()
        result = _result(fit, details, type(run.loss_fn.criterion).__name__)
        result.update(_common_result(cfg, encoder, data, device, started))
        if info.is_main and not fit["stopped"]:
            write_json_atomic(out_dir / "finetune.json", result)
            plot_finetune(
                result["history"], out_dir / "finetune.png", f"fine-tuning: {out_dir.name}"
            )
            final = result["final"]
            say(
                f"final val top-1 {final['acc1']:.2f} (best {result['best_acc1']:.2f}), top-5 "
                f"{final['acc5']:.2f}; results: {out_dir / 'finetune.json'}"
            )
        return result
