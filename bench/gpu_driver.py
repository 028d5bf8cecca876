"""What the GPU session's parts share: the session (budget, output folder, data job), one part's
subprocess with its log, and the files it writes. The plan and the CLI are in gpu_session.py."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
#: The kernel tests of the fast subset: float64 gradcheck and the inductor compiles are what take minutes.
KERNEL_TESTS = ["tests/test_kernels_vae_loss.py", "tests/test_kernels_reparam_kl.py", "tests/test_kernels_sse.py"]
KERNEL_SUBSET = "not gradcheck and not compiled"
DRY_RUN_KERNEL_SUBSET = "whole_loss_path or no_grad_and_nan"
#: Seconds kept for the train-step grid's last variant after its budget: a reduce-overhead compile.
STEP_ROOM = 45
#: The dry run's data set: a train split of 128 images, 4 steps of 32 per epoch.
DRY_RUN_IMAGES = 160
#: Layered over the preset for the dry run, so that every part runs its configuration at toy size on a
#: CPU: compile alone would take a minute there, and 8 loader workers on 2 cores only wait for each other.
DRY_RUN_CONFIG = {"batch_size": 32, "eval_batch_size": 64, "compile": False, "amp": "off", "num_threads": 2,
                  "eval_iwae_images": 16, "eval_samples": 32, "n_samples": 16}


@dataclass
class Part:
    """One measurement: ``least`` is the time it needs to be worth starting; ``cap`` bounds it."""

    name: str
    least: float
    run: Callable[["Session", "Part"], dict[str, Any] | None]
    cap: float | None = None


@dataclass
class Session:
    mode: str
    out: Path
    data: Path
    budget: float
    dry_run: bool
    config: str = "configs/gpu.json"
    overlap: bool = True
    python: str = sys.executable
    t0: float = field(default_factory=time.perf_counter)
    parts: list[dict[str, Any]] = field(default_factory=list)
    data_job: subprocess.Popen | None = None

    # ------------------------------------------------------------------ time and reporting
    def left(self) -> float:
        return self.budget - (time.perf_counter() - self.t0)

    def say(self, msg: str) -> None:
        print(f"== {time.perf_counter() - self.t0:6.1f} s  {msg}", flush=True)

    def record(self, entry: dict[str, Any]) -> None:
        self.parts.append(entry)
        doc = {"mode": self.mode, "dry_run": self.dry_run, "budget_s": self.budget,
               "elapsed_s": time.perf_counter() - self.t0, "out": str(self.out), "data": str(self.data),
               "parts": self.parts}
        _write_json(self.out / "session.json", doc)

    # ------------------------------------------------------------------ subprocesses
    def command(self, part: str, argv: list[str], *, timeout: float,
                env: dict[str, str] | None = None) -> tuple[int | None, str]:
        """Run ``argv`` with its output streamed to OUT/PART.log and to this process's stdout;
        (returncode or None on timeout, the output). A timed-out command's process group is killed."""
        log = self.out / f"{part}.log"
        full_env = {**os.environ, **(env or {})}
        with open(log, "a") as fh:
            fh.write(f"$ {' '.join(argv)}\n")
            fh.flush()
            proc = subprocess.Popen(argv, cwd=ROOT, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    text=True, bufsize=1, start_new_session=True)
            chunks: list[str] = []

            def pump() -> None:
                for line in proc.stdout:
                    chunks.append(line)
                    fh.write(line)
                    fh.flush()
                    sys.stdout.write(f"   {part}| {line}")
                    sys.stdout.flush()

            reader = threading.Thread(target=pump, daemon=True)
            reader.start()
            try:
                rc = proc.wait(timeout=max(1.0, timeout))
            except subprocess.TimeoutExpired:
                _kill_group(proc)
                rc = None
            except BaseException:  # Ctrl-C or SIGTERM of this driver: its part goes too (another session)
                _kill_group(proc)
                raise
            reader.join(timeout=5)
        return rc, "".join(chunks)

    def wait_for_data(self, limit: float) -> Path:
        """The shards, once the data job is done (waiting at most ``limit`` seconds)."""
        if self.data_job is None and not (self.data / "shards" / "manifest.json").is_file():
            raise PartError("no data: the data part did not run")
        if self.data_job is not None:
            try:
                self.data_job.wait(timeout=max(1.0, limit))
            except subprocess.TimeoutExpired:
                raise PartError(f"the data job was still running after {limit:.0f} s more") from None
            if self.data_job.returncode != 0:
                raise PartError(f"the data job failed (exit {self.data_job.returncode}): see data.log")
        return self.data / "shards"


class PartError(Exception):
    """A part failed in a way that one line says."""


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()


def _write_json(path: Path, doc: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(doc, indent=2, default=str) + "\n")
    os.replace(tmp, path)


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _python(s: Session, *args: str) -> list[str]:
    return [s.python, *args]


def _checked(rc: int | None, what: str) -> None:
    if rc is None:
        raise PartError(f"{what} hit its time limit")
    if rc != 0:
        raise PartError(f"{what} exited {rc}")


def start_data_job(s: Session, nice: bool) -> None:
    # the dry run's size is fixed: drawn by time on a loaded 2-core machine it would vary run to run
    # dali needs fewer faces (its decode sweep reads 16,384) and has no GPU parts to draw behind
    size = (["--images", str(DRY_RUN_IMAGES)] if s.dry_run
            else ["--seconds", "90" if s.mode == "quick" else "30"])
    argv = _python(s, "-m", "bench.gpu_data", "--out", str(s.data), *size, "--json", str(s.out / "data.json"))
    log = open(s.out / "data.log", "a")
    log.write(f"$ {' '.join(argv)}\n")
    log.flush()
    s.data_job = subprocess.Popen(argv, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                  preexec_fn=(lambda: os.nice(19)) if nice else None)
    s.say(f"data: drawing {' '.join(size)} synthetic faces into {s.data}"
          + (" in the background (nice 19)" if nice else ""))
