"""``python -m pipeline.synthetic`` / ``celeba-synthetic``: write a tree, print a summary table."""
from __future__ import annotations

import argparse
from typing import Sequence

from ..errors import cli_entry
from ..limits import check_count, check_workers
from .tree import partition_sizes, write_synthetic_celeba


@cli_entry(resumable=True)
def main(argv: Sequence[str] | None = None) -> int:
    """CLI: ``python -m pipeline.synthetic --out DIR --n N [--seed S] [--zip] [--workers W]``."""
    import time

    from rich.console import Console
    from rich.table import Table

    parser = argparse.ArgumentParser(prog="python -m pipeline.synthetic",
                                     description="Write a CelebA-layout tree of procedurally drawn faces.")
    parser.add_argument("--out", required=True, help="output folder: new, empty, or one it wrote before")
    parser.add_argument("--n", type=int, required=True, help="number of images, 3..999,999")
    parser.add_argument("--seed", type=int, default=0, help="the same seed gives the same bytes")
    parser.add_argument("--zip", action="store_true", help="write img_align_celeba.zip instead of the folder")
    parser.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    args = parser.parse_args(argv)
    check_count("--n", args.n, 3, 999_999, "at least one image per split; CelebA file names have six digits")
    check_workers("--workers", args.workers)
    t0 = time.perf_counter()
    out = write_synthetic_celeba(args.out, args.n, args.seed, as_zip=args.zip, workers=args.workers, progress=True)
    dt = time.perf_counter() - t0
    train, val, test = partition_sizes(args.n)
    table = Table(title=f"synthetic CelebA → {out}")
    for col in ("images", "train", "val", "test", "layout", "seconds", "images/s"):
        table.add_column(col, justify="right")
    table.add_row(f"{args.n:,}", f"{train:,}", f"{val:,}", f"{test:,}", "zip" if args.zip else "folder",
                  f"{dt:.1f}", f"{args.n / dt:,.0f}")
    Console().print(table)
    return 0
