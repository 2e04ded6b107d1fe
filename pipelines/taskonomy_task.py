"""One Taskonomy fine-tuning run: one pretrained checkpoint, one task (MultiMAE fine-tunes a
model per task: its ``cfgs/finetune/taskonomy/rgb2<task>-1k`` configs).

Data flows: checkpoint -> ViT encoder at the input size -> ``DenseModel`` with a DPT head on four
encoder depths -> AdamW over MultiMAE's layer-decay groups -> ``attgmae.engine.SupervisedRun``
on the training images (at most ``max_train_images``), masked L1 on the task's target -> every
``eval_every`` epochs (and the last) the masked L1 on the validation images; the weights with
the lowest validation L1 are kept (``checkpoint-best.pth``) -> at the end, those weights score
the test split (as MultiMAE: "Testing with best checkpoint").

Writes to its ``out_dir``: ``config.json``, ``log.txt``, checkpoints, ``checkpoint-best.pth``,
``taskonomy.json`` (every number), ``taskonomy.png`` (train loss and validation L1 per epoch)
and ``<task>_samples.png`` (image | prediction | target for ``num_vis`` test images). A run whose
``taskonomy.json`` was written by the same inputs and settings (its ``reuse_key``: the checkpoint
and its entry, the recipe, seed, precision and every file read, by path, size and mtime) is not
run again; one made otherwise is run again, the log naming what differs (and a resume refuses
checkpoints of other inputs, ``defining_inputs``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from dataclasses import asdict
from pathlib import Path

import torch
from torch.utils.data import Subset

from attgmae.core.device import resolve_precision
from attgmae.core.distributed import barrier
from attgmae.core.files import write_json_atomic
from attgmae.core.identity import image_identities
from attgmae.data.dense_recipes import RECIPE_SOURCES, DenseRecipe
from attgmae.data.dense_taskonomy import TASKONOMY_TASKS, TaskonomyDataset
from attgmae.engine import SupervisedRun
from attgmae.engine.resume import config_settings
from attgmae.eval.dense_eval import (
    evaluate_regression,
    regression_loss,
    regression_samples,
    spread_indices,
)
from attgmae.eval.dense_report import plot_regression_history, regression_grid
from attgmae.eval.dense_setup import (
    BestWeights,
    dense_param_groups,
    load_dense_model,
    recipe_settings,
    run_config,
    run_record,
)
from attgmae.eval.features import make_loader
from attgmae.models.dense_heads import DPTHead, dpt_block_indices
from attgmae.pipelines.taskonomy_config import TaskonomyConfig

RESULT_NAME = "taskonomy.json"


def _datasets(cfg: TaskonomyConfig, folder: str, recipe: DenseRecipe) -> dict:
    limits = {
        "train": recipe.max_train_images,
        "val": recipe.max_val_images,
        "test": cfg.max_test_images,
    }
    return {
        split: TaskonomyDataset(cfg.data_path, split, [folder], recipe.input_size, limit, cfg.seed)
        for split, limit in limits.items()
    }


def _own_loader(dataset, batch: int, cfg, info, device):
    own = Subset(dataset, range(info.rank, len(dataset), info.world_size))
    return make_loader(own, batch, cfg.num_workers, device)


def _details(cfg, task: str, folder: str, recipe: DenseRecipe, batching, world: int) -> dict:
    batch, accum, eff = batching
    meta = TASKONOMY_TASKS[folder]
    return {
        "task": task,
        "folder": folder,
        "target": meta.meaning,
        "normalization": {"clamp": meta.clamp, "blur": meta.blur, "scale": "v / 65535"},
        "recipe": asdict(recipe),
        "sources": RECIPE_SOURCES["taskonomy"],
        "world_size": world,
        "batch_size": batch,
        "accum_iter": accum,
        "effective_batch": eff,
        "max_test_images": cfg.max_test_images,
        "optimizer": f"AdamW betas {recipe.betas}, weight decay {recipe.weight_decay} (not on "
        f"1-D parameters, cls_token, pos_embed), layer decay {recipe.layer_decay}",
        "schedule": f"linear warmup {recipe.warmup_lr} -> {recipe.lr} over "
        f"{recipe.warmup_epochs} epochs, half-cycle cosine to {recipe.min_lr}, per iteration",
        "head": f"DPT: blocks {cfg.block_indices or 'ends of each quarter'}, layer dims "
        f"{list(cfg.dpt_layer_dims)}, feature dim {cfg.dpt_feature_dim}, 1 output channel",
        "loss": "masked L1 (valid pixels only), normalized target units",
        "test_weights": "lowest validation L1 (checkpoint-best.pth), as MultiMAE",
    }


def inputs_digest(dataset: TaskonomyDataset) -> str:
    """sha256 of the files a split reads: their paths under the root, sizes and mtimes."""
    root = dataset.layout.root
    names = [str(path.relative_to(root)) for _, _, path in dataset.files()]
    identities = image_identities(root, names)
    return hashlib.sha256("\n".join(names).encode() + identities.tobytes()).hexdigest()


def defining_inputs(cfg: TaskonomyConfig, sets: dict, device) -> dict:
    """What besides the checkpoint file, task, input size and head defines a run: the entry and
    architecture read from the checkpoint, seed and precision, and the files of every split
    (paths, sizes, mtimes). Part of the resume fingerprint and of ``taskonomy.json``'s reuse
    key."""
    return {
        "encoder": {
            k: getattr(cfg, k) for k in ("checkpoint_key", "model", "num_heads", "force_model")
        },
        "run": {
            "seed": cfg.seed,
            "amp": resolve_precision(cfg.amp, device),
            "clip_grad": cfg.clip_grad,
        },
        "data": {
            "root": str(Path(cfg.data_path).resolve()),
            **{split: inputs_digest(dataset) for split, dataset in sets.items()},
        },
    }


def _finished(out_dir: Path, key: dict, say) -> dict | None:
    """The result of a finished run with the same inputs and settings, else None (saying what
    differs from the one found)."""
    path = out_dir / RESULT_NAME
    if not path.is_file():
        return None
    try:
        result = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    key, found = json.loads(json.dumps(key)), result.get("reuse_key") or {}
    if found == key:
        return result
    differ = [name for name in key if found.get(name) != key[name]]
    data = [name for name in key["data"] if found.get("data", {}).get(name) != key["data"][name]]
    say(f"{path}: made with other {', '.join(differ)}"
        + (f" ({', '.join(data)})" if data else "") + ": running again")  # fmt: skip
    return None


def run_task(
    cfg: TaskonomyConfig,
    task: str,
    folder: str,
    out_dir: Path,
    recipe: DenseRecipe,
    batching: tuple[int, int, int],
    sha256: str,
    info,
    device,
    say,
) -> dict:
    """Fine-tune ``cfg.checkpoint`` on ``task`` (its folder ``folder``) into ``out_dir`` and
    score the test split -> the result dict (``taskonomy.json``'s)."""
    started = time.perf_counter()
    details = _details(cfg, task, folder, recipe, batching, info.world_size)
    sets = _datasets(cfg, folder, recipe)
    inputs = {
        "checkpoint_sha256": sha256,
        "task": folder,
        "input_size": recipe.input_size,
        "head": [cfg.dpt_feature_dim, list(cfg.dpt_layer_dims), cfg.block_indices],
        **defining_inputs(cfg, sets, device),
    }
    reuse_key = {**inputs, "recipe": asdict(recipe), "max_test_images": cfg.max_test_images}
    # what defines the run, with the engine's schedule (attgmae.engine.resume)
    fingerprint = config_settings(cfg, **{**inputs, **recipe_settings(recipe)})
    done = _finished(out_dir, reuse_key, say)
    if done is not None:
        say(f"{task}: finished already ({out_dir / RESULT_NAME}), test L1 {done['test_l1']:.4f}")
        return done
    batch = batching[0]
    val_loader = _own_loader(sets["val"], batch, cfg, info, device)
    test_loader = _own_loader(sets["test"], batch, cfg, info, device)

    def make_head(width: int, depth: int) -> DPTHead:
        blocks = cfg.block_indices or dpt_block_indices(depth)
        return DPTHead(width, 1, blocks, cfg.dpt_layer_dims, cfg.dpt_feature_dim)

    torch.manual_seed(cfg.seed)  # the new head: the same on every rank and every task
    model, encoder = load_dense_model(cfg, make_head, recipe, sha256)
    say(
        f"{task}: train images {len(sets['train'])}, val {len(sets['val'])}, test "
        f"{len(sets['test'])}; valid mask from {sets['train'].mask_task or 'nothing (all valid)'}"
    )
    best = BestWeights(out_dir, "l1", lower_is_better=True, is_main=info.is_main)

    def evaluate(net) -> dict:
        metrics = evaluate_regression(net, val_loader, folder, device, cfg.amp, info)
        best.update(net, metrics["l1"], run.epoch)
        return metrics

    args = argparse.Namespace(**{**asdict(cfg), **details})
    args.finetune, args.model = cfg.checkpoint, encoder.model_name
    run = SupervisedRun(
        run_config(cfg, recipe, batching[0], batching[1], out_dir),
        model,
        dense_param_groups(model, recipe.weight_decay, recipe.layer_decay),
        sets["train"],
        regression_loss(folder),
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
    best.read_log(out_dir / "log.txt", run.start_epoch)
    fit = run.fit()
    if fit["stopped"]:
        return {"protocol": "taskonomy", "task": task, "stopped": True}
    barrier(info)  # rank 0 has written checkpoint-best.pth
    used_best = best.load_into(model)
    test = evaluate_regression(model, test_loader, folder, device, cfg.amp, info)
    result = {
        "protocol": "taskonomy",
        "stopped": False,
        "task": task,
        "test_l1": test["l1"],
        "test_weights_epoch": best.epoch if used_best else fit["history"][-1]["epoch"],
        "best_val_l1": best.value,
        "num_train": len(sets["train"]),
        "num_val": len(sets["val"]),
        "num_test": len(sets["test"]),
        "mask_source": sets["train"].mask_task,
        "protocol_details": details,
        **run_record(cfg, fit, sha256, encoder),
        "elapsed_s": time.perf_counter() - started,
        "device": str(device),
        "reuse_key": reuse_key,
    }
    if info.is_main:
        indices = spread_indices(len(sets["test"]), cfg.num_vis)
        samples = regression_samples(model, sets["test"], indices, folder, device, cfg.amp)
        write_json_atomic(out_dir / RESULT_NAME, result)
        plot_regression_history(result["history"], out_dir / "taskonomy.png", f"{task}: {out_dir}")
        if samples:
            regression_grid(samples, out_dir / f"{task}_samples.png", task)
        say(f"{task}: test L1 {test['l1']:.4f} (weights of epoch {result['test_weights_epoch']})")
    return result
