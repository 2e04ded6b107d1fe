"""Semantic segmentation by end-to-end fine-tuning (the paper's Table 6; MultiMAE's protocol).

Data flows: pretrained checkpoint (any accepted format) -> ViT encoder, position embedding at the
input size -> ``DenseModel`` with a ConvNeXt head on the last block's patch tokens -> AdamW over
MultiMAE's layer-decay groups -> ``attgmae.engine.SupervisedRun`` (DDP, bf16, accumulation, lr
warmup from ``warmup_lr``, exact resume) on the training images through MultiMAE's ``simple``
augmentation, per-pixel cross-entropy with the ignore label -> after every ``eval_every`` epochs
(and the last): mIoU, mean class accuracy and pixel accuracy from one confusion matrix over the
validation images (whole-image or sliding-window inference).

Writes to ``output_dir``: ``config.json`` (the flags and the resolved recipe), ``log.txt`` (one
JSON line per epoch), ``checkpoint-last.pth`` and ``checkpoint-N.pth`` (every ``save_every``
epochs and after the last), ``segment.json`` (every number: final and best scores, each class's
IoU and accuracy, the protocol with its sources), ``segment.png`` (scores per epoch) and
``segment_samples.png`` (image | prediction | target for ``num_vis`` validation images).
"""

from __future__ import annotations

import argparse
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch.utils.data import Subset

from attgmae.core.errors import InputError
from attgmae.core.files import file_sha256, write_json_atomic
from attgmae.core.outputs import claim_output
from attgmae.data.dense_datasets import SegmentationDataset, SegmentationSplit, segmentation_split
from attgmae.data.dense_recipes import RECIPE_SOURCES, DenseRecipe
from attgmae.data.dense_transforms import SegmentationTransform
from attgmae.engine import SupervisedRun, distributed_session
from attgmae.engine.resume import config_settings
from attgmae.eval.dense_eval import (
    evaluate_segmentation,
    segmentation_loss,
    segmentation_samples,
    spread_indices,
)
from attgmae.eval.dense_report import plot_segmentation_history, segmentation_grid
from attgmae.eval.dense_setup import (
    check_recipe,
    dense_batch,
    dense_param_groups,
    load_dense_model,
    recipe_settings,
    resolve_recipe,
    run_config,
    run_record,
)
from attgmae.eval.features import make_loader
from attgmae.models.dense_heads import ConvNeXtHead
from attgmae.pipelines.segment_config import SegmentConfig, validate

SCALARS = ("miou", "mean_class_acc", "pixel_acc", "loss")  # what log.txt records per epoch


@dataclass
class SegmentData:
    train: SegmentationSplit
    val: SegmentationSplit
    train_set: SegmentationDataset  # augmented
    val_set: SegmentationDataset  # evaluation transform, every image
    val_loader: torch.utils.data.DataLoader  # this rank's share of val_set

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.train.class_names


def build_segment_data(cfg: SegmentConfig, recipe: DenseRecipe, batch_size: int, info, device):
    splits = [
        segmentation_split(
            cfg.dataset, cfg.data_path, split, cfg.num_classes, cfg.reduce_zero_label
        )
        for split in ("train", "val")
    ]
    train, val = splits
    if train.class_names != val.class_names:  # (folder: one classes.txt; kept as a check)
        raise InputError(f"{cfg.data_path}: train and val name different classes")
    size, slide = recipe.input_size, recipe.inference == "slide"
    train_set = SegmentationDataset(train, SegmentationTransform(size, train=True))
    fit = "shortest" if slide else "longest"
    val_set = SegmentationDataset(val, SegmentationTransform(size, train=False, eval_fit=fit))
    own = Subset(val_set, range(info.rank, len(val_set), info.world_size))
    # sliding windows: images keep their aspect ratio, so one a batch
    loader = make_loader(own, 1 if slide else batch_size, cfg.num_workers, device)
    return SegmentData(train, val, train_set, val_set, loader)


def _details(cfg, recipe: DenseRecipe, batch: int, accum: int, eff: int, world: int) -> dict:
    """How the protocol ran: recorded in the checkpoints' args and the result."""
    slide = recipe.inference == "slide"
    return {
        "recipe": asdict(recipe),
        "sources": RECIPE_SOURCES[cfg.dataset],
        "world_size": world,
        "batch_size": batch,
        "accum_iter": accum,
        "effective_batch": eff,
        "optimizer": f"AdamW betas {recipe.betas}, weight decay {recipe.weight_decay} (not on "
        f"1-D parameters, cls_token, pos_embed), layer decay {recipe.layer_decay}",
        "schedule": f"linear warmup {recipe.warmup_lr} -> {recipe.lr} over "
        f"{recipe.warmup_epochs} epochs, half-cycle cosine to {recipe.min_lr}, per iteration",
        "head": f"ConvNeXt: Linear(D, {cfg.head_dim}) per token -> {cfg.head_preds_per_patch} "
        f"predictions a patch, {cfg.head_depth} ConvNeXt blocks, bilinear upsampling",
        "loss": "cross-entropy over labelled pixels (255 ignored)",
        "augmentation": "MultiMAE simple: flip, scale jitter 0.1-2.0, colour jitter p 0.5, "
        "pad, random crop",
        "evaluation": (
            f"sliding window {recipe.input_size} stride {_stride(cfg, recipe)}, shorter side "
            f"resized to {recipe.input_size}"
            if slide
            else f"whole image: longer side resized to {recipe.input_size}, padded square"
        ),
    }


def _stride(cfg, recipe: DenseRecipe) -> int:
    return cfg.slide_stride or max(recipe.input_size * 2 // 3, 1)


def _named(values: list, names) -> dict:
    return {name: value for name, value in zip(names, values)}


def run_segment(cfg: SegmentConfig, log=print) -> dict:
    """Fine-tune for segmentation as configured -> the result dict (``segment.json``'s).

    Raises InputError for anything the user must fix, RunFailed when training diverges.
    """
    validate(cfg)
    if not Path(cfg.checkpoint).is_file():
        raise InputError(f"--checkpoint {cfg.checkpoint}: no such file")
    recipe = resolve_recipe(cfg.dataset, cfg)
    check_recipe(recipe)
    started = time.perf_counter()
    with (
        distributed_session(cfg.device) as (info, device),
        claim_output(cfg.output_dir, "--output_dir", info=info),
    ):
        say = log if info.is_main else (lambda message: None)
        out_dir = Path(cfg.output_dir)
        batch, accum, eff = dense_batch(
            recipe.total_batch_size, cfg.batch_size, cfg.accum_iter, info.world_size
        )
        data = build_segment_data(cfg, recipe, batch, info, device)
        num_classes = len(data.class_names)
        sha256 = file_sha256(cfg.checkpoint)
        torch.manual_seed(cfg.seed)  # the new head: the same on every rank

        def make_head(width: int, depth: int) -> ConvNeXtHead:
            return ConvNeXtHead(
                width, num_classes, cfg.head_dim, cfg.head_preds_per_patch, cfg.head_depth
            )

        model, encoder = load_dense_model(cfg, make_head, recipe, sha256)
        details = _details(cfg, recipe, batch, accum, eff, info.world_size)
        say(
            f"segmentation ({cfg.dataset}, {num_classes} classes) from {encoder.source_format} "
            f"{encoder.model_name or ''} {cfg.checkpoint}: train images {len(data.train)}, val "
            f"{len(data.val)}, input {recipe.input_size}; effective batch {eff} = {batch} x "
            f"{accum} accum x {info.world_size} proc; lr {recipe.lr:.3g}, {recipe.epochs} epochs"
        )
        inference = {
            "inference": recipe.inference,
            "window": recipe.input_size,
            "stride": _stride(cfg, recipe),
        }
        scores_by_epoch: dict[int, dict] = {}

        def evaluate(net) -> dict:
            scores = evaluate_segmentation(
                net, data.val_loader, num_classes, device, cfg.amp, info, **inference
            )
            scores_by_epoch[run.epoch] = scores
            return {key: scores[key] for key in SCALARS}

        args = argparse.Namespace(**{**asdict(cfg), **details})
        args.finetune, args.model, args.nb_classes = cfg.checkpoint, encoder.model_name, num_classes
        fingerprint = config_settings(  # what defines the run, with the engine's schedule
            cfg, checkpoint_sha256=sha256, num_classes=num_classes, **recipe_settings(recipe)
        )
        run = SupervisedRun(
            run_config(cfg, recipe, batch, accum, out_dir),
            model,
            dense_param_groups(model, recipe.weight_decay, recipe.layer_decay),
            data.train_set,
            segmentation_loss,
            evaluate=evaluate,
            args=args,
            fingerprint=fingerprint,
            info=info,
            device=device,
            log=say,
        )
        if info.is_main:  # after the resume's checks: its accepted changes are in the history
            config = {**asdict(cfg), "resolved": details, "history": run.history}
            write_json_atomic(out_dir / "config.json", config)
        fit = run.fit()
        if fit["stopped"]:
            return {"protocol": "segment", "stopped": True, "history": fit["history"]}
        final = scores_by_epoch.get(recipe.epochs - 1)
        if final is None:  # the run had already finished: score its weights again
            final = evaluate_segmentation(
                model, data.val_loader, num_classes, device, cfg.amp, info, **inference
            )
        result = _result(cfg, fit, final, data, encoder, details, sha256)
        result["elapsed_s"] = time.perf_counter() - started
        result["device"] = str(device)
        if info.is_main:
            samples = segmentation_samples(
                model,
                data.val_set,
                spread_indices(len(data.val_set), cfg.num_vis),
                num_classes,
                device,
                cfg.amp,
                **inference,
            )
            _write_outputs(out_dir, result, samples, data.class_names)
            best = result["best"] or {"miou": final["miou"], "epoch": recipe.epochs - 1}
            say(
                f"val mIoU {final['miou']:.2f} (best {best['miou']:.2f} at epoch "
                f"{best['epoch']}), mAcc {final['mean_class_acc']:.2f}, pixel acc "
                f"{final['pixel_acc']:.2f}; results: {out_dir / 'segment.json'}"
            )
        return result


def _result(cfg, fit, final, data: SegmentData, encoder, details, sha256) -> dict:
    history = fit["history"]
    evaluated = [h for h in history if h.get("test_miou") is not None]
    best = max(evaluated, key=lambda h: h["test_miou"], default=None)
    names = data.class_names
    return {
        "protocol": "segment",
        "stopped": False,
        "dataset": cfg.dataset,
        "final": {key: final[key] for key in (*SCALARS, "num_pixels")},
        # MultiMAE prints the best validation mIoU of the run ("Max mIoU")
        "best": {"miou": best["test_miou"], "epoch": best["epoch"]} if best else None,
        "class_iou": _named(final["class_iou"], names),
        "class_acc": _named(final["class_acc"], names),
        "class_names": list(names),
        "num_classes": len(names),
        "num_train": len(data.train),
        "num_val": len(data.val),
        "protocol_details": details,
        **run_record(cfg, fit, sha256, encoder),
    }


def _write_outputs(out_dir: Path, result: dict, samples: list, class_names) -> None:
    write_json_atomic(out_dir / "segment.json", result)
    title = f"segmentation: {out_dir.name}"
    plot_segmentation_history(result["history"], out_dir / "segment.png", title)
    if samples:
        segmentation_grid(samples, out_dir / "segment_samples.png", class_names)
