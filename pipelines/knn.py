"""k-NN evaluation of frozen encoders: checkpoint -> features (cached) -> k-NN -> JSON / PNG.

Writes to ``output_dir``: ``knn_<label>.json`` (checkpoint sha256, protocol, every number) and
``knn_<label>.png`` (top-1 / top-5 against k); with several checkpoints also
``knn_compare.json`` and ``knn_compare.png``. ``dump_features`` also writes DINO's four feature
files; ``load_features`` runs the k-NN on such files, without a checkpoint. Under torchrun the
ranks share the feature extraction (DINO's eval_knn) and rank 0 alone searches and writes.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import asdict
from pathlib import Path

import torch

from attgmae.core.errors import InputError
from attgmae.core.files import file_sha256, write_json_atomic
from attgmae.core.outputs import claim_output
from attgmae.core.progress import Progress
from attgmae.core.provenance import software_versions
from attgmae.engine.launch import distributed_session
from attgmae.eval.feature_dump import DUMP_FILES, read_feature_dump, write_feature_dump
from attgmae.eval.features import (
    check_class_count,
    check_data_root,
    extraction_options,
    image_split,
    l2_normalize,
    split_features,
)
from attgmae.eval.knn import DEFAULT_CHUNK_BYTES, knn_classify_multi, vote_columns
from attgmae.eval.report import plot_knn
from attgmae.models.encoder import load_encoder_as_configured
from attgmae.pipelines.knn_config import KnnConfig


def _quiet(message: str) -> None:
    pass


def _check_sources(cfg: KnnConfig) -> None:
    """Features come from a checkpoint on --data_path or from --load_features, not both."""
    if cfg.load_features:
        if cfg.checkpoint or cfg.dump_features:
            raise InputError(
                "--load_features runs the k-NN on features already dumped: drop --checkpoint "
                "and --dump_features, or drop --load_features"
            )
        return
    if not cfg.checkpoint or not cfg.data_path:
        raise InputError("give --checkpoint and --data_path, or --load_features DIR")
    check_data_root(cfg.data_path, cfg.checkpoint)


def _extracted(cfg: KnnConfig, info, device, log):
    """(train feats, train labels, val feats, val labels, what the result records): the
    checkpoint's encoder on --data_path, features L2-normalized (None on ranks other than 0)."""
    features_dir = Path(cfg.features_dir) if cfg.features_dir else Path(cfg.output_dir) / "features"
    sha256 = file_sha256(cfg.checkpoint)
    model, encoder = load_encoder_as_configured(cfg, sha256)
    model.to(device)
    log(f"encoder: {encoder.source_format} {encoder.spec} from {cfg.checkpoint} "
        f"(sha256 {sha256[:12]})")  # fmt: skip
    train = image_split(cfg.data_path, "train")
    check_class_count(train, cfg.nb_classes)
    val = image_split(cfg.data_path, "val", train.class_names)
    common = extraction_options(cfg, encoder, device, features_dir, log, dist=info)
    train_feats, train_labels = split_features(model, train, "train", **common)
    val_feats, val_labels = split_features(model, val, "val", **common)
    del model
    record = {
        "checkpoint": str(Path(cfg.checkpoint).resolve()),
        "checkpoint_sha256": sha256,
        "encoder": encoder.to_dict(),
        "data_path": str(Path(cfg.data_path).resolve()),
        "class_names": train.class_names,
    }
    if not info.is_main:
        return None, train_labels, None, val_labels, record
    train_feats, val_feats = l2_normalize(train_feats), l2_normalize(val_feats)
    if cfg.dump_features:
        folder = write_feature_dump(
            cfg.dump_features, train_feats, train_labels, val_feats, val_labels
        )
        log(f"features dumped in {folder} (DINO's {', '.join(DUMP_FILES)})")
    return train_feats, train_labels, val_feats, val_labels, record


def _loaded(cfg: KnnConfig, log):
    """The same from DINO-layout files in --load_features (ours or DINO's)."""
    folder = Path(cfg.load_features)
    train_feats, train_labels, val_feats, val_labels = read_feature_dump(folder)
    log(f"features: {train_feats.shape[0]} train and {val_feats.shape[0]} val rows of "
        f"{train_feats.shape[1]} from {folder}")  # fmt: skip
    record = {
        "features_from": str(folder.resolve()),
        "features_sha256": {name: file_sha256(folder / name) for name in DUMP_FILES},
        "checkpoint": None,
        "checkpoint_sha256": None,
        "class_names": None,
    }
    return train_feats, train_labels, val_feats, val_labels, record


def run_knn(cfg: KnnConfig, log=print) -> dict | None:
    """k-NN of one checkpoint (or of --load_features), JSON and PNG in ``output_dir``; under
    torchrun every rank extracts its share of the features, rank 0 alone searches and writes
    (the result on rank 0, None on the others)."""
    _check_sources(cfg)
    with distributed_session(cfg.device) as (info, device):
        return _run_knn(cfg, info, device, log)


def _run_knn(cfg: KnnConfig, info, device, log) -> dict | None:
    say = log if info.is_main else _quiet
    out_dir = Path(cfg.output_dir)
    source = cfg.checkpoint or cfg.load_features
    label = cfg.label or Path(source).stem
    started = time.perf_counter()

    t0 = time.perf_counter()
    if cfg.load_features:
        if not info.is_main:  # nothing to share out: rank 0 reads the files
            return None
        train_feats, train_labels, val_feats, val_labels, record = _loaded(cfg, say)
    else:
        train_feats, train_labels, val_feats, val_labels, record = _extracted(
            cfg, info, device, say
        )
    features_s = time.perf_counter() - t0
    num_train, num_val = len(train_labels), len(val_labels)
    ks = sorted({int(k) for k in cfg.nb_knn})
    usable = [k for k in ks if k <= num_train]
    skipped = [k for k in ks if k > num_train]
    if not usable:  # (on every rank: each knows the labels)
        raise InputError(f"every k in --nb_knn {ks} exceeds the {num_train} training images")
    if not info.is_main:  # the others wait (at the session's barrier) while rank 0 searches
        return None
    if skipped:
        say(f"skipping k={skipped}: more than the {num_train} training images")
    num_classes = (
        len(record["class_names"])
        if record["class_names"] is not None
        else int(max(train_labels.max(), val_labels.max())) + 1
    )

    t0 = time.perf_counter()
    with Progress(num_val, f"{label}: k-NN", enabled=info.is_main) as bar:
        by_k = knn_classify_multi(
            train_feats.to(device),
            train_labels.to(device),
            val_feats.to(device),
            val_labels.to(device),
            usable,
            cfg.temperature,
            num_classes=vote_columns(num_classes),  # 1000 columns, as DINO's script
            max_chunk_bytes=cfg.chunk_bytes or DEFAULT_CHUNK_BYTES,
            progress=bar.moved_to,
        )
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    knn_s = time.perf_counter() - t0
    for k in usable:
        say(f"{label}: {k}-NN top-1 {by_k[k][0]:.2f}  top-5 {by_k[k][1]:.2f}")

    result = {
        "protocol": "knn",
        "label": label,
        **record,
        "num_train": num_train,
        "num_val": num_val,
        "num_classes": num_classes,
        "protocol_details": {
            "features": f"{cfg.pool} token after the final norm, L2-normalized"
            if not cfg.load_features
            else f"read from {cfg.load_features} (rows of length 1 used as they are)",
            "transform": f"Resize({round(cfg.input_size * 256 / 224)}, bicubic) + "
            f"CenterCrop({cfg.input_size}), ImageNet mean/std",
            "vote": "sum over the k most cosine-similar training images of exp(sim / T)",
            "temperature": cfg.temperature,
            "ties": "as DINO: neighbours by torch.topk per k, classes by torch.sort "
            "(descending) of the float32 vote totals",
            "top5": "target among the first min(5, k) ranked classes (as DINO)",
            "vote_columns": vote_columns(num_classes),
            "precision": cfg.precision,
            "world_size": info.world_size,
        },
        "results": [{"k": k, "top1": by_k[k][0], "top5": by_k[k][1]} for k in usable],
        "skipped_k": skipped,
        "timing_s": {"features": features_s, "knn": knn_s, "total": time.perf_counter() - started},
        "device": str(device),
        "config": asdict(cfg),
        "software": software_versions(python=True),
    }
    json_path = write_json_atomic(out_dir / f"knn_{label}.json", result)
    png_path = plot_knn({label: by_k}, out_dir / f"knn_{label}.png", temperature=cfg.temperature,
                        chance=100.0 / num_classes)  # fmt: skip
    say(f"results: {json_path}  plot: {png_path}")
    return result


def run_knn_compare(cfg: KnnConfig, checkpoints, labels=None, log=print) -> list[dict]:
    """``run_knn`` for each checkpoint (``labels``: a name each, default the file stems), then
    ``knn_compare.json`` / ``.png`` with all of them when there are several. With several,
    ``dump_features`` gets one sub-folder per label. No checkpoints: ``cfg.load_features``.
    Under torchrun the results are rank 0's (an empty list on the others)."""
    checkpoints = list(checkpoints or [])
    if not checkpoints:
        if labels:  # one name for the dumped features' outputs
            if len(labels) != 1:
                raise InputError(f"--labels gives {len(labels)} names for one --load_features")
            cfg = dataclasses.replace(cfg, label=labels[0])
        _check_sources(cfg)
        with distributed_session(cfg.device) as (info, device):
            with claim_output(cfg.output_dir, "--output_dir", info=info):
                result = _run_knn(cfg, info, device, log)
        return [result] if result is not None else []
    labels = list(labels) if labels else [Path(c).stem for c in checkpoints]
    if len(labels) != len(checkpoints):
        raise InputError(f"--labels gives {len(labels)} names for {len(checkpoints)} checkpoints")
    if len(set(labels)) != len(labels):
        raise InputError(f"labels must differ, got {labels}; pass --labels")
    runs = []
    for checkpoint, label in zip(checkpoints, labels):
        dump = cfg.dump_features
        if dump and len(checkpoints) > 1:
            dump = str(Path(dump) / label)
        runs.append(
            dataclasses.replace(cfg, checkpoint=str(checkpoint), label=label, dump_features=dump)
        )
    for run in runs:
        _check_sources(run)
    with distributed_session(cfg.device) as (info, device):
        with claim_output(cfg.output_dir, "--output_dir", info=info):
            results = [_run_knn(run, info, device, log) for run in runs]
            if info.is_main:
                _report(cfg, results, log)
    return results if info.is_main else []


def _report(cfg: KnnConfig, results: list[dict], log) -> None:
    """The table of every checkpoint's results, and with several knn_compare.json / .png."""
    log(f"\n{'checkpoint':<24}{'k':>5}{'top-1':>9}{'top-5':>9}")
    for res in results:
        for row in res["results"]:
            log(f"{res['label']:<24}{row['k']:>5}{row['top1']:>9.2f}{row['top5']:>9.2f}")
    if len(results) > 1:
        out = Path(cfg.output_dir)
        compare = {
            r["label"]: {"checkpoint_sha256": r["checkpoint_sha256"], "results": r["results"]}
            for r in results
        }
        write_json_atomic(out / "knn_compare.json", {"protocol": "knn", "compare": compare})
        by_label = {
            r["label"]: {row["k"]: (row["top1"], row["top5"]) for row in r["results"]}
            for r in results
        }
        chance = 100.0 / results[0]["num_classes"]
        plot_knn(by_label, out / "knn_compare.png", temperature=cfg.temperature, chance=chance)
        log(f"comparison: {out / 'knn_compare.json'}  {out / 'knn_compare.png'}")
