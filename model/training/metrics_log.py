"""metrics.jsonl: one JSON object per logged training step and per evaluation.

Records carry ``kind`` ("train", "val", "test"), ``step`` and ``epoch``. On ``--resume`` the file is
cut back to the checkpoint's step, so that lines logged after the last checkpoint of an interrupted
run (stopped, killed, or out of disk space) are not repeated: the resumed file reads like an
uninterrupted run's. The cut rewrites the file atomically, and an append that fails is undone
(see :mod:`model.training.disk_full`); a last line torn by kill -9 mid-append is dropped on reading.
Only a resumed run reads the file: a new run starts it afresh, whatever an earlier run left there.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from model.training.disk_full import append_line, write_text
from pipeline.errors import ConfigError


class MetricsLog:
    """Appends records to ``path``; inert on ranks other than 0 (``path`` None)."""

    def __init__(self, path: str | Path | None):
        self.path = Path(path) if path else None
        self.records: list[dict[str, Any]] = []

    def truncate_after(self, step: int, epochs_done: int) -> None:
        """On resume: read the file, keep train records up to ``step`` and validation records of the
        ``epochs_done`` finished epochs (records count epochs from 1); drop everything else, test records included."""
        if self.path and self.path.exists():
            self.records = _read(self.path)
        keep = [r for r in self.records
                if (r["kind"] == "train" and r["step"] <= step)
                or (r["kind"] == "val" and r["epoch"] <= epochs_done)]
        self._rewrite(keep)

    def reset(self) -> None:
        """A new run: an empty file."""
        self._rewrite([])

    def log(self, record: dict[str, Any]) -> None:
        record = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}
        if self.path:
            append_line(self.path, json.dumps(record) + "\n")
        self.records.append(record)

    def _rewrite(self, records: list[dict[str, Any]]) -> None:
        if self.path:
            write_text(self.path, "".join(json.dumps(r) + "\n" for r in records))
        self.records = records


def _read(path: Path) -> list[dict[str, Any]]:
    foreign = "it was not written by this trainer (delete or repair it to resume)"
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path} is not UTF-8 text (byte {err.start}); {foreign}") from None
    records = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except (json.JSONDecodeError, RecursionError):
            if i == len(lines) - 1:
                break  # torn by a kill mid-append; the resume cuts back past it anyway
            raise ConfigError(f"{path} line {i + 1} is not JSON; {foreign}") from None
        if not isinstance(record, dict) or not {"kind", "step", "epoch"} <= set(record):
            raise ConfigError(f"{path} line {i + 1} is not a metrics record (kind, step, epoch); {foreign}")
        records.append(record)
    return records
