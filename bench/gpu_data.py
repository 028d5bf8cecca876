"""A synthetic CelebA-layout set as large as a fixed generation time allows, sharded.

A GPU measurement must fit a fixed budget, so the data set is sized by time, not by count: a small
calibration run measures this machine's drawing rate on all its cores, and the real run draws as
many faces as fit the remaining seconds (at most CelebA's 202,599), then preshard validates and
shards them. The JSON states the count and every phase's seconds.

    python -m bench.gpu_data --out DIR [--seconds 90] [--max-images 202599] [--images N] [--json OUT]
"""
from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path
from typing import Any

from bench.common import save_json
from pipeline.errors import UserError, cli_entry

#: CelebA's size: more faces than this would not make the set more like the one the targets are about.
CELEBA_IMAGES = 202_599
#: Faces per worker in the two calibration runs.
CALIBRATION_PER_WORKER = (16, 64)


def build(out: str | Path, seconds: float, *, max_images: int = CELEBA_IMAGES, workers: int | None = None,
          json_path: str | Path | None = None, min_images: int = 64, images: int | None = None) -> dict[str, Any]:
    """Draw ≈ ``seconds`` worth of faces into OUT/celeba, shard them into OUT/shards; return the JSON doc.
    ``images``: that many instead, without calibrating (toy runs, where the size must not vary).

    An OUT/shards from an earlier call is reused as it is (its manifest says how many images it
    holds): a rerun of a cut-short measurement then spends no time on data."""
    from pipeline.parallel import usable_cores
    from pipeline.preshard import preshard
    from pipeline.synthetic import write_synthetic_celeba

    out = Path(out)
    shards = out / "shards"
    workers = workers or usable_cores()
    settings = {"seconds": seconds, "max_images": max_images, "workers": workers, "out": str(out)}
    if (shards / "manifest.json").is_file():
        return save_json(json_path, "gpu_data", {**_counts(shards), "shards": str(shards), "reused": True}, settings)

    # Two calibration runs, small and larger: their difference is the drawing rate without the pool's
    # start-up (spawning the workers costs about a second), which one run alone would count as drawing.
    t0 = time.perf_counter()
    probes = []
    for per_worker in CALIBRATION_PER_WORKER if images is None else ():
        n_probe = min(max_images, per_worker * workers)
        t = time.perf_counter()
        write_synthetic_celeba(out / "calibration", n_probe, workers=workers)
        probes.append((n_probe, time.perf_counter() - t))
        shutil.rmtree(out / "calibration")
    probe_s = time.perf_counter() - t0
    if images is None:
        (n1, s1), (n2, s2) = probes
        rate = (n2 - n1) / (s2 - s1) if n2 > n1 and s2 > s1 else n2 / s2
        start_up = max(0.0, s1 - n1 / rate)
        n = int(min(max_images, max(min_images, rate * (seconds - probe_s - start_up))))
    else:
        rate, start_up, n = None, None, images

    t1 = time.perf_counter()
    tree = write_synthetic_celeba(out / "celeba", n, workers=workers)
    draw_s = time.perf_counter() - t1
    t2 = time.perf_counter()
    preshard(tree, shards, workers=workers, progress=False)
    preshard_s = time.perf_counter() - t2
    results = {**_counts(shards), "shards": str(shards), "reused": False, "images_drawn": n,
               "calibration": [{"images": c, "s": t} for c, t in probes], "calibration_s": probe_s,
               "rate_estimate": rate, "start_up_estimate_s": start_up, "draw_s": draw_s,
               "generation_s": probe_s + draw_s, "images_per_s_drawn": n / draw_s, "preshard_s": preshard_s}
    return save_json(json_path, "gpu_data", results, settings)


def _counts(shards: Path) -> dict[str, Any]:
    import json

    manifest = json.loads((shards / "manifest.json").read_text())
    splits = {name: split["count"] for name, split in manifest["splits"].items()}
    return {"images": sum(splits.values()), "split_images": splits}


@cli_entry
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.gpu_data", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="folder for celeba/ (the JPEG tree) and shards/")
    p.add_argument("--seconds", type=float, default=90.0, help="generation time to fill (default 90)")
    p.add_argument("--max-images", type=int, default=CELEBA_IMAGES)
    p.add_argument("--images", type=int, default=None, help="draw this many instead (no calibration, no time limit)")
    p.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    p.add_argument("--json", default=None)
    a = p.parse_args(argv)
    if a.seconds <= 0 or a.max_images < 3 or (a.images is not None and a.images < 3):
        raise UserError("--seconds must be > 0, --max-images and --images ≥ 3")
    doc = build(a.out, a.seconds, max_images=a.max_images, workers=a.workers, json_path=a.json, images=a.images)
    r = doc["results"]
    print(f"synthetic set: {r['images']:,} images ({r['split_images']}) in {r['shards']}"
          + ("" if r["reused"] else f"; drawn in {r['generation_s']:.1f} s, sharded in {r['preshard_s']:.1f} s"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
