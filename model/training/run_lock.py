"""One run directory, one writer: ``RUN/.lock``, held with ``flock`` for as long as train.py runs.

Two trainers on one run directory would interleave their metrics and overwrite each other's
checkpoints, so a second one is refused, naming the holder (host, pid, start time, command) that
the lock file records. The kernel drops an ``flock`` when its process dies, kill -9 included, so a
lock file left behind by a dead trainer is not held by anybody: it is taken over with a notice
naming the dead holder. (On network filesystems this relies on their lock support, as NFSv4 has.)

The lock is taken before anything reads or writes the run directory (``--resume`` included); if
the directory did not exist and the run fails before writing into it, it is removed again.
"""
from __future__ import annotations

import datetime
import fcntl
import json
import os
import socket
import sys
from pathlib import Path

from model.training.disk_full import reporting
from pipeline.errors import ConfigError

LOCK_NAME = ".lock"


class RunLock:
    """Context manager: hold ``run_dir``'s lock (or do nothing when ``enabled`` is False: ranks ≠ 0)."""

    def __init__(self, run_dir: str | os.PathLike, *, enabled: bool = True) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_NAME
        self.enabled = enabled
        self.notice: str | None = None  # set when a dead trainer's lock was taken over
        self._fd: int | None = None
        self._created_dir = False

    def __enter__(self) -> "RunLock":
        if not self.enabled:
            return self
        self._created_dir = not self.run_dir.exists()
        with reporting(self.path):
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self._fd = _lock(self.path)
            previous = _read(self._fd)
            if previous:
                self.notice = (f"{self.path}: took over the lock of pid {previous.get('pid', '?')} on host "
                               f"{previous.get('host', '?')} (since {previous.get('started', '?')}), which ended "
                               "without releasing it (killed?)")
            os.ftruncate(self._fd, 0)
            os.pwrite(self._fd, (json.dumps(_me()) + "\n").encode(), 0)
        return self

    def __exit__(self, *exc) -> None:
        if self._fd is None:
            return
        try:
            if _same_file(self.path, self._fd):
                self.path.unlink()
        finally:
            os.close(self._fd)  # releases the flock
            self._fd = None
        if self._created_dir:
            try:
                self.run_dir.rmdir()  # only succeeds if the failed run wrote nothing there
            except OSError:
                pass


def _lock(path: Path) -> int:
    """An fd of ``path`` holding an exclusive flock; ConfigError naming the holder if a live process has it."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read(fd)
            os.close(fd)
            who = _holder(holder) if holder else "another trainer"
            raise ConfigError(f"run directory {path.parent} is in use by {who} (lock file {path}); wait for that run "
                              "to end, stop it, or choose another --out") from None
        if _same_file(path, fd):
            return fd
        os.close(fd)  # the holder released and removed the file between our open and our flock: retry


def _same_file(path: Path, fd: int) -> bool:
    try:
        return os.stat(path).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
        return False


def _read(fd: int) -> dict | None:
    raw = os.pread(fd, 4096, 0)
    try:
        info = json.loads(raw)
    except ValueError:
        return None
    return info if isinstance(info, dict) else None


def _me() -> dict:
    return {"host": socket.gethostname(), "pid": os.getpid(),
            "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "command": " ".join(getattr(sys, "orig_argv", sys.argv))}


def _holder(info: dict) -> str:
    return (f"pid {info.get('pid', '?')} on host {info.get('host', '?')} (since {info.get('started', '?')}: "
            f"{info.get('command', '?')})")
