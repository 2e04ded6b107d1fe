"""TensorBoard logs, when the optional ``tensorboard`` package is installed."""

from __future__ import annotations


def open_tensorboard(log_dir):
    """A SummaryWriter on ``log_dir``, or None without tensorboard (log.txt has every number)."""
    try:
        from torch.utils.tensorboard import SummaryWriter  # optional: the tensorboard extra
    except ImportError:
        return None
    return SummaryWriter(log_dir=str(log_dir))
