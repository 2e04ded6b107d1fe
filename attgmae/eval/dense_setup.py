"""What the dense fine-tuning runs (``attg-eval segment``, ``attg-eval taskonomy``) share: the
recipe with the user's flags over it, the batch arithmetic, the encoder + head from any accepted
checkpoint, MultiMAE's optimizer groups, the engine's settings, the names of several checkpoints,
and the best weights kept by a validation score (MultiMAE tests its best checkpoint).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path

from torch import nn

from attgmae.checkpoint import load_checkpoint, save_atomic
from attgmae.core.errors import InputError
from attgmae.core.provenance import software_versions
from attgmae.data.dense_recipes import DenseRecipe, recipe_for
from attgmae.engine import RunConfig, run_config_from
from attgmae.eval.lr_decay import param_groups_lrd
from attgmae.models.dense_model import DenseModel
from attgmae.models.encoder import EncoderInfo, load_vit

BEST_NAME = "checkpoint-best.pth"
# Config field -> recipe field, where the names differ.
_RECIPE_FIELD = {"eff_batch_size": "total_batch_size"}


def resolve_recipe(dataset: str, cfg) -> DenseRecipe:
    """``dataset``'s recipe with every field the config sets (not None) put over it."""
    names = {f.name for f in dataclasses.fields(DenseRecipe)}
    overrides = {}
    for field in dataclasses.fields(cfg):
        target = _RECIPE_FIELD.get(field.name, field.name)
        if target in names and target != "head":
            overrides[target] = getattr(cfg, field.name)
    return recipe_for(dataset, **overrides)


def check_recipe(recipe: DenseRecipe) -> None:
    """The resolved settings' inconsistencies (a flag against the recipe's other values) at
    once, as one InputError naming the flags, before any data is read."""
    problems = []
    if not 0 <= recipe.warmup_epochs <= recipe.epochs:
        problems.append(
            f"--warmup_epochs {recipe.warmup_epochs} must lie in [0, --epochs {recipe.epochs}]"
        )
    if recipe.lr <= 0 or recipe.warmup_lr < 0 or recipe.min_lr < 0:
        problems.append("--lr must be > 0, --warmup_lr and --min_lr >= 0")
    if recipe.drop_path < 0 or recipe.weight_decay < 0:
        problems.append("--drop_path and --weight_decay must be >= 0")
    if problems:
        raise InputError("; ".join(problems))


def dense_batch(
    total: int, batch_size: int | None, accum_iter: int | None, world_size: int
) -> tuple[int, int, int]:
    """(batch per process, accumulation steps, effective batch) for ``world_size`` processes.

    ``total`` is the effective batch the recipe (or ``--eff_batch_size``) asks for. An explicit
    ``accum_iter`` wins over it: effective = batch x accum x processes. Otherwise the batch per
    process defaults to total / processes and the accumulation makes up the rest; it must come
    out whole."""
    if accum_iter is not None:
        batch = batch_size or max(total // (world_size * accum_iter), 1)
        return batch, accum_iter, batch * accum_iter * world_size
    batch = batch_size or total // world_size
    per_step = batch * world_size
    if batch < 1 or total % per_step:
        raise InputError(
            f"an effective batch of {total} is not --batch_size {batch_size or batch} x "
            f"{world_size} process(es) x a whole number of accumulation steps: change "
            f"--batch_size, or give --accum_iter (or --eff_batch_size)"
        )
    return batch, total // per_step, total


def load_dense_model(
    cfg, make_head: Callable[[int, int], nn.Module], recipe: DenseRecipe, sha256=None
) -> tuple[DenseModel, EncoderInfo]:
    """The pretrained encoder of ``cfg.checkpoint`` (any format ``load_vit`` reads, with the
    config's ``model``, ``num_heads``, ``checkpoint_key``, ``force_model``,
    ``trust_checkpoint``; the position embedding resampled to the recipe's input size; its drop
    path) under ``make_head(width, depth)``."""
    encoder, info = load_vit(
        cfg.checkpoint,
        cfg.model,
        cfg.num_heads,
        recipe.input_size,
        sha256,
        cfg.trust_checkpoint,
        cfg.checkpoint_key,
        cfg.force_model,
        num_classes=0,
        drop_path_rate=recipe.drop_path,
    )
    head = make_head(encoder.embed_dim, len(encoder.blocks))
    return DenseModel(encoder, head), info


def dense_param_groups(model: DenseModel, weight_decay: float, layer_decay: float) -> list[dict]:
    """MultiMAE's AdamW groups (``utils/optim_factory.py``): layer decay by
    ``DenseModel.layer_id``; no weight decay on 1-D parameters (biases, norms) and on the
    encoder's CLS token and position embedding (timm's ``no_weight_decay``; MultiMAE's
    ``global_tokens`` and ``pos_emb``)."""
    no_decay = {f"encoder.{name}" for name in model.encoder.no_weight_decay()}
    return param_groups_lrd(model, weight_decay, no_decay, layer_decay)


def run_config(cfg, recipe: DenseRecipe, batch_size: int, accum_iter: int, output_dir) -> RunConfig:
    """The engine's settings: the schedule from the resolved recipe, the rest from ``cfg``."""
    return run_config_from(
        cfg,
        epochs=recipe.epochs,
        lr=recipe.lr,
        output_dir=str(output_dir),
        warmup_epochs=recipe.warmup_epochs,
        min_lr=recipe.min_lr,
        warmup_lr=recipe.warmup_lr,
        batch_size=batch_size,
        accum_iter=accum_iter,
        betas=recipe.betas,
        eval_every=recipe.eval_every,
    )


def recipe_settings(recipe: DenseRecipe) -> dict:
    """The resolved recipe's values that define a run and are not the engine's schedule (epochs,
    lr, batch: ``attgmae.engine.config.engine_settings``) nor only its evaluation."""
    names = ("input_size", "head", "weight_decay", "layer_decay", "drop_path",
             "max_train_images", "max_val_images")  # fmt: skip
    return {name: getattr(recipe, name) for name in names}


def checkpoint_labels(checkpoints, labels=None) -> list[str]:
    """A distinct name per checkpoint: ``labels`` when given, else the file stems, else (when
    stems repeat, as ``runs/mae/checkpoint-last.pth`` and ``runs/attg/checkpoint-last.pth``
    do) the folder names."""
    checkpoints = [Path(c) for c in checkpoints]
    if labels:
        if len(labels) != len(checkpoints):
            raise InputError(
                f"--labels gives {len(labels)} names for {len(checkpoints)} checkpoints"
            )
        names = list(labels)
    else:
        names = [c.stem for c in checkpoints]
        if len(set(names)) != len(names):
            names = [c.resolve().parent.name for c in checkpoints]
    if len(set(names)) != len(names) or any(not n or "/" in n for n in names):
        raise InputError(
            f"checkpoint labels must be distinct folder names, got {names}: pass --labels"
        )
    return names


class BestWeights:
    """The weights with the best validation score so far, in ``output_dir/checkpoint-best.pth``
    (``{"model", "epoch", "metric", "value"}``, rank 0 writes). ``lower_is_better`` for losses.
    Resumed runs first read the scores of the epochs already done from ``log.txt``."""

    def __init__(self, output_dir, metric: str, lower_is_better: bool, is_main: bool = True):
        self.path = Path(output_dir) / BEST_NAME
        self.metric, self.lower, self.is_main = metric, lower_is_better, is_main
        self.value: float | None = None
        self.epoch: int | None = None

    def _better(self, value: float) -> bool:
        if self.value is None:
            return True
        return value < self.value if self.lower else value > self.value

    def read_log(self, log_path, before_epoch: int) -> None:
        """Take the best ``test_<metric>`` of ``log_path``'s epochs before ``before_epoch``."""
        log_path = Path(log_path)
        if not log_path.is_file():
            return
        for line in log_path.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            value = record.get(f"test_{self.metric}") if isinstance(record, dict) else None
            epoch = record.get("epoch") if isinstance(record, dict) else None
            if value is not None and isinstance(epoch, int) and epoch < before_epoch:
                if self._better(value):
                    self.value, self.epoch = value, epoch

    def update(self, model: nn.Module, value: float, epoch: int) -> bool:
        """Keep ``model``'s weights when ``value`` beats the best so far (strictly, as
        MultiMAE); True when it did."""
        if not self._better(value):
            return False
        self.value, self.epoch = value, epoch
        if self.is_main:
            state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
            save_atomic(
                {"model": state, "epoch": epoch, "metric": self.metric, "value": value}, self.path
            )
        return True

    def load_into(self, model: nn.Module) -> bool:
        """Put the kept weights into ``model``; False (model unchanged) when there are none."""
        if self.epoch is None or not self.path.is_file():
            return False
        model.load_state_dict(load_checkpoint(self.path)["model"])  # copied to its devices
        return True


def run_record(cfg, fit: dict, sha256: str, encoder: EncoderInfo) -> dict:
    """The part of a dense result every run has: its timings and last checkpoint, the encoder
    and where it came from, the data, the whole config and the software versions."""
    return {
        "history": fit["history"],
        "epoch_seconds": fit["epoch_seconds"],
        "train_img_per_s": fit["img_per_s"],
        "last_checkpoint": fit["last_checkpoint"],
        "checkpoint": str(Path(cfg.checkpoint).resolve()),
        "checkpoint_sha256": sha256,
        "encoder": encoder.to_dict(),
        "data_path": str(Path(cfg.data_path).resolve()),
        "config": dataclasses.asdict(cfg),
        "software": software_versions(python=True),
    }
