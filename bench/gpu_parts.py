"""The parts of the GPU session: each runs one benchmark (or train.py) as a subprocess and raises
PartError with one line when it fails."""
from __future__ import annotations

import gzip
import re
import shutil
from typing import Any

from bench.gpu_driver import (DRY_RUN_CONFIG, DRY_RUN_KERNEL_SUBSET, KERNEL_SUBSET, KERNEL_TESTS, STEP_ROOM, Part,
                              PartError, Session, _checked, _python, start_data_job)
from bench.gpu_readings import EpochWatcher, NvmlSampler, train_report

#: What the output folder keeps of the train part's run: everything but the checkpoints and pictures.
RUN_FILES = ("config.json", "metrics.jsonl", "summary.json", "evaluation.json", "training_log.png")


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
    argv = _python(s, "-m", "bench.gpu_step_grid", "--config", s.config,
                   "--json", str(s.out / "train_step.json"), "--budget", f"{max(1.0, limit - STEP_ROOM):.0f}")
    rc, _ = s.command(p.name, argv + (["--dry-run"] if s.dry_run else []), timeout=max(limit, p.least))
    _checked(rc, "the train-step grid")


def part_data_foreground(s: Session, p: Part) -> dict[str, Any] | None:
    start_data_job(s, nice=False)
    s.wait_for_data(s.left())
    return None


def part_train(s: Session, p: Part) -> dict[str, Any]:
    shards = s.wait_for_data(s.left() - p.least)
    # checkpoints (tens of MB) stay beside the data; the output folder gets the run's small files
    run_dir = s.data / "train_run"
    shutil.rmtree(run_dir, ignore_errors=True)  # a rerun's train.py would refuse a used run directory
    argv = _python(s, "train.py", "--config", s.config, "--data", str(shards), "--epochs", "3",
                   "--out", str(run_dir), "--backend", "webdataset")
    env = {"VAE_NO_PROBE": "1"} if s.dry_run else {}  # the dry run's config fixes amp; no probe of the step
    sampler = NvmlSampler()
    watcher = EpochWatcher(run_dir / "metrics.jsonl")
    with sampler, watcher:
        rc, out = s.command(p.name, argv, timeout=s.left(), env=env)
    cache = re.search(r"loader (\S+), cache (\S+)", out)
    result = train_report(run_dir, watcher.windows(), sampler, cache.group(2) if cache else None)
    keep = s.out / "train_run"
    keep.mkdir(exist_ok=True)
    for name in RUN_FILES:
        if (run_dir / name).is_file():
            shutil.copy2(run_dir / name, keep / name)
    _checked(rc, "train.py")
    return result


def part_profile(s: Session, p: Part) -> None:
    shards = s.wait_for_data(s.left() - p.least)
    trace_dir = s.data / "profile"  # a CUDA trace of 20 steps is tens of MB: the output folder gets it gzipped
    argv = _python(s, "-m", "bench.profile", "--shards", str(shards), "--config", s.config, "--backend",
                   "webdataset", "--out", str(trace_dir), "--json", str(s.out / "profile.json"))
    argv += ["--steps", "3", "--quick"] if s.dry_run else ["--steps", "20"]
    rc, _ = s.command(p.name, argv, timeout=s.left())
    _checked(rc, "bench.profile")
    with open(trace_dir / "trace.json", "rb") as src, gzip.open(s.out / "trace.json.gz", "wb") as dst:
        shutil.copyfileobj(src, dst)


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
