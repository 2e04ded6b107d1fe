"""k-NN top-1 of a model being pretrained: a cheap quality signal for ``attg-train --knn_every``.

Runs the encoder of a MaskedAutoencoderViT (or any timm-named ViT) with nothing masked on
``data_root/train`` and ``data_root/val`` (Resize 256 + CenterCrop 224), CLS token after the
final norm, L2-normalized; weighted k-NN as in ``attgmae.eval.knn``. Nothing is cached: the
weights change between calls.
"""

from __future__ import annotations

import torch

from attgmae.eval.features import image_split, l2_normalize, split_features
from attgmae.eval.knn import knn_classifier, vote_columns


def knn_top1(model, data_root, device, k=20, T=0.07, batch_size=64, num_workers=0) -> float:
    """k-NN top-1 accuracy (percent) of ``model``'s encoder; leaves the model's mode as found."""
    model = getattr(model, "module", model)  # unwrap DistributedDataParallel
    was_training = model.training
    model.eval()
    try:
        train = image_split(data_root, "train")
        val = image_split(data_root, "val", train.class_names)
        # The model's own input size (pretraining may run at --input_size other than 224).
        img_size = model.patch_embed.img_size
        common = {
            "input_size": int(img_size[0] if isinstance(img_size, (tuple, list)) else img_size),
            "device": device,
            "batch_size": batch_size,
            "num_workers": num_workers,
            "log": lambda msg: None,
        }
        train_feats, train_labels = split_features(model, train, "train", **common)
        val_feats, val_labels = split_features(model, val, "val", **common)
    finally:
        model.train(was_training)
    search_device = torch.device(device)
    top1, _ = knn_classifier(
        l2_normalize(train_feats).to(search_device),
        train_labels.to(search_device),
        l2_normalize(val_feats).to(search_device),
        val_labels.to(search_device),
        min(k, len(train_labels)),
        T,
        num_classes=vote_columns(len(train.class_names)),
    )
    return top1
