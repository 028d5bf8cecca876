"""metrics.jsonl: one JSON object per logged training step and per evaluation.

Records carry ``kind`` ("train", "val", "test"), ``step`` and ``epoch``. On ``--resume`` the file is
cut back to the checkpoint's step, so that lines logged after the last checkpoint of an interrupted
run are not repeated: the resumed file reads like an uninterrupted run's.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any


class MetricsLog:
    """Appends records to ``path``; inert on ranks other than 0 (``path`` None)."""

    def __init__(self, path: str | Path | None):
        self.path = Path(path) if path else None
        self.records: list[dict[str, Any]] = []
        if self.path and self.path.exists():
            self.records = [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]

    def truncate_after(self, step: int, epochs_done: int) -> None:
        """Keep train records up to ``step`` and validation records of the ``epochs_done`` finished
        epochs (records count epochs from 1); drop everything else, test records included."""
        keep = [r for r in self.records
                if (r["kind"] == "train" and r["step"] <= step)
                or (r["kind"] == "val" and r["epoch"] <= epochs_done)]
        self.records = keep
        if self.path:
            self.path.write_text("".join(json.dumps(r) + "\n" for r in keep))

    def reset(self) -> None:
        self.records = []
        if self.path:
            self.path.write_text("")

    def log(self, record: dict[str, Any]) -> None:
        record = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}
        self.records.append(record)
        if self.path:
            with self.path.open("a") as fh:
                fh.write(json.dumps(record) + "\n")
