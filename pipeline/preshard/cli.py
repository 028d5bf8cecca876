"""``python -m pipeline.preshard`` / ``celeba-preshard``: arguments in, a summary table out.

Only argument parsing and printing live here; the work is :func:`pipeline.preshard.run.preshard`.
A UserError ends the program with one ``error:`` line and exit code 2 (see ``cli_entry``);
``--celeba`` and ``--images`` exclude each other, which argparse enforces (also exit code 2).
"""
from __future__ import annotations

import argparse
import time
from typing import Sequence

from ..errors import cli_entry
from ..layout import SPLITS
from ..limits import check_count, check_number, check_workers
from .run import empty_split_notes, preshard


@cli_entry(resumable=True)
def main(argv: Sequence[str] | None = None) -> int:
    """CLI: ``python -m pipeline.preshard (--celeba SRC | --images DIR) --out OUT [--shard-mb 100] ...``."""
    from rich.console import Console
    from rich.table import Table

    parser = argparse.ArgumentParser(prog="python -m pipeline.preshard",
                                     description="Shard CelebA (folder or zip) or any folder of face images into "
                                                 "WebDataset tars with DALI index files.")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--celeba", help="CelebA folder (img_align_celeba/ or .zip + list files) or the zip")
    source.add_argument("--images", metavar="DIR",
                        help="any folder of .jpg/.jpeg/.png/.webp images (searched recursively; no attributes)")
    parser.add_argument("--val", type=float, default=None,
                        help="--images: share of images in val, by a hash of each path (default 0.05)")
    parser.add_argument("--test", type=float, default=None,
                        help="--images: share of images in test, by a hash of each path (default 0.05)")
    parser.add_argument("--out", required=True, help="output directory for {train,val,test}/*.tar and manifest.json")
    parser.add_argument("--shard-mb", type=float, default=100.0, help="target shard size in MB (default 100)")
    parser.add_argument("--max-samples", type=int, default=None, help="also close a shard after N samples")
    parser.add_argument("--seed", type=int, default=0, help="seed of the train-order shuffle (not of the split)")
    parser.add_argument("--workers", type=int, default=None, help="validation processes (default: all cores)")
    parser.add_argument("--on-bad", choices=("skip", "error"), default="skip",
                        help="bad image: skip it (listed in the manifest) or stop with an error")
    args = parser.parse_args(argv)
    check_number("--shard-mb", args.shard_mb, 0.066, 100_000, "64 KiB to 100 GB per tar; 100 suits DALI")
    if args.max_samples is not None:
        check_count("--max-samples", args.max_samples, 1, 1_000_000, "per shard; the byte budget closes it long before")
    check_workers("--workers", args.workers)

    console = Console()
    t0 = time.perf_counter()
    kind, src = ("celeba", args.celeba) if args.celeba is not None else ("images", args.images)
    manifest = preshard(src, args.out, kind=kind, val=args.val, test=args.test,
                        shard_bytes=int(args.shard_mb * 1_000_000), max_samples_per_shard=args.max_samples,
                        seed=args.seed, workers=args.workers, on_bad=args.on_bad, progress=True)
    dt = time.perf_counter() - t0

    table = Table(title=f"preshard → {args.out}")
    for col in ("split", "samples", "shards", "MB", "skipped"):
        table.add_column(col, justify="left" if col == "split" else "right")
    for split in SPLITS:
        info = manifest["splits"].get(split, {"count": 0, "shards": []})
        n_skip = sum(1 for s in manifest["skipped"] if s["split"] == split)
        table.add_row(split, f"{info['count']:,}", str(len(info["shards"])),
                      f"{sum(s['bytes'] for s in info['shards']) / 1e6:,.1f}", str(n_skip))
    total = sum(v["count"] for v in manifest["splits"].values())
    table.caption = f"{total:,} images in {dt:.1f} s ({total / max(dt, 1e-9):,.0f} images/s)"
    console.print(table)
    if manifest["skipped"]:
        bad = Table(title=f"skipped {len(manifest['skipped'])} bad image(s) (listed in manifest.json)")
        bad.add_column("file")
        bad.add_column("split")
        bad.add_column("reason")
        for s in manifest["skipped"][:20]:
            name = s.get("file", s["key"]).encode("utf-8", "surrogateescape").decode("utf-8", "replace")
            bad.add_row(name, s["split"], s["reason"])
        if len(manifest["skipped"]) > 20:
            bad.caption = f"… and {len(manifest['skipped']) - 20} more"
        console.print(bad)
    for note in empty_split_notes(manifest):
        console.print(f"[yellow]{note}[/]", highlight=False)
    return 0
