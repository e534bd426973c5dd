"""Run logs: CSV files (always) and TensorBoard scalars (when the package is installed).

Only the main process writes. A resumed run first drops the rows logged after its checkpoint,
so that every step appears once.
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path
from typing import Any, Mapping

from kd.core.io import atomic_write_text

__all__ = ["CsvLog", "open_tensorboard"]


class CsvLog:
    """Append rows to a CSV file whose columns are fixed by its first row (or its existing header)."""

    def __init__(self, path: str | os.PathLike, enabled: bool = True):
        self.path, self.enabled = Path(path), enabled
        self.columns: list[str] | None = None
        if enabled and self.path.is_file():
            with open(self.path, newline="", encoding="utf-8") as f:
                self.columns = next(csv.reader(f), None)

    def truncate_after(self, step: int) -> None:
        """Keep only the rows with ``step <= step`` (used when resuming)."""
        if not (self.enabled and self.path.is_file()):
            return
        with open(self.path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        if self.columns is None:
            return
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(self.columns)
        for r in rows:
            if int(r["step"]) <= step:
                writer.writerow([r.get(c) or "" for c in self.columns])
        atomic_write_text(self.path, buffer.getvalue())

    def write(self, row: Mapping[str, Any]) -> None:
        if not self.enabled:
            return
        new = self.columns is None
        if new:
            self.columns = list(row)
            self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            if new:
                writer.writerow(self.columns)
            writer.writerow([_fmt(row.get(c)) for c in self.columns])


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def open_tensorboard(log_dir: str | os.PathLike, enabled: bool):
    """A ``SummaryWriter``, or None when disabled or when ``tensorboard`` is not installed."""
    if not enabled:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(log_dir))
