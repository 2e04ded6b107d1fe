"""A linear probe's state across runs: which checkpoint it continues from (the rule every
command follows, ``attgmae.engine.resume``), and what it writes as it trains: ``log.txt`` (one
line per epoch, whatever the resumes), TensorBoard (epoch_1000x), ``checkpoint-last.pth`` after
every epoch (and after a stop signal, inside one) and ``checkpoint-<last epoch>.pth``.

A checkpoint: ``head``, ``optimizer`` (LARS momentum), ``epoch`` (the last completed),
``config``, ``history`` (the epochs' records), the inputs' digests and ``resume``: the settings
that define the probe, the changes resumes accepted (``history``), the epoch in progress and,
inside it, the micro-batches done (``step``, a whole optimizer step) with the epoch's sums.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from attgmae.core.tensorboard import epoch_1000x, open_tensorboard
from attgmae.core.torchfile import CheckpointUnreadable, load_torch_file, save_torch_file
from attgmae.engine.history import EpochLog
from attgmae.engine.resume import check_settings, find_checkpoint

LAST_NAME = "checkpoint-last.pth"
DIGESTS = ("checkpoint_sha256", "subset_sha256", "subset_file_sha256", "sampling")
SCALARS = ("test_acc1", "test_acc5", "test_loss", "train_loss", "train_lr")  # TensorBoard


def read_probe_checkpoint(path: Path, trusted: bool) -> dict:
    """A probe's checkpoint; one written before its settings were recorded is compared by the
    digests it holds."""
    state = load_torch_file(path, trusted)
    if not isinstance(state, dict) or "head" not in state:
        raise CheckpointUnreadable(f"{path}: not a linear-probe checkpoint (no 'head' entry)")
    if "resume" not in state:
        state["resume"] = {"settings": {k: state[k] for k in DIGESTS if k in state}}
    return state


def find_probe_checkpoint(cfg, out_dir: Path, settings: dict, log, is_main: bool = True):
    """(path, checkpoint, the run's changes) to continue from, or None: the newest checkpoint of
    ``out_dir`` (or ``cfg.resume``), refused when it was made with other ``settings``. Every rank
    reads it (they train the same head); only rank 0 (``is_main``) removes old checkpoints."""
    found = find_checkpoint(
        out_dir, resume=cfg.resume, auto_resume=cfg.auto_resume, overwrite=cfg.overwrite,
        trusted=cfg.trust_checkpoint, is_main=is_main, log=log, read=read_probe_checkpoint,
    )  # fmt: skip
    if found is None:
        return None
    path, state = found
    note = f"the lr cosine now ends at epoch {cfg.epochs}"
    return path, state, check_settings(path, state, settings, cfg.accept_changed, log, note)


class ProbeState:
    """The head and optimizer of one probe, where it continues, and its outputs (written only
    when ``writes``: rank 0 of a torchrun; the other ranks train the same head)."""

    def __init__(self, cfg, out_dir: Path, head, optimizer, settings: dict, resumed, log,
                 writes: bool = True):  # fmt: skip
        self.cfg, self.out_dir, self.head, self.optimizer = cfg, Path(out_dir), head, optimizer
        self.writes = writes
        self.settings, self.changes, self.log = settings, [], log
        self.start_epoch, self.history = 0, []
        self._start: tuple[int, dict | None] = (0, None)  # (micro-batch, sums) to continue at
        if resumed is not None:
            path, state, self.changes = resumed
            head.load_state_dict(state["head"])
            optimizer.load_state_dict(state["optimizer"])
            point = state["resume"]
            self.start_epoch = int(point.get("epoch", state["epoch"] + 1))
            self.history = [h for h in state["history"] if h["epoch"] < self.start_epoch]
            if point.get("step"):
                self._start = (int(point["step"]), point["sums"])
            inside = f", micro-batch {self._start[0]}" if self._start[0] else ""
            log(f"resumed from {path} at epoch {self.start_epoch}{inside}")
        self.log_file = EpochLog(self.out_dir, self.start_epoch) if writes else None
        log_dir = getattr(cfg, "log_dir", None) or self.out_dir / "tensorboard"
        self.writer = open_tensorboard(log_dir) if writes else None
        self.n_parameters = sum(p.numel() for p in head.parameters())

    def take_start(self) -> tuple[int, dict | None]:
        """Where the first epoch of this run starts (later ones start at 0)."""
        start, self._start = self._start, (0, None)
        return start

    def _checkpoint(self, last_done: int, **resume) -> dict:
        return {
            "head": self.head.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "epoch": last_done,
            "config": asdict(self.cfg),
            "history": self.history,
            "resume": {"settings": self.settings, "history": self.changes, **resume},
            **{key: self.settings[key] for key in DIGESTS},  # (also at the top, as before)
        }

    def save_partial(self, epoch: int, train_stats: dict) -> str:
        """Save the epoch stopped after ``train_stats["stopped_at"]`` micro-batches -> where."""
        step = train_stats["stopped_at"]
        checkpoint = self._checkpoint(epoch - 1, epoch=epoch, step=step, sums=train_stats["sums"])
        if self.writes:
            save_torch_file(checkpoint, self.out_dir / LAST_NAME)
        return f"{self.out_dir / LAST_NAME} (epoch {epoch}, micro-batch {step})"

    def end_epoch(self, epoch: int, train_stats: dict, test_stats: dict) -> None:
        """Record a finished epoch: its log.txt line first (a run killed before the checkpoint
        redoes the epoch and replaces the line), then the checkpoint, then TensorBoard."""
        if not self.writes:
            return
        train_stats = {k: v for k, v in train_stats.items() if k not in ("stopped_at", "sums")}
        stats = {
            **{f"train_{k}": v for k, v in train_stats.items()},
            **{f"test_{k}": v for k, v in test_stats.items()},
            "epoch": epoch,
            "n_parameters": self.n_parameters,
        }
        self.history.append(stats)
        self.log_file.append(stats)
        self.log(
            f"epoch {epoch}: train loss {stats['train_loss']:.4f}, val top-1 "
            f"{stats['test_acc1']:.2f} top-5 {stats['test_acc5']:.2f}"
        )
        checkpoint = self._checkpoint(epoch, epoch=epoch + 1)
        save_torch_file(checkpoint, self.out_dir / LAST_NAME)
        if epoch == self.cfg.epochs - 1:
            save_torch_file(checkpoint, self.out_dir / f"checkpoint-{epoch}.pth")
        if self.writer is not None:
            for key in SCALARS:
                self.writer.add_scalar(key.replace("_", "/", 1), stats[key], epoch_1000x(epoch + 1))
            self.writer.flush()
