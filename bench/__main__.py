"""The whole bench suite: "is my GPU busy, and what is holding it back?"

    python -m bench [--shards DIR | --synthetic-images N] [--quick] [--json OUT] [--out DIR] [--only PART ...]

Parts: loader (images/s per decode path), loss (eager vs compiled vs fused), train_step
(device-resident upper bound, MFU), input (loader-fed vs resident, GPU utilization, epoch time),
profile (Chrome trace, top kernels, GPU idle share). Each prints its own table; a summary compares
the figures with the targets for one H100. Without --shards, a synthetic set is generated under
--out once and reused: 6,000 images by default, ``--synthetic-images 202599`` for one of CelebA's
size (train split 162,770), on which the input part measures a real epoch instead of scaling one.
"""
from __future__ import annotations

import argparse
import importlib
import time
from pathlib import Path
from typing import Any, Callable

from bench.common import print_table, save_json
from pipeline.errors import DataError, cli_entry
from pipeline.limits import check_count, check_number
from pipeline.loader import resolve_device

PARTS = ("loader", "loss", "train_step", "input", "profile")

#: Synthetic set generated when no --shards is given (big enough for a few epochs of the quick parts).
DEFAULT_SYNTHETIC_IMAGES = {True: 1200, False: 6000}


def default_shards(out_dir: Path, quick: bool, n: int | None = None) -> Path:
    """Synthetic CelebA shards of ``n`` images under ``out_dir``, generated once (reused if there)."""
    from model.training.data import synthetic_shards

    n = n or DEFAULT_SYNTHETIC_IMAGES[quick]
    return synthetic_shards(out_dir / f"synthetic-{n}", out_dir / f"shards-{n}", n, seed=0)


def _part_runners(shards: Path, out_dir: Path, quick: bool, device: str | None, batch_size: int | None,
                  loader_max_images: int | None, train_step_budget: float | None,
                  train_step_batch_sizes: list[int] | None = None) -> dict[str, Callable[[], dict]]:
    def call(module: str, *args, **kwargs) -> Callable[[], dict]:
        return lambda: importlib.import_module(f"bench.{module}").run(*args, **kwargs)

    return {
        "loader": call("loader", shards, quick=quick, device=device, max_images=loader_max_images),
        "loss": call("loss", quick=quick),
        "train_step": call("train_step", quick=quick, device=device, budget_s=train_step_budget,
                           batch_sizes=train_step_batch_sizes),
        "input": call("input_efficiency", shards, quick=quick, device=device, batch_size=batch_size),
        "profile": call("profile", shards, quick=quick, out_dir=out_dir, device=device, batch_size=batch_size),
    }


def summarize(docs: dict[str, dict[str, Any]], on_gpu: bool) -> list[dict[str, Any]]:
    """The issue's targets for one H100, next to what this run measured. "met" is None where nothing
    was measured, and everywhere off the GPU: a CPU figure says nothing about an H100 target."""
    rows: list[dict[str, Any]] = []

    def add(name: str, value: Any, target: str, ok: bool | None) -> None:
        rows.append({"measure": name, "value": value, "target (H100)": target, "met": ok if on_gpu else None})

    inp = docs.get("input", {}).get("results")
    if inp:
        eff = inp["input_efficiency"]  # the last epoch's: with a cache, a cached one
        cached = inp.get("epochs", [{}])[-1].get("reads") == "cache"
        if cached:
            first = inp["first_epoch_input_efficiency"]
            add("input efficiency, first epoch (decode + fill)", round(first, 3), "≥ 0.95", first >= 0.95)
            add("input efficiency, cached epochs", round(eff, 3), "≥ 0.98", eff >= 0.98)
        else:
            add("input efficiency (loader-fed ÷ resident)", round(eff, 3), "≥ 0.95", eff >= 0.95)
        util = inp["gpu_util_mean_pct"]
        add("GPU utilization, mean %", util, "≥ 90 %", None if util is None else util >= 90)
        sec = inp["celeba_epoch_seconds"]
        how = "measured" if inp["celeba_epoch_measured"] else "scaled from a smaller split"
        limit = 3 if cached else 10
        add(f"CelebA train epoch{', cached' if cached else ''} (162,770 images), s ({how})", round(sec, 1),
            f"< {limit} s", sec < limit)
    prof = docs.get("profile", {}).get("results")
    if prof:
        gpu = prof.get("gpu")
        add("GPU busy share of profiled steps", None if gpu is None else round(gpu["busy_share"], 3), "≥ 0.90",
            None if gpu is None else gpu["busy_share"] >= 0.90)
    ts = docs.get("train_step", {}).get("results")
    if ts:
        for key, ratio in sorted(ts.get("speedups", {}).items()):
            add(key.replace("_", " "), round(ratio, 2), "≥ 2× at B=256", ratio >= 2 if key.endswith("@B256") else None)
    return rows


def run(shards: str | Path | None = None, quick: bool = False, json_path: str | None = None,
        out_dir: str | Path = "bench_out", only: list[str] | None = None, device: str | None = None,
        batch_size: int | None = None, synthetic_images: int | None = None, loader_max_images: int | None = None,
        train_step_budget: float | None = None, train_step_batch_sizes: list[int] | None = None) -> dict[str, Any]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if shards is None:
        shards = default_shards(out_dir, quick, synthetic_images)
    shards = Path(shards)
    if not (shards / "manifest.json").exists():
        raise DataError(f"{shards} holds no manifest.json: point --shards at preshard's output folder")
    runners = _part_runners(shards, out_dir, quick, device, batch_size, loader_max_images, train_step_budget,
                            train_step_batch_sizes)
    docs, seconds = {}, {}
    for part in only or PARTS:
        t0 = time.perf_counter()
        docs[part] = runners[part]()
        seconds[part] = time.perf_counter() - t0
    import torch

    on_gpu = resolve_device(device).type == "cuda"
    summary = summarize(docs, on_gpu)
    print_table("summary: measured vs the targets for one H100", ["measure", "value", "target (H100)", "met"],
                [(r["measure"], r["value"], r["target (H100)"], {True: "yes", False: "no", None: "—"}[r["met"]])
                 for r in summary],
                caption=("" if on_gpu else "CPU run: targets are for one H100 and are not judged here; ")
                + "parts ran for " + ", ".join(f"{p} {s:.0f} s" for p, s in seconds.items()))
    results = {"summary": summary, "parts": {p: d.get("results") for p, d in docs.items()},
               "part_settings": {p: d.get("settings") for p, d in docs.items()}, "seconds": seconds}
    return save_json(json_path, "suite", results, {"shards": str(shards), "quick": quick, "parts": list(docs),
                                                   "device": device, "batch_size": batch_size,
                                                   "loader_max_images": loader_max_images,
                                                   "train_step_budget_s": train_step_budget,
                                                   "train_step_batch_sizes": train_step_batch_sizes})


@cli_entry
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--shards", default=None, help="preshard's output folder (default: generate a synthetic set)")
    p.add_argument("--synthetic-images", type=int, default=None, metavar="N",
                   help="size of the generated set without --shards (default 6,000; 1,200 with --quick; "
                        "202599 for CelebA's size)")
    p.add_argument("--loader-max-images", type=int, default=None, metavar="N",
                   help="loader part: stop each timed epoch after N images (a CelebA-sized split would take "
                        "minutes per epoch on the 1-thread CPU paths)")
    p.add_argument("--train-step-budget", type=float, default=None, metavar="SECONDS",
                   help="train_step part: start no new variant after this many seconds")
    p.add_argument("--train-step-batch-sizes", type=int, nargs="+", default=None, metavar="B",
                   help="train_step part: batch sizes of its grid (default: the part's own, e.g. 64 256 1024 "
                        "on CUDA, 32 with --quick on CPU)")
    p.add_argument("--quick", action="store_true", help="a CPU smoke run of a minute or two")
    p.add_argument("--json", default=None, help="write all results here")
    p.add_argument("--out", default="bench_out", help="folder for the trace and generated data")
    p.add_argument("--only", nargs="+", choices=PARTS, default=None, help="run only these parts")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda if available)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="training batch of the input and profile parts (default: config.json's)")
    a = p.parse_args(argv)
    if a.shards is not None and a.synthetic_images is not None:
        p.error("--synthetic-images generates a set: it cannot be combined with --shards")
    if a.synthetic_images is not None and a.synthetic_images < 3:
        p.error("--synthetic-images needs at least 3 images (one per split)")
    if a.train_step_batch_sizes is not None and min(a.train_step_batch_sizes) < 1:
        p.error("--train-step-batch-sizes must be at least 1")
    # Upper bounds too: a count without one is a run that goes until killed (pipeline/limits.py).
    if a.synthetic_images is not None:
        check_count("--synthetic-images", a.synthetic_images, 3, 999_999, "CelebA file names have six digits")
    for option, value in (("--loader-max-images", a.loader_max_images), ("--batch-size", a.batch_size),
                          *(("--train-step-batch-sizes", b) for b in a.train_step_batch_sizes or ())):
        if value is not None:
            check_count(option, value, 1, 1_000_000 if option == "--loader-max-images" else 65_536)
    if a.train_step_budget is not None:
        check_number("--train-step-budget", a.train_step_budget, 0, 86_400, "seconds: a day at most")
    run(a.shards, a.quick, a.json, a.out, a.only, a.device, a.batch_size, a.synthetic_images,
        a.loader_max_images, a.train_step_budget, a.train_step_batch_sizes)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
