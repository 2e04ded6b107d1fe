"""TensorBoard logs, when the optional ``tensorboard`` package is installed.

Every scalar of every command goes on one x axis, official MAE's ``epoch_1000x``: training
progress in thousandths of an epoch (``epoch_1000x(epoch + iteration / iterations)`` during an
epoch; ``epoch_1000x(epoch + 1)`` for what is measured after epoch ``epoch``, e.g. k-NN top-1 or
validation scores), so per-iteration and per-epoch curves line up.
"""

from __future__ import annotations


def epoch_1000x(epoch_float: float) -> int:
    """The x of TensorBoard scalars: ``epoch_float`` (epochs of training done) x 1000."""
    return int(round(epoch_float * 1000))


def open_tensorboard(log_dir):
    """A SummaryWriter on ``log_dir``, or None without tensorboard (log.txt has every number)."""
    try:
        from torch.utils.tensorboard import SummaryWriter  # optional: the tensorboard extra
    except ImportError:
        return None
    return SummaryWriter(log_dir=str(log_dir))
