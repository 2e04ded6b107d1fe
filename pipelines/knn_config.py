"""``attg-eval knn``'s configuration: every flag as a field with its default (the protocol's as
DINO's ``eval_knn.py`` and the paper's A.7 set them). Light: the parser reads it without
importing torch."""

from __future__ import annotations

from dataclasses import dataclass, field

DEFAULT_NB_KNN = (5, 10, 20, 100, 200)  # the paper's A.7 (DINO's script: 10 20 100 200)


@dataclass
class KnnConfig:
    checkpoint: str | None = None  # None with load_features
    data_path: str | None = None  # holds train/ and val/ (not needed with load_features)
    output_dir: str = "output_eval"
    label: str | None = None  # name in the outputs; default: the checkpoint's file stem
    model: str | None = None  # architecture name when the checkpoint does not say
    num_heads: int | None = None
    force_model: bool = False  # take the heads from --model even if it contradicts
    checkpoint_key: str | None = None  # the entry of a training checkpoint; None: the teacher...
    nb_classes: int | None = None  # MAE's; checked against the class folders of train/
    nb_knn: list[int] = field(default_factory=lambda: list(DEFAULT_NB_KNN))
    temperature: float = 0.07
    pool: str = "cls"
    device: str = "auto"
    batch_size: int = 128
    num_workers: int = 8
    features_dir: str | None = None  # default: <output_dir>/features
    precision: str = "fp32"  # as DINO extracts features; bf16 (or auto) is faster
    input_size: int = 224
    chunk_bytes: int | None = None  # similarity chunk budget; None: attgmae.eval.knn's (4 GiB)
    trust_checkpoint: bool = False  # the checkpoint may be unpickled in full
    dump_features: str | None = None  # also write DINO's trainfeat.pth ... files here
    load_features: str | None = None  # k-NN on such files instead of a checkpoint's features
