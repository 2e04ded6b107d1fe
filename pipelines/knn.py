"""k-NN evaluation of frozen encoders: checkpoint -> features (cached) -> k-NN -> JSON / PNG.

Writes to ``output_dir``: ``knn_<label>.json`` (checkpoint sha256, protocol, every number) and
``knn_<label>.png`` (top-1 / top-5 against k); with several checkpoints also
``knn_compare.json`` and ``knn_compare.png``.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from attgmae.core.device import resolve_device, use_device
from attgmae.core.errors import InputError
from attgmae.core.files import file_sha256, write_json_atomic
from attgmae.core.outputs import claim_output
from attgmae.core.provenance import software_versions
from attgmae.eval.features import (
    check_data_root,
    extraction_options,
    image_split,
    l2_normalize,
    split_features,
)
from attgmae.eval.knn import DEFAULT_CHUNK_BYTES, knn_classify_multi, vote_columns
from attgmae.eval.report import plot_knn
from attgmae.models.encoder import load_encoder_as_configured

DEFAULT_NB_KNN = (5, 10, 20, 100, 200)


@dataclass
class KnnConfig:
    checkpoint: str
    data_path: str
    output_dir: str = "output_eval"
    label: str | None = None  # name in the outputs; default: the checkpoint's file stem
    model: str | None = None  # architecture name when the checkpoint does not say
    num_heads: int | None = None
    force_model: bool = False  # take the heads from --model even if it contradicts
    checkpoint_key: str | None = None  # DINO/iBOT training checkpoints: teacher (default)
    nb_knn: list[int] = field(default_factory=lambda: list(DEFAULT_NB_KNN))
    temperature: float = 0.07
    pool: str = "cls"
    device: str = "auto"
    batch_size: int = 128
    num_workers: int = 4
    features_dir: str | None = None  # default: <output_dir>/features
    precision: str = "fp32"  # as DINO extracts features; bf16 (or auto) is faster
    input_size: int = 224
    chunk_bytes: int = DEFAULT_CHUNK_BYTES
    trust_checkpoint: bool = False  # the checkpoint may be unpickled in full


def run_knn(cfg: KnnConfig, log=print) -> dict:
    """One checkpoint's k-NN result (its JSON and PNG in ``output_dir``, which the caller has
    claimed: ``run_knn_compare`` does)."""
    device = use_device(resolve_device(cfg.device))
    check_data_root(cfg.data_path, cfg.checkpoint)
    out_dir = Path(cfg.output_dir)
    features_dir = Path(cfg.features_dir) if cfg.features_dir else out_dir / "features"
    label = cfg.label or Path(cfg.checkpoint).stem
    started = time.perf_counter()

    sha256 = file_sha256(cfg.checkpoint)
    model, info = load_encoder_as_configured(cfg, sha256)
    model.to(device)
    log(f"encoder: {info.source_format} {info.spec} from {cfg.checkpoint} (sha256 {sha256[:12]})")

    train = image_split(cfg.data_path, "train")
    val = image_split(cfg.data_path, "val", train.class_names)
    common = extraction_options(cfg, sha256, device, features_dir, log)
    t0 = time.perf_counter()
    train_feats, train_labels = split_features(model, train, "train", **common)
    val_feats, val_labels = split_features(model, val, "val", **common)
    features_s = time.perf_counter() - t0
    del model

    ks = sorted({int(k) for k in cfg.nb_knn})
    usable = [k for k in ks if k <= len(train.keys)]
    skipped = [k for k in ks if k > len(train.keys)]
    if skipped:
        log(f"skipping k={skipped}: more than the {len(train.keys)} training images")
    if not usable:
        raise InputError(f"every k in --nb_knn {ks} exceeds the {len(train.keys)} training images")

    t0 = time.perf_counter()
    by_k = knn_classify_multi(
        l2_normalize(train_feats).to(device),
        train_labels.to(device),
        l2_normalize(val_feats).to(device),
        val_labels.to(device),
        usable,
        cfg.temperature,
        num_classes=vote_columns(len(train.class_names)),  # 1000 columns, as DINO's script
        max_chunk_bytes=cfg.chunk_bytes,
    )
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    knn_s = time.perf_counter() - t0
    for k in usable:
        log(f"{label}: {k}-NN top-1 {by_k[k][0]:.2f}  top-5 {by_k[k][1]:.2f}")

    result = {
        "protocol": "knn",
        "label": label,
        "checkpoint": str(Path(cfg.checkpoint).resolve()),
        "checkpoint_sha256": sha256,
        "encoder": info.to_dict(),
        "data_path": str(Path(cfg.data_path).resolve()),
        "num_train": len(train.keys),
        "num_val": len(val.keys),
        "num_classes": len(train.class_names),
        "class_names": train.class_names,
        "protocol_details": {
            "features": f"{cfg.pool} token after the final norm, L2-normalized",
            "transform": f"Resize({round(cfg.input_size * 256 / 224)}, bicubic) + "
            f"CenterCrop({cfg.input_size}), ImageNet mean/std",
            "vote": "sum over the k most cosine-similar training images of exp(sim / T)",
            "temperature": cfg.temperature,
            "ties": "as DINO: neighbours by torch.topk per k, classes by torch.sort "
            "(descending) of the float32 vote totals",
            "top5": "target among the first min(5, k) ranked classes (as DINO)",
            "vote_columns": vote_columns(len(train.class_names)),
            "precision": cfg.precision,
        },
        "results": [{"k": k, "top1": by_k[k][0], "top5": by_k[k][1]} for k in usable],
        "skipped_k": skipped,
        "timing_s": {"features": features_s, "knn": knn_s, "total": time.perf_counter() - started},
        "device": str(device),
        "config": asdict(cfg),
        "software": software_versions(python=True),
    }
    json_path = write_json_atomic(out_dir / f"knn_{label}.json", result)
    png_path = plot_knn({label: by_k}, out_dir / f"knn_{label}.png", temperature=cfg.temperature)
    log(f"results: {json_path}  plot: {png_path}")
    return result


def run_knn_compare(cfg: KnnConfig, checkpoints, labels=None, log=print) -> list[dict]:
    """``run_knn`` for each checkpoint (``labels``: a name each, default the file stems), then
    ``knn_compare.json`` / ``.png`` with all of them when there are several."""
    labels = list(labels) if labels else [Path(c).stem for c in checkpoints]
    if len(labels) != len(checkpoints):
        raise InputError(f"--labels gives {len(labels)} names for {len(checkpoints)} checkpoints")
    if len(set(labels)) != len(labels):
        raise InputError(f"labels must differ, got {labels}; pass --labels")
    for checkpoint in checkpoints:
        check_data_root(cfg.data_path, checkpoint)
    with claim_output(cfg.output_dir, "--output_dir"):
        return _compare(cfg, checkpoints, labels, log)


def _compare(cfg: KnnConfig, checkpoints, labels, log) -> list[dict]:
    results = [
        run_knn(dataclasses.replace(cfg, checkpoint=str(ckpt), label=label), log)
        for ckpt, label in zip(checkpoints, labels)
    ]
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
        plot_knn(by_label, out / "knn_compare.png", temperature=cfg.temperature)
        log(f"comparison: {out / 'knn_compare.json'}  {out / 'knn_compare.png'}")
    return results
