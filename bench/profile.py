"""Profiler: where does a training step's time go, and how long does the GPU sit idle?

``torch.profiler`` records N steps of the real loop (the trainer's step fed by
``pipeline.make_loader``), exports a Chrome trace (open it in chrome://tracing or Perfetto), and
summarizes the top operators / kernels by self time. On CUDA the GPU idle share is computed from
the trace itself: 1 − (union of kernel and memcpy intervals) ÷ (wall span of the profiled steps).

    python -m bench.profile --shards DIR [--steps 10] [--out DIR] [--json OUT] [--config FILE] [--backend B]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch

from bench.common import print_table, save_json, sync
from bench.input_efficiency import train_loader, trainer_variant
from bench.train_step import build_harness
from pipeline.errors import DataError, cli_entry
from pipeline.limits import check_count
from pipeline.loader import resolve_device

#: Trace event categories that occupy the GPU.
_GPU_CATEGORIES = {"kernel", "gpu_memcpy", "gpu_memset"}


def gpu_busy_from_trace(trace: dict[str, Any]) -> dict[str, float] | None:
    """GPU busy/idle share over the profiled steps, from a Chrome trace's events; None without GPU events."""
    events = trace.get("traceEvents", [])
    steps = [e for e in events if e.get("ph") == "X" and str(e.get("name", "")).startswith("ProfilerStep#")]
    gpu = sorted((float(e["ts"]), float(e["ts"]) + float(e.get("dur", 0))) for e in events
                 if e.get("ph") == "X" and e.get("cat") in _GPU_CATEGORIES)
    if not gpu:
        return None
    start = min(float(e["ts"]) for e in steps) if steps else gpu[0][0]
    end = max(float(e["ts"]) + float(e["dur"]) for e in steps) if steps else gpu[-1][1]
    busy = merged_length([(max(a, start), min(b, end)) for a, b in gpu if b > start and a < end])
    span = max(end - start, 1e-9)
    return {"span_ms": span / 1e3, "busy_ms": busy / 1e3, "busy_share": busy / span, "idle_share": 1 - busy / span}


def merged_length(intervals: list[tuple[float, float]]) -> float:
    """Total length covered by possibly overlapping intervals (kernels on several streams overlap)."""
    total, cur_a, cur_b = 0.0, None, None
    for a, b in sorted(intervals):
        if cur_b is None or a > cur_b:
            if cur_b is not None:
                total += cur_b - cur_a
            cur_a, cur_b = a, b
        else:
            cur_b = max(cur_b, b)
    if cur_b is not None:
        total += cur_b - cur_a
    return total


def run(shards: str | Path, quick: bool = False, out_dir: str | Path = "bench_out", json_path: str | None = None,
        device: str | None = None, steps: int | None = None, top: int = 15, batch_size: int | None = None,
        print_results: bool = True, config: str | Path | None = None, backend: str = "auto") -> dict[str, Any]:
    from torch.profiler import ProfilerActivity, profile, schedule

    device = resolve_device(device)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    steps = steps or (3 if quick else 20)
    wait, warmup = (0, 1) if quick else (2, 3)
    v, cfg = trainer_variant(device, batch_size, config)
    h = build_harness(v, device)
    loader = train_loader(Path(shards), v, h.runtime, cfg, backend)
    if len(loader) < wait + warmup + steps:
        loader.close()
        raise DataError(f"the train split has {len(loader)} batches; profiling needs {wait + warmup + steps}: "
                        "use more data or fewer --steps")
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    trace_path = out_dir / "trace.json"
    captured: dict[str, Any] = {}

    def on_trace_ready(p) -> None:
        # Called once, at the end of the active window: events are cleared after it returns.
        p.export_chrome_trace(str(trace_path))
        captured["averages"] = p.key_averages()

    with profile(activities=activities, schedule=schedule(wait=wait, warmup=warmup, active=steps, repeat=1),
                 on_trace_ready=on_trace_ready, record_shapes=False) as prof:
        for i, x in enumerate(loader):
            h.step(x)
            if i + 1 == wait + warmup + steps:
                sync(device)  # the last active step's GPU work belongs inside the window
            prof.step()
            if i + 1 >= wait + warmup + steps:
                break
    loader.close()
    gpu = gpu_busy_from_trace(json.loads(trace_path.read_text())) if device.type == "cuda" else None

    sort_key = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    averages = captured["averages"]
    rows = []
    for evt in sorted(averages, key=lambda e: getattr(e, sort_key, 0.0), reverse=True)[:top]:
        rows.append({"name": evt.key, "calls": evt.count,
                     "self_ms": getattr(evt, sort_key, 0.0) / 1e3 / steps,
                     "self_cpu_ms": evt.self_cpu_time_total / 1e3 / steps})
    total_self = sum(getattr(e, sort_key, 0.0) for e in averages) / 1e3 / steps
    for r in rows:
        r["share"] = r["self_ms"] / total_self if total_self else None

    results = {"variant": v.label, "backend": loader.backend, "trace": str(trace_path), "steps": steps,
               "top": rows, "gpu": gpu, "sort_key": sort_key}
    settings = {"shards": str(shards), "device": str(device), "quick": quick, "steps": steps, "batch_size": v.batch_size,
                "wait": wait, "warmup": warmup, "config": None if config is None else str(config), "backend": backend,
                "cache": cfg["cache"]}
    if print_results:
        where = "GPU" if device.type == "cuda" else "CPU"
        caption = (f"GPU busy {100 * gpu['busy_share']:.1f} % / idle {100 * gpu['idle_share']:.1f} % of "
                   f"{gpu['span_ms']:.1f} ms" if gpu else "GPU idle share: n/a (no CUDA device)")
        print_table(f"profiler: top {len(rows)} by self {where} time per step ({v.label}, {loader.backend})",
                    ["operator / kernel", "calls", f"self {where} ms/step", "share %"],
                    [(r["name"][:70], r["calls"], r["self_ms"], None if r["share"] is None else 100 * r["share"])
                     for r in rows],
                    caption=f"{caption}; trace: {trace_path}")
    return save_json(json_path, "profile", results, settings)


@cli_entry
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__.split("\n\n")[0])
    p.add_argument("--shards", required=True, help="preshard's output folder")
    p.add_argument("--steps", type=int, default=None, help="profiled steps (default 20; 3 with --quick)")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out", default="bench_out", help="folder for trace.json")
    p.add_argument("--device", default=None)
    p.add_argument("--json", default=None)
    p.add_argument("--batch-size", type=int, default=None, help="default: the config's batch_size")
    p.add_argument("--config", default=None, help="a config file layered over config.json (e.g. configs/gpu.json)")
    p.add_argument("--backend", default="auto", choices=["auto", "dali", "webdataset"])
    a = p.parse_args(argv)
    for option, value, high in (("--steps", a.steps, 10_000), ("--batch-size", a.batch_size, 65_536)):
        if value is not None:  # upper bounds too: pipeline/limits.py
            check_count(option, value, 1, high)
    run(a.shards, a.quick, a.out, a.json, a.device, a.steps, batch_size=a.batch_size, config=a.config,
        backend=a.backend)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
