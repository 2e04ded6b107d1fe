"""What ``attg-eval finetune`` trains and validates on: the ImageFolder splits, the training
subset (all, an ImageNet 1% / 10% list, or seeded per-class sampling), MAE's transforms, and
this rank's share of the validation images."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from torch.utils.data import DataLoader

from attgmae.core.distributed import DistInfo
from attgmae.eval.features import (
    ImageSplit,
    LabelledImages,
    check_class_count,
    image_split,
    make_loader,
)
from attgmae.eval.fewshot import configured_subset, subset_sha256
from attgmae.eval.transforms import finetune_eval_transform, finetune_train_transform
from attgmae.pipelines.finetune_config import FinetuneConfig


@dataclass
class FinetuneData:
    train: ImageSplit
    val: ImageSplit
    subset: np.ndarray  # int64 [N_used]: the training images used (rows of ``train``)
    train_set: LabelledImages  # (augmented image [3, S, S], label, row) of the subset
    val_loader: DataLoader  # this rank's share of the validation images, center crops

    @property
    def num_classes(self) -> int:
        return len(self.train.class_names)

    @property
    def subset_sha256(self) -> str:
        return subset_sha256(self.subset)


def build_finetune_data(cfg: FinetuneConfig, info: DistInfo, device) -> FinetuneData:
    train = image_split(cfg.data_path, "train")
    check_class_count(train, cfg.nb_classes)
    val = image_split(cfg.data_path, "val", train.class_names)
    subset = configured_subset(cfg, train)
    augment = finetune_train_transform(
        cfg.input_size,
        auto_augment=None if cfg.aa in (None, "", "none") else cfg.aa,
        color_jitter=cfg.color_jitter,
        re_prob=cfg.reprob,
        re_mode=cfg.remode,
        re_count=cfg.recount,
    )
    own_val = np.arange(len(val.keys))[info.rank :: info.world_size]
    val_set = LabelledImages(val, finetune_eval_transform(cfg.input_size), own_val)
    val_loader = make_loader(val_set, cfg.batch_size, cfg.num_workers, device)
    return FinetuneData(train, val, subset, LabelledImages(train, augment, subset), val_loader)
