"""Quality per second: training recipes of the seed's model compared at equal wall time.

    python -m bench.recipe [--seconds 120] [--only default,seed] [--repeats 1] [--shards DIR] [--out DIR]

Each recipe is a real ``train.py`` run with the same ``--train_seconds`` budget, data and seed: the budget
is turned into steps by the run's own timing (docs/training.md), so a recipe with a smaller batch trains more
and shorter steps in the same time. The architecture and the loss (SSE + β·KL, β = 1) are the same in all;
only the optimisation differs. The table ranks the recipes by test PSNR through μ (evaluation.json) and shows
the steps each budget bought, its images/s, wall time and the error outside the face against inside it. On a
shared machine run nothing beside it: the budget is wall time, so a busy neighbour buys fewer steps.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.common import print_table, save_json
from pipeline.errors import DataError, cli_entry
from pipeline.limits import check_count

ROOT = Path(__file__).resolve().parent.parent
#: name → (config overrides over config.json, what it is). "default" is config.json as it stands; "seed" is
#: the recipe the defaults had before the search (bench/RESULTS.md, "Quality per second").
RECIPES: dict[str, tuple[dict[str, Any], str]] = {
    "default": ({}, "config.json as it stands"),
    "seed": ({"batch_size": 64, "lr": 0.001, "lr_schedule": "cosine", "warmup_steps": 20, "min_lr_ratio": 0.1,
              "adam_betas": "0.9,0.999", "kl_warmup_steps": 200},
             "batch 64, lr 1e-3, cosine to 0.1, KL warm-up 200 steps"),
    "cosine": ({"lr_schedule": "cosine", "min_lr_ratio": 0.1}, "the default with the seed's cosine schedule"),
}
COLUMNS = ("recipe", "PSNR dB", "MSE/px (μ)", "steps", "batch", "img/s", "wall s", "outside/face")


def train_recipe(name: str, overrides: dict[str, Any], shards: Path, out: Path, seconds: float, repeat: int,
                 extra: list[str]) -> dict[str, Any]:
    """One train.py run of ``name`` under the budget; its evaluation and summary."""
    args = [a for k, v in overrides.items() for a in (f"--{k}", str(v))]
    run_dir = out / f"{name}-{repeat}"
    cmd = [sys.executable, str(ROOT / "train.py"), "--data", str(shards), "--out", str(run_dir), "--overwrite",
           "--train_seconds", str(seconds), "--seed", "0", *args, *extra]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        tail = (proc.stderr.strip() or proc.stdout.strip()).splitlines()[-1:] or ["(no output)"]
        raise DataError(f"bench.recipe: recipe {name} failed (exit {proc.returncode}): {tail[0]}")
    ev = json.loads((run_dir / "evaluation.json").read_text())
    summary = json.loads((run_dir / "summary.json").read_text())
    cfg = json.loads((run_dir / "config.json").read_text())
    regions = ev.get("regions") or {}
    return {"recipe": name, "repeat": repeat, "overrides": overrides, "wall_s": wall, "steps": summary["steps"],
            "batch_size": cfg["batch_size"], "images_per_s": summary["images_per_s"], "psnr_db": ev["psnr_db"],
            "mse_per_pixel": ev["mse_per_pixel"], "outside_over_face": regions.get("outside_to_face"),
            "evaluation": ev, "test": summary["test"]}


def table_rows(results: list[dict[str, Any]]) -> list[list[Any]]:
    return [[r["recipe"] + (f" #{r['repeat']}" if r["repeat"] else ""), r["psnr_db"], r["mse_per_pixel"], r["steps"],
             r["batch_size"], r["images_per_s"], r["wall_s"], r["outside_over_face"]]
            for r in sorted(results, key=lambda r: -r["psnr_db"])]


@cli_entry
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.recipe", description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=120.0, help="train_seconds of every run (%(default)s)")
    p.add_argument("--only", help=f"comma-separated recipes (default: all of {', '.join(RECIPES)})")
    p.add_argument("--repeats", type=int, default=1, help="runs per recipe, interleaved (%(default)s)")
    p.add_argument("--shards", type=Path, help="preshard output (default: the default run's synthetic shards)")
    p.add_argument("--out", type=Path, default=Path("bench_out/recipe"), help="run directories (%(default)s)")
    p.add_argument("--json", type=Path, help="write the results here (default: OUT/recipe.json)")
    args, extra = p.parse_known_args(argv)  # anything else goes to every train.py run, e.g. --amp off
    check_count("--repeats", args.repeats, 1, 100, "runs per recipe")
    if not 0 < args.seconds <= 86_400:
        raise DataError(f"--seconds must be in (0, 86400], got {args.seconds:g}")
    names = args.only.split(",") if args.only else list(RECIPES)
    unknown = [n for n in names if n not in RECIPES]
    if unknown:
        raise DataError(f"unknown recipe(s) {', '.join(unknown)}; choose from {', '.join(RECIPES)}")
    shards = args.shards
    if shards is None:
        from model.training.config import read_config_file
        from model.training.data import synthetic_shards

        cfg = read_config_file()
        shards = synthetic_shards(Path(cfg["synthetic_dir"]), Path(cfg["synthetic_shards"]), cfg["synthetic_images"])
    results = []
    for repeat in range(args.repeats):  # interleaved: a slow spell of the machine hits every recipe alike
        for name in names:
            print(f"bench.recipe: {name} ({args.seconds:g} s) …", flush=True)
            results.append(train_recipe(name, RECIPES[name][0], shards, args.out, args.seconds, repeat, extra))
    print_table(f"test PSNR at equal wall time ({args.seconds:g} s of train_seconds each)", COLUMNS,
                table_rows(results), caption="; ".join(f"{n}: {RECIPES[n][1]}" for n in names))
    save_json(args.json or args.out / "recipe.json", "recipe", results,
              {"seconds": args.seconds, "recipes": names, "repeats": args.repeats, "extra": extra,
               "shards": str(shards)})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
