"""``evaluate``: the diagnosing evaluation of a checkpoint on a split (model.evaluation, FULL settings).

Writes evaluation.json, evaluation.png and failure_modes.png into ``--out`` (default RUN/evaluation/)
and prints the table. Counts left at their defaults are cut to what the split holds; counts asked
for explicitly that the split cannot give are an error.
"""
from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

from rich.console import Console

from model.use.loading import Trained
from model.evaluation.outputs import check_folder, print_written
from pipeline.errors import ConfigError

#: option → EvalSettings field
OPTIONS = {"images": "images", "k": "iwae_k", "iwae_images": "iwae_images", "samples": "samples",
           "worst": "worst", "batch_size": "batch_size", "seed": "seed"}


def add_arguments(p: argparse.ArgumentParser) -> None:
    from model.evaluation import FULL

    p.add_argument("--out", metavar="DIR", help="folder for the three files (default: RUN/evaluation)")
    g = p.add_argument_group("how much to look at")
    g.add_argument("--images", type=int, help="images of the split to evaluate (default: all)")
    g.add_argument("--k", type=int, help=f"importance samples per image for the IWAE bound ({FULL.iwae_k})")
    g.add_argument("--iwae-images", type=int, help=f"images the IWAE bound is estimated on ({FULL.iwae_images})")
    g.add_argument("--samples", type=int, help=f"prior samples (and test images) for diversity and FID ({FULL.samples})")
    g.add_argument("--worst", type=int, help=f"images per failure mode in failure_modes.png ({FULL.worst})")
    g.add_argument("--batch-size", type=int, help=f"images per batch ({FULL.batch_size})")
    g.add_argument("--seed", type=int, help="seed of the sampled z, importance samples and prior samples (0)")
    g.add_argument("--fid", action="store_true", help="also FID through pytorch-fid (needs it and its Inception "
                                                       "weights); writes the PNG folders it compares under OUT/fid/")


def evaluate(args: argparse.Namespace, trained: Trained, console: Console) -> int:
    from model.evaluation import FILES, FULL, evaluate_model
    from model.evaluation.report import evaluation_table
    from model.training.runtime import Runtime
    from pipeline.loader import make_loader
    from pipeline.shards import read_split

    asked = {field: getattr(args, opt) for opt, field in OPTIONS.items() if getattr(args, opt) is not None}
    shards = args.data or trained.default_shards()
    total = read_split(shards, args.split).count
    settings = replace(FULL, **asked, fid=args.fid, decoder_log_sigma=trained.decoder_log_sigma).check(
        total, explicit=frozenset(asked))
    out = Path(args.out) if args.out else trained.run_dir / "evaluation"
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; name a folder")
    check_folder(out, "--out")  # under a file, or not writable: refused before the evaluation runs
    rt = Runtime(trained.device, 0, 0, 1, amp="off", channels_last=False, compile=False, sync_batchnorm=False)
    loader = make_loader(shards, args.split, settings.batch_size, device=trained.device, backend=args.backend,
                         shuffle=False, drop_last=False, with_keys=True, size=trained.model.cfg.image_size,
                         crop=trained.crop)
    try:
        ev = evaluate_model(trained.model, loader, rt, shards=Path(shards), split=args.split, settings=settings,
                            out_dir=out, total=total, console=console,
                            source={"checkpoint": str(trained.path), "step": trained.step, "data": str(shards)})
    finally:
        loader.close()
    console.print(evaluation_table(ev))
    print_written(console, [(out / name, what) for name, what in zip(FILES, (
        "every number, with the settings", "KL per dimension, attribute ratios, regions, IWAE by K",
        "the worst images per failure mode")) if (out / name).exists()]
                  + [(out / "fid", "test images and prior samples as PNG folders (--fid)")] * bool(args.fid))
    return 0
