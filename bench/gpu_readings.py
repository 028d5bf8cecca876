"""What the train part reads beside train.py's own files: NVML utilization with timestamps, the
wall times of its metrics records (each epoch's window), and the per-epoch report built from both."""
from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any

from bench.gpu_driver import _read_json


class NvmlSampler:
    """GPU utilization with timestamps, sampled every 0.1 s from a thread; inert without NVML or a GPU.
    The driver never touches CUDA itself: NVML reads the whole device, so train.py's kernels count."""

    def __init__(self, interval: float = 0.1):
        self.interval, self.samples, self.reason = interval, [], None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> "NvmlSampler":
        try:
            import pynvml

            pynvml.nvmlInit()
            visible = os.environ.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0]
            handle = pynvml.nvmlDeviceGetHandleByIndex(int(visible) if visible.isdigit() else 0)
        except Exception as err:  # no nvidia-ml-py, no driver, no GPU
            self.reason = f"NVML unavailable ({type(err).__name__})"
            return self

        def loop() -> None:
            while not self._stop.wait(self.interval):
                try:
                    self.samples.append((time.time(), float(pynvml.nvmlDeviceGetUtilizationRates(handle).gpu)))
                except Exception:
                    break

        self._thread = threading.Thread(target=loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)

    def mean(self, start: float, end: float) -> float | None:
        xs = [u for t, u in self.samples if start <= t <= end]
        return sum(xs) / len(xs) if xs else None


class EpochWatcher:
    """Wall times at which train.py's records appear in metrics.jsonl (polled every 0.2 s), from which
    each epoch's window of training steps follows: from the previous epoch's validation record (or,
    for the first epoch, its first train record, after the compile) to its own last train record.
    Logs come every few seconds, so a short epoch may have a single train record: hence the val one."""

    def __init__(self, path: Path, interval: float = 0.2):
        self.path, self.interval = path, interval
        self.train: dict[int, list[float]] = {}  # epoch → [first, last] appearance of its train records
        self.val: dict[int, float] = {}  # epoch → appearance of its validation record
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._lines = 0

    def __enter__(self) -> "EpochWatcher":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=2)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                lines = self.path.read_text().splitlines()
            except FileNotFoundError:
                continue
            now = time.time()
            for line in lines[self._lines:]:
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    break  # a line being written: read it next time
                if rec.get("kind") == "train":
                    self.train.setdefault(int(rec["epoch"]), [now, now])[1] = now
                elif rec.get("kind") == "val":
                    self.val[int(rec["epoch"])] = now
                self._lines += 1

    def windows(self) -> dict[int, tuple[float, float]]:
        out = {}
        for e, (first, last) in self.train.items():
            start = self.val.get(e - 1, first)
            if last > start:
                out[e] = (start, last)
        return out


def train_report(run_dir: Path, windows: dict[int, tuple[float, float]], sampler: NvmlSampler,
                 cache: str | None = None) -> dict[str, Any]:
    """Per-epoch images/s, seconds and GPU busy share of a finished (or cut-short) train.py run."""
    summary = _read_json(run_dir / "summary.json") or {}
    records = []
    try:
        records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    except FileNotFoundError:
        pass
    config = _read_json(run_dir / "config.json") or {}
    batch = config.get("batch_size")
    epochs: dict[int, dict[str, Any]] = {}
    prev_step = 0
    for rec in records:
        if rec.get("kind") != "train":
            continue
        e = epochs.setdefault(int(rec["epoch"]), {"epoch": int(rec["epoch"]), "images": 0, "seconds": 0.0})
        # Each train record covers the steps since the previous one, at the images/s it logs.
        images = (rec["step"] - prev_step) * batch if batch else 0
        e["images"] += images
        e["seconds"] += images / rec["images_per_s"] if rec.get("images_per_s") else 0.0
        prev_step = rec["step"]
    for e in epochs.values():
        e["images_per_s"] = e["images"] / e["seconds"] if e["seconds"] else None
        e["reads"] = (None if cache is None else "decode" if cache == "none"
                      else "decode + fill" if e["epoch"] == 1 else "cache")
        window = windows.get(e["epoch"])
        e["nvml_busy_pct"] = sampler.mean(*window) if window else None
    # Where train.py reports its own per-epoch figures, they replace the ones rebuilt from the log.
    for own in summary.get("epochs") or []:
        if isinstance(own, dict) and own.get("epoch") in epochs:
            epochs[own["epoch"]].update({f"train_py_{k}": v for k, v in own.items() if k != "epoch"})
    return {"epochs": [epochs[k] for k in sorted(epochs)], "nvml_note": sampler.reason,
            "images_per_s": summary.get("images_per_s"), "checkpoint_seconds": summary.get("checkpoint_seconds"),
            "wall_time_s": summary.get("wall_time_s"), "steps": summary.get("steps"),
            "runtime": summary.get("runtime"), "loader": summary.get("loader"), "cache": cache,
            "test": summary.get("test"), "batch_size": batch,
            "epochs_note": "images/s and seconds per epoch rebuilt from metrics.jsonl's train records "
                           "(images between records ÷ their images/s); nvml_busy_pct: mean NVML utilization "
                           "from the previous epoch's validation record (epoch 1: its first train record) to the "
                           "epoch's last train record"}
