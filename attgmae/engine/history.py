"""``log.txt``: one JSON line per epoch (as official MAE), exactly one per epoch across resumes.

A run resumed at epoch E drops the lines of epochs E and later before it appends (they come from
a run that went further than the checkpoint it resumes from, e.g. an older ``--resume``), so the
file never holds an epoch twice. The file is rewritten atomically at every epoch: a kill while
writing never leaves half a line.
"""

from __future__ import annotations

import json
from pathlib import Path

from attgmae.core.files import write_text_atomic

LOG_NAME = "log.txt"


def _epoch_of(line: str) -> int | None:
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        return None
    epoch = record.get("epoch") if isinstance(record, dict) else None
    return epoch if isinstance(epoch, int) else None


def _kept(line: str, start_epoch: int) -> bool:
    """A line of an epoch before ``start_epoch``; other text stays unless the run starts over."""
    epoch = _epoch_of(line)
    return bool(line.strip()) and (start_epoch > 0 if epoch is None else epoch < start_epoch)


class EpochLog:
    """The per-epoch records of a run in ``output_dir/log.txt``, continuing at ``start_epoch``."""

    def __init__(self, output_dir, start_epoch: int):
        self.path = Path(output_dir) / LOG_NAME
        lines = self.path.read_text(encoding="utf-8").splitlines() if self.path.is_file() else []
        self.lines = [line for line in lines if _kept(line, start_epoch)]
        self.records = [json.loads(x) for x in self.lines if _epoch_of(x) is not None]
        if self.lines != lines:
            self._write()

    def append(self, record: dict) -> None:
        self.lines.append(json.dumps(record))
        self.records.append(record)
        self._write()

    def _write(self) -> None:
        write_text_atomic(self.path, "".join(line + "\n" for line in self.lines))
