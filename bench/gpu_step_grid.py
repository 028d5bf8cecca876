"""bench.train_step's grid with the GPU preset first: the part ``train_step`` of the GPU session.

    python -m bench.gpu_step_grid --json OUT --budget SECONDS [--config configs/gpu.json] [--dry-run]

The preset (configs/gpu.json as train.py would resolve it on this device) runs first and eager fp32 at
its batch second, so that a budget that allows two variants still gives the headline ratio; then the
rest of bench.train_step's grid in its own order, no new variant after ``--budget`` seconds.
"""
from __future__ import annotations

import argparse
from typing import Callable

from pipeline.errors import cli_entry


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
    p = argparse.ArgumentParser(prog="python -m bench.gpu_step_grid", description=__doc__.split("\n\n")[0])
    p.add_argument("--json", required=True, help="rewritten after every variant")
    p.add_argument("--budget", type=float, required=True, metavar="SECONDS", help="no new variant after this")
    p.add_argument("--config", default="configs/gpu.json", help="the preset (default configs/gpu.json)")
    p.add_argument("--dry-run", action="store_true", help="the preset and eager fp32 only, at the preset's batch")
    a = p.parse_args(argv)
    step_grid(a.json, a.budget, a.dry_run, a.config)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
