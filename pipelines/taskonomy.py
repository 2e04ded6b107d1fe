"""Taskonomy transfer (the paper's Tables 3 and 7): each checkpoint fine-tuned on each task, the
test L1 per task, its average, and, for several checkpoints together, the average rank.

Runs go one after the other (``pipelines.taskonomy_task.run_task``), in one process group:
``OUTPUT_DIR/<task>/`` for one checkpoint, ``OUTPUT_DIR/<label>/<task>/`` for several. Each
checkpoint's summary is ``taskonomy.json`` beside its task folders ({task: test L1}, average);
with several, ``OUTPUT_DIR/taskonomy_compare.json`` and ``taskonomy_compare.md`` hold Table 3:
the L1 per task and checkpoint, the average, and the average rank (1 = lowest L1 of a task,
ties share their places). Interrupted, the same command continues: finished runs are read back,
the interrupted one resumes from its last checkpoint.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from attgmae.core.errors import InputError
from attgmae.core.files import file_sha256, write_json_atomic, write_text_atomic
from attgmae.core.outputs import claim_output
from attgmae.data.dense_taskonomy import resolve_tasks
from attgmae.engine import distributed_session
from attgmae.eval.dense_report import comparison_table
from attgmae.eval.dense_setup import (
    check_recipe,
    checkpoint_labels,
    dense_batch,
    resolve_recipe,
)
from attgmae.models.dense_losses import average_rank
from attgmae.pipelines.taskonomy_config import TaskonomyConfig, validate
from attgmae.pipelines.taskonomy_task import run_task

SUMMARY_NAME = "taskonomy.json"


def _summary(label: str, checkpoint: str, results: dict) -> dict:
    losses = {task: result["test_l1"] for task, result in results.items()}
    return {
        "label": label,
        "checkpoint": str(Path(checkpoint).resolve()),
        "test_l1": losses,
        "average": sum(losses.values()) / len(losses),
        "units": "mean |prediction - target| over valid test pixels, normalized targets "
        "(docs/dense.md, 'Taskonomy targets')",
        "runs": {task: result.get("last_checkpoint") for task, result in results.items()},
    }


def run_taskonomy_compare(cfg: TaskonomyConfig, checkpoints=None, labels=None, log=print) -> dict:
    """Every checkpoint (default: ``cfg.checkpoint``) on every task of ``cfg.tasks`` -> {label:
    summary}, plus the comparison under "compare" when there are several.

    Raises InputError for anything the user must fix (before any training: every checkpoint
    is checked first), RunFailed when a run diverges.
    """
    validate(cfg)
    checkpoints = list(checkpoints or [cfg.checkpoint])
    missing = [c for c in checkpoints if not Path(c).is_file()]
    if missing:
        raise InputError(f"--checkpoint: no such file: {', '.join(missing)}")
    names = checkpoint_labels(checkpoints, labels)
    runs = len(checkpoints) * len(cfg.tasks)
    if cfg.resume and runs > 1:
        raise InputError(
            f"--resume names one run; these are {runs} (each resumes from its own "
            f"OUTPUT_DIR/.../<task>/checkpoint-last.pth)"
        )
    folders = resolve_tasks(cfg.tasks)
    recipe = resolve_recipe("taskonomy", cfg)
    check_recipe(recipe)
    root = Path(cfg.output_dir)
    summaries = {}
    with (
        distributed_session(cfg.device) as (info, device),
        claim_output(root, "--output_dir", info=info),
    ):
        say = log if info.is_main else (lambda message: None)
        batching = dense_batch(
            recipe.total_batch_size, cfg.batch_size, cfg.accum_iter, info.world_size
        )
        for checkpoint, label in zip(checkpoints, names):
            base = root / label if len(checkpoints) > 1 else root
            one = replace(cfg, checkpoint=str(checkpoint))
            sha256 = file_sha256(checkpoint)
            batch, accum, eff = batching
            say(
                f"== {label}: {checkpoint} on {', '.join(cfg.tasks)}; effective batch {eff} = "
                f"{batch} x {accum} accum x {info.world_size} proc"
            )
            results = {}
            for task, folder in zip(cfg.tasks, folders):
                result = run_task(
                    one, task, folder, base / task, recipe, batching, sha256, info, device, say
                )
                if result["stopped"]:
                    return {"stopped": True}
                results[task] = result
            summaries[label] = _summary(label, checkpoint, results)
            if info.is_main:
                write_json_atomic(base / SUMMARY_NAME, summaries[label])
            say(f"{label}: average test L1 {summaries[label]['average']:.4f}")
    if len(checkpoints) > 1:
        summaries["compare"] = _compare(root, summaries, list(cfg.tasks), info.is_main, say)
    return summaries


def _compare(root: Path, summaries: dict, tasks: list[str], is_main: bool, say) -> dict:
    losses = {label: s["test_l1"] for label, s in summaries.items()}
    averages = {label: s["average"] for label, s in summaries.items()}
    ranks = average_rank(losses)
    table = comparison_table(losses, averages, ranks, tasks)
    compare = {
        "tasks": tasks,
        "test_l1": losses,
        "average": averages,
        "average_rank": ranks,
        "table": table,
    }
    if is_main:
        write_json_atomic(root / "taskonomy_compare.json", compare)
        write_text_atomic(root / "taskonomy_compare.md", table)
    say(table)
    return compare


def run_taskonomy(cfg: TaskonomyConfig, log=print) -> dict:
    """``cfg.checkpoint`` on every task -> its summary."""
    return run_taskonomy_compare(cfg, log=log)
