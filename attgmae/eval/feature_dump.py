"""DINO's k-NN feature dumps: the four files ``eval_knn.py --dump_features DIR`` writes.

``trainfeat.pth`` / ``testfeat.pth``: float32 [N, D] / [M, D], L2-normalized rows (DINO
normalizes before dumping); ``trainlabels.pth`` / ``testlabels.pth``: int64 [N] / [M], the
ImageFolder class indices. Each file is one tensor saved with ``torch.save``. ``attg-eval knn
--dump_features DIR`` writes them, ``--load_features DIR`` reads ours or DINO's.
"""

from __future__ import annotations

from pathlib import Path

import torch

from attgmae.core.errors import InputError
from attgmae.core.torchfile import load_torch_file, save_torch_file

DUMP_FILES = ("trainfeat.pth", "testfeat.pth", "trainlabels.pth", "testlabels.pth")
# A dumped row whose length is this close to 1 is taken as DINO wrote it (normalizing it again
# would round it differently); rows of raw features are normalized.
UNIT_TOLERANCE = 1e-3


def write_feature_dump(folder, train_feats, train_labels, test_feats, test_labels) -> Path:
    """The four files in ``folder`` (created), each written atomically; the features as given
    (pass them L2-normalized, as DINO dumps them)."""
    folder = Path(folder)
    tensors = (train_feats, test_feats, train_labels, test_labels)
    for name, tensor in zip(DUMP_FILES, tensors):
        save_torch_file(tensor.detach().cpu(), folder / name)
    return folder


def _read(folder: Path, name: str) -> torch.Tensor:
    path = folder / name
    if not path.is_file():
        raise InputError(
            f"--load_features {folder}: no {name} there (DINO's eval_knn dump is "
            f"{', '.join(DUMP_FILES)})"
        )
    value = load_torch_file(path, what="feature dump")
    if not isinstance(value, torch.Tensor):
        raise InputError(f"{path}: holds a {type(value).__name__}, not a tensor")
    return value


def unit_rows(feats: torch.Tensor) -> torch.Tensor:
    """float32 rows of length 1: as they are when already so (DINO's dumps), else normalized."""
    feats = feats.float()
    if feats.numel() and (feats.norm(dim=1) - 1).abs().max() <= UNIT_TOLERANCE:
        return feats
    return torch.nn.functional.normalize(feats, dim=1, p=2)


def read_feature_dump(folder):
    """(train feats [N, D], train labels [N], test feats [M, D], test labels [M]) from the four
    files in ``folder``, features as unit rows (``unit_rows``), labels int64; InputError naming
    the file that is missing or does not fit the others."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"--load_features {folder}: not a folder")
    train, test, train_labels, test_labels = (_read(folder, name) for name in DUMP_FILES)
    for name, feats, labels in (("train", train, train_labels), ("test", test, test_labels)):
        where = folder / f"{name}feat.pth"
        if feats.ndim != 2 or not feats.is_floating_point() or feats.shape[0] == 0:
            raise InputError(f"{where}: expected float features [N, D], got {tuple(feats.shape)}")
        if not bool(torch.isfinite(feats).all()):
            raise InputError(f"{where}: holds NaN or infinite values")
        if labels.shape != (feats.shape[0],) or labels.is_floating_point():
            raise InputError(
                f"{folder / f'{name}labels.pth'}: expected {feats.shape[0]} integer labels (one "
                f"per row of {where.name}), got {labels.dtype} {tuple(labels.shape)}"
            )
        if int(labels.min()) < 0:
            raise InputError(f"{folder / f'{name}labels.pth'}: negative class indices")
    if train.shape[1] != test.shape[1]:
        raise InputError(
            f"--load_features {folder}: train features are {train.shape[1]} wide, test features "
            f"{test.shape[1]}"
        )
    return unit_rows(train), train_labels.long(), unit_rows(test), test_labels.long()
