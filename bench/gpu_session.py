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
import subprocess
import time
from pathlib import Path
from typing import Any

from bench.gpu_driver import (DRY_RUN_CONFIG, ROOT, Part, PartError, Session, _kill_group, _read_json, _write_json,
                              start_data_job)
from bench.gpu_parts import (part_dali_decode, part_dali_input, part_data_foreground, part_decode, part_graph_breaks,
                             part_kernel_tests, part_loss, part_profile, part_train, part_train_step)
from pipeline.errors import UserError, cli_entry


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


@cli_entry
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.gpu_session", description=__doc__.split("\n\n")[0])
    p.add_argument("mode", choices=["quick", "dali"],
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
    a = p.parse_args(argv)
    if a.budget is not None and a.budget <= 0:
        raise UserError(f"--budget must be > 0 seconds, got {a.budget}")
    out = Path(a.out or f"bench_out/gpu-{a.mode}").resolve()
    data = Path(a.data).resolve() if a.data else (out / "data" if a.dry_run else Path.home() / "gpu-session-data")
    budget = a.budget or (110.0 if a.dry_run else 345.0 if a.mode == "quick" else 300.0)
    s = Session(a.mode, out, data, budget, a.dry_run, config=a.config, overlap=not a.no_overlap)
    return run_session(s)


if __name__ == "__main__":
    raise SystemExit(main())
