"""train.py with faults injected, for the tests that stop, kill or break runs (a script, not a test module).

    python tests/train_with_faults.py [train.py arguments]

Each fault is switched on by an environment variable; without any this is train.py itself:

    FAULT_STEP_SECONDS=S      sleep S seconds after every training step (spreads a run out in time)
    FAULT_SLOW_STEP=N:S       in training step N (counted from 1 in this process) write FAULT_MARKER,
                              then sleep S seconds: a signal sent on seeing the marker lands mid-step
    FAULT_SLOW_SAVE=N:S       while writing the checkpoint of global step N, write half of it, write
                              FAULT_MARKER, then sleep S seconds before the rest: a kill lands mid-write
    FAULT_RAISE=RANK:N        raise RuntimeError in training step N on global rank RANK
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import train  # noqa: E402
from model.training import checkpoint as disk_full  # noqa: E402


def _pair(name: str) -> tuple[int, float] | None:
    value = os.environ.get(name)
    if not value:
        return None
    a, b = value.split(":")
    return int(a), float(b)


def _mark(text: str) -> None:
    Path(os.environ["FAULT_MARKER"]).write_text(text)


def _wrap_step() -> None:
    real_class = train.TrainStep
    every = float(os.environ.get("FAULT_STEP_SECONDS", "0"))
    slow, fail = _pair("FAULT_SLOW_STEP"), _pair("FAULT_RAISE")
    rank = int(os.environ.get("RANK", "0"))
    calls = 0

    class FaultyStep(real_class):
        def __call__(self, x):
            nonlocal calls
            calls += 1
            if fail and rank == fail[0] and calls == int(fail[1]):
                raise RuntimeError(f"injected failure on rank {rank} at step {calls}")
            if slow and calls == slow[0]:
                if rank == 0:
                    _mark(f"step {calls}")
                time.sleep(slow[1])
            out = super().__call__(x)
            if every:
                time.sleep(every)
            return out

    train.TrainStep = FaultyStep


def _wrap_save() -> None:
    slow = _pair("FAULT_SLOW_SAVE")
    if not slow:
        return
    real_save, real_write = train.save_atomic, disk_full._write

    def halting_write(fh, data, target):
        view = memoryview(data)
        half = len(view) // 2
        real_write(fh, view[:half], target)
        fh.flush()
        _mark(f"writing {target}")
        time.sleep(slow[1])
        real_write(fh, view[half:], target)

    def save(obj, path):
        if obj["step"] != slow[0]:
            return real_save(obj, path)
        disk_full._write = halting_write
        try:
            return real_save(obj, path)
        finally:
            disk_full._write = real_write

    train.save_atomic = save


if __name__ == "__main__":
    _wrap_step()
    _wrap_save()
    raise SystemExit(train.main())
