"""The GPU measurement of bench/RESULTS.md as one bounded command (run it through bench/gpu_session.sh).

    python -m bench.gpu_session quick [--budget SECONDS] [--out DIR] [--data DIR] [--dry-run] [--no-overlap]
    python -m bench.gpu_session dali  [--budget SECONDS] [--out DIR] [--data DIR] [--dry-run]

``quick`` needs nothing but PyTorch, Triton and torchvision (no DALI). Its parts, in order:

  kernel_tests  the CUDA kernel tests, a fast subset (no float64 gradcheck, no inductor compiles), ≤ 60 s
  graph_breaks  ``python -m bench.train_step --graph-breaks``: graph breaks of the GPU train step
  loss          fused vs eager vs compiled loss at B = 256 and 4,096 (share of copy bandwidth)
  train_step    the train-step grid: the GPU preset (configs/gpu.json) first, then eager fp32, then
                the rest while the budget allows
  train         train.py --config configs/gpu.json, 3 epochs on the synthetic set below: epoch 0
                decoded by the webdataset backend on the CPU cores, later epochs from the device cache;
                per-epoch images/s and seconds, NVML busy share per epoch, checkpoint seconds
  profile       the profiler's GPU idle share over 20 steps of the same configuration, loader-fed
  decode        torchvision.io.decode_jpeg on the GPU, images/s on the set's 178×218 JPEGs

The data set (``bench.gpu_data``: as many synthetic faces as 90 s of drawing on all cores gives,
then sharded) is made in the background from the start, at the lowest CPU priority, while the
GPU parts run (``--no-overlap``: in the foreground, right before ``train``).

``dali`` (once DALI is installed): DALI-GPU decode with hw_decoder_load, hybrid_huffman_threshold
and the thread count swept, then input efficiency with DALI-GPU and the device cache, on a set drawn
in 30 s first (or the one an earlier command left in --data).

Every part writes OUT/PART.json and OUT/PART.log as soon as it ends, so a command cut short keeps
what was done; OUT/session.json lists every part's status. A part whose least time exceeds what is
left of ``--budget`` is skipped with a line that says so. ``--dry-run`` runs every part at toy size
on whatever device there is (a CPU: Triton in its interpreter), in well under two minutes.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from pipeline.errors import UserError, cli_entry

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


# ---------------------------------------------------------------------- parts of `quick`
def part_kernel_tests(s: Session, p: Part) -> dict[str, Any]:
    # the dry run only shows that the part works: the suite runs every kernel test anyway
    files, subset = (KERNEL_TESTS[:1], DRY_RUN_KERNEL_SUBSET) if s.dry_run else (KERNEL_TESTS, KERNEL_SUBSET)
    argv = _python(s, "-m", "pytest", "-v", "-p", "no:cacheprovider", "-k", subset, *files)
    env = {"TRITON_INTERPRET": "1"} if s.dry_run else {}
    rc, out = s.command(p.name, argv, timeout=min(p.cap, s.left()), env=env)
    counts = {k: 0 for k in ("passed", "failed", "skipped", "error")}
    # -v prints one line per test as it ends, so a run stopped at its limit is still counted
    for m in re.finditer(r"::\S+ (PASSED|FAILED|SKIPPED|ERROR)", out):
        counts[m.group(1).lower()] += 1
    result = {**counts, "selection": f"-k '{subset}' {' '.join(files)}", "cut_at_s": None if rc is not None
              else p.cap, "exit": rc}
    if rc is None:
        raise PartError(f"stopped at its {p.cap:.0f} s limit after {counts['passed']} passed, "
                        f"{counts['failed']} failed", result)
    if rc != 0:
        raise PartError(f"{counts['failed']} failed, {counts['error']} errors", result)
    return result


def part_graph_breaks(s: Session, p: Part) -> dict[str, Any]:
    argv = _python(s, "-m", "bench.train_step", "--graph-breaks")
    rc, out = s.command(p.name, argv, timeout=s.left())
    found = {m.group(1): int(m.group(2)) for m in re.finditer(r"^graph breaks \((torch|triton)\): (\d+)$", out, re.M)}
    result = {"graph_breaks": found, "exit": rc}
    _checked(rc, "bench.train_step --graph-breaks")
    if set(found) != {"torch", "triton"}:
        raise PartError("the output lacks the lines 'graph breaks (torch): N' and 'graph breaks (triton): N'", result)
    return result


def part_loss(s: Session, p: Part) -> None:
    argv = _python(s, "-m", "bench.loss", "--json", str(s.out / "loss.json"))
    argv += ["--quick", "--batch", "8"] if s.dry_run else ["--batch", "256", "4096"]
    env = {"TRITON_INTERPRET": "1"} if s.dry_run else {}
    rc, _ = s.command(p.name, argv, timeout=s.left(), env=env)
    _checked(rc, "bench.loss")


def part_train_step(s: Session, p: Part, reserve: float) -> None:
    # No new variant once the parts after this one would lose their least time, with room for the last
    # one started (a compile); the first (the preset) always runs. The grid rewrites its JSON after
    # every variant, so a variant stopped at the limit costs only itself.
    limit = s.left() - reserve
    argv = _python(s, "-m", "bench.gpu_session", "step-grid", "--config", s.config,
                   "--json", str(s.out / "train_step.json"), "--budget", f"{max(1.0, limit - STEP_ROOM):.0f}")
    rc, _ = s.command(p.name, argv + (["--dry-run"] if s.dry_run else []), timeout=max(limit, p.least))
    _checked(rc, "the train-step grid")


def part_data_foreground(s: Session, p: Part) -> dict[str, Any] | None:
    start_data_job(s, nice=False)
    s.wait_for_data(s.left())
    return None


def part_train(s: Session, p: Part) -> dict[str, Any]:
    shards = s.wait_for_data(s.left() - p.least)
    run_dir = s.out / "train_run"
    argv = _python(s, "train.py", "--config", s.config, "--data", str(shards), "--epochs", "3",
                   "--out", str(run_dir), "--backend", "webdataset")
    env = {"VAE_NO_PROBE": "1"} if s.dry_run else {}  # the dry run's config fixes amp; no probe of the step
    sampler = NvmlSampler()
    watcher = EpochWatcher(run_dir / "metrics.jsonl")
    with sampler, watcher:
        rc, out = s.command(p.name, argv, timeout=s.left(), env=env)
    cache = re.search(r"loader (\S+), cache (\S+)", out)
    result = train_report(run_dir, watcher.windows(), sampler, cache.group(2) if cache else None)
    _checked(rc, "train.py")
    return result


def part_profile(s: Session, p: Part) -> None:
    shards = s.wait_for_data(s.left() - p.least)
    argv = _python(s, "-m", "bench.profile", "--shards", str(shards), "--config", s.config, "--backend",
                   "webdataset", "--out", str(s.out), "--json", str(s.out / "profile.json"))
    argv += ["--steps", "3", "--quick"] if s.dry_run else ["--steps", "20"]
    rc, _ = s.command(p.name, argv, timeout=s.left())
    _checked(rc, "bench.profile")


def part_decode(s: Session, p: Part) -> None:
    shards = s.wait_for_data(s.left() - p.least)
    argv = _python(s, "-m", "bench.gpu_decode", "--shards", str(shards), "--json", str(s.out / "decode.json"))
    if s.dry_run:
        argv += ["--max-images", "128", "--batch-sizes", "32", "--repeats", "1"]
    rc, _ = s.command(p.name, argv, timeout=s.left())
    _checked(rc, "bench.gpu_decode")


# ---------------------------------------------------------------------- parts of `dali`
def part_dali_decode(s: Session, p: Part) -> None:
    shards = s.wait_for_data(s.left() - p.least)
    argv = _python(s, "-m", "bench.loader", "--shards", str(shards), "--json", str(s.out / "dali_decode.json"))
    if s.dry_run:  # no CUDA here: DALI's CPU decoder stands in for the GPU rows
        argv += ["--only", "DALI-CPU 1", "--epochs", "1", "--quick", "--batch-size", str(DRY_RUN_CONFIG["batch_size"])]
    else:
        argv += ["--only", "DALI-GPU", "--epochs", "3", "--max-images", "16384"]
    rc, _ = s.command(p.name, argv, timeout=s.left())
    _checked(rc, "bench.loader")


def part_dali_input(s: Session, p: Part) -> None:
    shards = s.wait_for_data(s.left() - p.least)
    argv = _python(s, "-m", "bench.input_efficiency", "--shards", str(shards), "--config", s.config,
                   "--backend", "dali", "--json", str(s.out / "dali_input.json"))
    argv += ["--quick", "--epochs", "2"] if s.dry_run else ["--cache", "device", "--epochs", "3"]
    rc, _ = s.command(p.name, argv, timeout=s.left())
    _checked(rc, "bench.input_efficiency")


# ---------------------------------------------------------------------- the train part's readings
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


# ---------------------------------------------------------------------- the session
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


def quick_parts(s: Session) -> list[Part]:
    g = not s.dry_run  # the estimates below are an H100's (with 16 cores), or this toy run's on a CPU
    parts = [
        Part("kernel_tests", 20 if g else 5, part_kernel_tests, cap=60 if g else 40),
        Part("graph_breaks", 20 if g else 5, part_graph_breaks),
        Part("loss", 35 if g else 5, part_loss),
    ]
    after = [Part("train", 110 if g else 25, part_train),
             Part("profile", 35 if g else 8, part_profile),
             Part("decode", 15 if g else 4, part_decode)]
    reserve = sum(p.least for p in after)
    parts.append(Part("train_step", 60 if g else 5, lambda s_, p: part_train_step(s_, p, reserve)))
    if not s.overlap:
        parts.append(Part("data", 100 if g else 8, part_data_foreground))
    return parts + after


def dali_parts(s: Session) -> list[Part]:
    g = not s.dry_run
    return [Part("dali_decode", 120 if g else 10, part_dali_decode),
            Part("dali_input", 90 if g else 15, part_dali_input)]


def dry_run_config(preset: str, out: Path) -> str:
    """The preset's keys with DRY_RUN_CONFIG over them, as a config file of its own in ``out``."""
    keys = json.loads(Path(ROOT, preset).read_text())
    path = out / "dry-run-config.json"
    _write_json(path, {**keys, **DRY_RUN_CONFIG, "#dry-run": f"{preset} at toy size (bench.gpu_session)"})
    return str(path)


#: Run in a child: this driver never initialises CUDA, so that it holds no context on the GPU it measures.
ENVIRONMENT = """
import json, os, platform, sys, torch
env = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
       "device": torch.cuda.get_device_name() if torch.cuda.is_available() else None, "cpu_cores": os.cpu_count()}
for mod in ("triton", "torchvision", "webdataset", "nvidia.dali", "pynvml"):
    try:
        env[mod] = getattr(__import__(mod, fromlist=["_"]), "__version__", "present")
    except Exception as err:
        env[mod] = f"unusable ({type(err).__name__})"
print(json.dumps(env))
"""


def environment(s: Session) -> dict[str, Any]:
    done = subprocess.run([s.python, "-c", ENVIRONMENT], cwd=ROOT, capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise UserError(f"{s.python} cannot import torch: {done.stderr.strip().splitlines()[-1:]}")
    env = json.loads(done.stdout.strip().splitlines()[-1])
    _write_json(s.out / "env.json", env)
    return env


def run_session(s: Session) -> int:
    s.out.mkdir(parents=True, exist_ok=True)
    env = environment(s)
    s.say(" | ".join(f"{k} {v}" for k, v in env.items()))
    if s.dry_run:
        s.config = dry_run_config(s.config, s.out)
    parts = quick_parts(s) if s.mode == "quick" else dali_parts(s)
    s.say(f"{s.mode}{' (dry run)' if s.dry_run else ''}: budget {s.budget:.0f} s; parts "
          + ", ".join(f"{p.name} ≥{p.least:.0f} s" for p in parts) + f"; output {s.out}")
    if s.mode == "dali":  # both parts need the data at once
        start_data_job(s, nice=False)
    elif s.overlap:  # drawn behind the GPU parts, on the cores they leave idle
        start_data_job(s, nice=True)
    try:
        failed = _run_parts(s, parts)
    finally:
        if s.data_job is not None and s.data_job.poll() is None:
            _kill_group(s.data_job)
    if (s.out / "data.json").is_file():
        data = (_read_json(s.out / "data.json") or {}).get("results", {})
        if isinstance(data.get("images"), int):
            s.say(f"data: {data['images']:,} synthetic images ({data.get('split_images')})")
    statuses = [e["status"] for e in s.parts]
    s.say(f"done in {time.perf_counter() - s.t0:.0f} s: " + ", ".join(f"{e['part']} {e['status']}" for e in s.parts))
    return 1 if failed or "ok" not in statuses else 0


def _run_parts(s: Session, parts: list[Part]) -> int:
    failed = 0
    for p in parts:
        left = s.left()
        entry: dict[str, Any] = {"part": p.name, "least_s": p.least}
        if left < p.least:
            entry.update(status="skipped", reason=f"needs ≥ {p.least:.0f} s, {max(0.0, left):.0f} s of the "
                                                  f"{s.budget:.0f} s budget left")
            s.say(f"{p.name}: skipped: {entry['reason']}")
        else:
            s.say(f"{p.name}: start ({left:.0f} s left)")
            t = time.perf_counter()
            try:
                own = p.run(s, p)
                entry.update(status="ok", result=own)
            except PartError as err:
                entry.update(status="failed", reason=str(err.args[0]), result=err.args[1] if len(err.args) > 1 else None)
                failed += 1
            except Exception as err:  # a bug in this driver must not cost the parts after it
                entry.update(status="failed", reason=f"{type(err).__name__}: {err}")
                failed += 1
            entry["seconds"] = time.perf_counter() - t
            s.say(f"{p.name}: {entry['status']} in {entry['seconds']:.1f} s"
                  + (f": {entry['reason']}" if entry.get("reason") else ""))
        _finish_part_json(s, p, entry)
        s.record({k: v for k, v in entry.items() if k != "result"})
    return failed


def _finish_part_json(s: Session, p: Part, entry: dict[str, Any]) -> None:
    """OUT/PART.json: the benchmark's own document (where it wrote one) with the session's entry added,
    or the entry and its result alone."""
    path = s.out / f"{p.name}.json"
    doc = _read_json(path) or {}
    if entry.get("result") is not None:
        doc.setdefault("results", entry["result"])
    doc["session"] = {k: v for k, v in entry.items() if k != "result"}
    doc.setdefault("benchmark", p.name)
    _write_json(path, doc)


# ---------------------------------------------------------------------- the train-step grid, preset first
def preset_first(variants_fn: Callable, preset, eager_fp32, only_these: bool = False) -> Callable:
    """``bench.train_step.variants`` with the GPU preset first and eager fp32 at its batch second
    (the headline ratio needs both), the rest in their own order (none with ``only_these``); the
    preset is added if the grid lacks it."""
    first = list(dict.fromkeys([preset, eager_fp32]))  # one row where the preset is eager fp32

    def ordered(device, quick, batch_sizes):
        keep, skipped = variants_fn(device, quick, batch_sizes)
        rest = [] if only_these else [v for v in keep if v not in first]
        skipped = [x for x in skipped if x["variant"] not in {v.label for v in first}]
        return [*first, *rest], skipped

    return ordered


def step_grid(json_path: str, budget: float, dry_run: bool, config: str) -> None:
    import torch

    import bench.train_step as ts
    from bench.input_efficiency import trainer_variant
    from pipeline.loader import resolve_device

    device = resolve_device(None)
    preset, _ = trainer_variant(device, config=config)
    eager_fp32 = ts.Variant("eager", "off", "torch", preset.batch_size)
    ts.variants = preset_first(ts.variants, preset, eager_fp32, only_these=dry_run)
    batch_sizes = [preset.batch_size] if dry_run else None
    torch.manual_seed(0)
    ts.run(quick=dry_run, json_path=json_path, batch_sizes=batch_sizes, budget_s=budget)


@cli_entry
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.gpu_session", description=__doc__.split("\n\n")[0])
    p.add_argument("mode", choices=["quick", "dali", "step-grid"],
                   help="quick: everything that needs no DALI; dali: DALI's decode sweep and input efficiency")
    p.add_argument("--budget", type=float, default=None, metavar="SECONDS",
                   help="skip any part that would end after this (default: 345 for quick, 300 for dali, 110 dry)")
    p.add_argument("--out", default=None, help="JSON and logs (default bench_out/gpu-MODE)")
    p.add_argument("--data", default=None, help="the synthetic set's folder (default $HOME/gpu-session-data; "
                                               "OUT/data with --dry-run); shards already there are reused")
    p.add_argument("--dry-run", action="store_true", help="every part at toy size, on a CPU in under 2 minutes")
    p.add_argument("--config", default="configs/gpu.json",
                   help="the GPU preset: config keys layered over config.json (default configs/gpu.json)")
    p.add_argument("--no-overlap", action="store_true",
                   help="make the data set in the foreground before train instead of behind the GPU parts")
    p.add_argument("--json", default=None, help=argparse.SUPPRESS)  # step-grid's
    a = p.parse_args(argv)
    if a.mode == "step-grid":
        step_grid(a.json, a.budget or 60.0, a.dry_run, a.config)
        return 0
    if a.budget is not None and a.budget <= 0:
        raise UserError(f"--budget must be > 0 seconds, got {a.budget}")
    out = Path(a.out or f"bench_out/gpu-{a.mode}").resolve()
    data = Path(a.data).resolve() if a.data else (out / "data" if a.dry_run else Path.home() / "gpu-session-data")
    budget = a.budget or (110.0 if a.dry_run else 345.0 if a.mode == "quick" else 300.0)
    s = Session(a.mode, out, data, budget, a.dry_run, config=a.config, overlap=not a.no_overlap)
    return run_session(s)


if __name__ == "__main__":
    raise SystemExit(main())
