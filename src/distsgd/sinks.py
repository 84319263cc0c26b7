"""Metrics sinks: objects `runner.train(..., sinks=[...])` hands every metrics row it records
(`write(row)`) and closes at the end (`close()`), next to the JSONL and CSV files."""

from __future__ import annotations

import math
from pathlib import Path

from .errors import UserError

TENSORBOARD_PIP = "pip install tensorboard  (or: pip install 'distsgd[tensorboard]')"


class TensorBoardSink:
    """Every numeric metric of a row as a TensorBoard scalar at the row's step, under
    `log_dir` (view with `tensorboard --logdir runs`).

    The event file is opened at the first row with `purge_step` = that row's step, so a
    resumed run (or a fresh run in an old folder) replaces the events it rewrites instead
    of drawing them twice."""

    def __init__(self, log_dir: str | Path):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise UserError(f"--tensorboard needs the tensorboard package: {TENSORBOARD_PIP}") from None
        self._make = SummaryWriter
        self.log_dir = Path(log_dir)
        self._writer = None

    def write(self, row: dict) -> None:
        step = int(row["step"])
        if self._writer is None:
            self._writer = self._make(log_dir=str(self.log_dir), purge_step=step)
        for key, value in row.items():
            if key == "step" or isinstance(value, bool) or not isinstance(value, int | float):
                continue
            if math.isfinite(value):
                self._writer.add_scalar(_tag(key), value, step)
        self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def _tag(key: str) -> str:
    """test_acc -> test/acc, bytes_sent_per_worker -> traffic/bytes_sent_per_worker: one
    TensorBoard section per kind of metric."""
    for prefix in ("train_", "test_", "worker0_"):
        if key.startswith(prefix):
            return f"{prefix[:-1]}/{key[len(prefix):]}"
    if key.startswith(("bytes_", "messages_")) or key.endswith("_seconds"):
        return f"cost/{key}"
    return f"run/{key}"
