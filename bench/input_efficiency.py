"""Input efficiency: is the training loop fed as fast as it can eat?

The trainer's configuration (config.json, "auto" values resolved for this device) runs the same
step twice: fed by ``pipeline.make_loader`` from the shards, and on one device-resident batch.
efficiency = images/s(loader-fed) ÷ images/s(resident); 1.0 means the input pipeline costs nothing.
GPU utilization is sampled with NVML during the loader-fed run, and the loader alone (no model) is
timed to show the pipeline's own ceiling.

With the decoded-image cache (config key ``cache``) the first epoch decodes and fills it and later
epochs read it: each epoch gets its own row, and the headline efficiency is the last (steady) one.

    python -m bench.input_efficiency --shards DIR [--quick] [--cache auto|none|host|device] [--epochs 2] [--json OUT]
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import torch

from bench.common import print_table, save_json, sync
from model.training.observe import GpuUtilSampler
from bench.train_step import Variant, build_harness, resident_batch
from pipeline.errors import ConfigError, DataError, cli_entry
from pipeline.limits import check_count
from pipeline.loader import resolve_device

#: Images in CelebA's train split: the epoch the issue's "< 10 s per epoch" target is about.
CELEBA_TRAIN_IMAGES = 162_770


def trainer_variant(device: torch.device, batch_size: int | None = None,
                    config: str | Path | None = None) -> tuple[Variant, dict[str, Any]]:
    """The variant train.py would run on ``device`` with config.json's defaults, or with the keys of
    ``config`` (e.g. configs/gpu.json) layered over them."""
    from kernels import resolve_impl
    from model.training.config import read_config_file
    from model.training.runtime import resolve_runtime

    cfg = read_config_file(config)
    rt = resolve_runtime(cfg, device=device)
    loss = resolve_impl(cfg["loss_impl"], device)
    return Variant(rt.compile_mode if rt.compile else "eager", rt.amp, loss, batch_size or cfg["batch_size"]), cfg


def train_loader(shards: Path, v: Variant, runtime: Any, cfg: dict[str, Any], backend: str = "auto"):
    """The trainer's own train loader (``model.training.data.open_loader``) at this variant's batch size."""
    from model.training.data import open_loader

    return open_loader({**cfg, "batch_size": v.batch_size, "backend": backend}, runtime, shards, "train", train=True)


def _timed_epoch(batches, step, max_steps: int | None, warmup: int, device: torch.device,
                 sampler: GpuUtilSampler | None = None) -> tuple[float, int, int, float]:
    """Run ``step`` over ``batches``; returns (seconds, images, steps) after the first ``warmup`` steps,
    and the wall time of the whole pass, from ``iter()`` (a shuffled DALI epoch rebuilds its
    pipeline there) to the last step's completion. A pass cut short by ``max_steps`` is read to
    its end untimed: a filling epoch must reach its end to fill the cache."""
    sync(device)
    begin = time.perf_counter()
    t0, images, steps = None, 0, 0
    it = iter(batches)
    for i, x in enumerate(it):
        if i == warmup:
            sync(device)
            if sampler is not None:
                sampler.reset()
            t0 = time.perf_counter()
        step(x)
        if i >= warmup:
            images += x.shape[0]
            steps += 1
        if max_steps is not None and i + 1 >= warmup + max_steps:
            break
    sync(device)
    end = time.perf_counter()
    for _ in it:
        pass
    if t0 is None or steps == 0:
        raise DataError("the train split is too small for the warm-up steps: use more data or a smaller --batch-size")
    return end - t0, images, steps, end - begin


def run(shards: str | Path, quick: bool = False, json_path: str | None = None, device: str | None = None,
        batch_size: int | None = None, backend: str = "auto", print_results: bool = True, cache: str | None = None,
        epochs: int = 2, config: str | Path | None = None) -> dict[str, Any]:
    """Resident vs loader-fed for ``epochs`` epochs: with a cache the first decodes and fills it, the
    later ones read it. ``cache``: None → the config's (``config`` over config.json)."""
    shards = Path(shards)
    device = resolve_device(device)
    v, cfg = trainer_variant(device, batch_size, config)
    cache = cfg["cache"] if cache is None else cache
    warmup = 2 if quick else 10
    max_steps = 4 if quick else None  # None: the whole train split, which gives the epoch time too

    h = build_harness(v, device)
    # Resident: the same number of steps as the loader-fed run will take, on one batch.
    x = resident_batch(v.batch_size, device, h.runtime.channels_last)
    loader = train_loader(shards, v, h.runtime, {**cfg, "cache": cache}, backend)
    n_steps = len(loader) - warmup if max_steps is None else max_steps
    if n_steps < 1:
        raise DataError(f"train split has {len(loader)} batches of {v.batch_size}: need more than {warmup}")

    def resident_ips() -> float:
        seconds, images, _, _ = _timed_epoch((x for _ in range(warmup + n_steps)), h.step, n_steps, warmup, device)
        return images / seconds

    # Resident runs before and after the loader-fed ones, averaged: clock or load drift during the
    # run then biases neither side of the ratio.
    before = resident_ips()
    rows = []
    for epoch in range(epochs):
        loader.set_epoch(epoch)
        reads = "cache" if loader.filled else ("decode" if loader.cache == "none" else "decode + fill")
        with GpuUtilSampler(device.index or 0) as sampler:
            fed_s, fed_images, fed_steps, fed_wall_s = _timed_epoch(loader, h.step, max_steps, warmup, device, sampler)
        rows.append({"epoch": epoch, "reads": reads, "images_per_s": fed_images / fed_s, "wall_s": fed_wall_s,
                     "steps_timed": fed_steps, "gpu_util_mean_pct": sampler.mean,
                     "gpu_busy_fraction": sampler.busy_fraction, "gpu_util_note": sampler.reason})
    after = resident_ips()
    loader.set_epoch(epochs)
    loader_only_s, loader_only_images, _, _ = _timed_epoch(loader, lambda b: None, max_steps, warmup, device)
    backend_used, cache_used = loader.backend, loader.cache
    cache_mb = loader.cache_bytes / 1e6
    loader.close()

    resident_ips = (before + after) / 2
    for row in rows:
        row["input_efficiency"] = row["images_per_s"] / resident_ips
    last = rows[-1]  # the steady state: what every later epoch of a run costs
    # A full pass scales to CelebA's train split (exactly, when the shards are CelebA-sized);
    # a --quick run can only extrapolate its steady-state rate.
    full = max_steps is None
    split_images = loader.split.count
    celeba_epoch = last["wall_s"] * CELEBA_TRAIN_IMAGES / split_images if full else CELEBA_TRAIN_IMAGES / last["images_per_s"]
    celeba_measured = full and split_images == CELEBA_TRAIN_IMAGES
    results = {
        "variant": v.label, "backend": backend_used, "cache": cache_used, "cache_mb": cache_mb,
        "resident_images_per_s": resident_ips, "resident_before_after": [before, after],
        "epochs": rows,
        "loader_fed_images_per_s": last["images_per_s"],
        "loader_only_images_per_s": loader_only_images / loader_only_s,
        "input_efficiency": last["input_efficiency"],
        "first_epoch_input_efficiency": rows[0]["input_efficiency"],
        "gpu_util_mean_pct": last["gpu_util_mean_pct"], "gpu_busy_fraction": last["gpu_busy_fraction"],
        "gpu_util_note": last["gpu_util_note"],
        "steps_timed": last["steps_timed"],
        "train_images": split_images,
        # Only a full pass over the split is an epoch time (pipeline rebuild and warm-up steps
        # included); --quick measures a few steps.
        "epoch_seconds": last["wall_s"] if full else None,
        "celeba_epoch_seconds": celeba_epoch,
        "celeba_epoch_measured": celeba_measured,
    }
    settings = {"shards": str(shards), "device": str(device), "quick": quick, "warmup_steps": warmup,
                "batch_size": v.batch_size, "backend": backend, "cache": cache, "epochs": epochs,
                "config": None if config is None else str(config)}
    if print_results:
        util = last["gpu_util_mean_pct"]
        print_table(
            f"input efficiency ({device}, {v.label}, loader {backend_used}, cache {cache_used})",
            ["measure", "value"],
            [("resident data, images/s", resident_ips)]
            + [(f"epoch {r['epoch']} ({r['reads']}), images/s · efficiency",
                f"{r['images_per_s']:,.0f} · {r['input_efficiency']:.3f}") for r in rows]
            + [("loader alone, images/s", results["loader_only_images_per_s"]),
               ("cache, MB", cache_mb),
               ("GPU utilization, mean %", util if util is not None else f"n/a ({last['gpu_util_note']})"),
               ("GPU ≥ 90 % busy, share of samples", results["gpu_busy_fraction"]),
               (f"epoch over these shards ({split_images:,} images), s", results["epoch_seconds"]),
               (f"CelebA epoch ({CELEBA_TRAIN_IMAGES:,} images), s, "
                + ("measured" if celeba_measured else "scaled from this run"), celeba_epoch)],
        )
    return save_json(json_path, "input_efficiency", results, settings)


@cli_entry
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.input_efficiency", description=__doc__.split("\n\n")[0])
    p.add_argument("--shards", required=True, help="preshard's output folder")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--batch-size", type=int, default=None, help="default: the config's batch_size")
    p.add_argument("--backend", default="auto", choices=["auto", "dali", "webdataset"])
    p.add_argument("--cache", default=None, choices=["auto", "none", "host", "device"],
                   help="decoded-image cache (default: config.json's)")
    p.add_argument("--epochs", type=int, default=2, help="loader-fed epochs: the first fills the cache (default 2)")
    p.add_argument("--device", default=None)
    p.add_argument("--config", default=None, help="a config file layered over config.json (e.g. configs/gpu.json)")
    p.add_argument("--json", default=None)
    a = p.parse_args(argv)
    if a.epochs < 1:
        raise ConfigError(f"--epochs must be >= 1, got {a.epochs}")
    check_count("--epochs", a.epochs, 1, 1000, "loader-fed epochs")  # upper bounds: pipeline/limits.py
    if a.batch_size is not None:
        check_count("--batch-size", a.batch_size, 1, 65_536)
    run(a.shards, a.quick, a.json, a.device, a.batch_size, a.backend, cache=a.cache, epochs=a.epochs,
        config=a.config)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
