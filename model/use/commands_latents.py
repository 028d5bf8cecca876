"""``encode``, ``attributes`` and ``edit``: the latent codes of a split, attribute directions, edited faces.

``attributes`` encodes a split (train by default) and saves one direction per CelebA attribute
beside the checkpoint; ``edit`` moves faces along them, computing the directions first when the
checkpoint has none yet (or only stale ones from other weights).
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from model.use import latent
from model.use.directions import (FILE_NAME, Directions, compute_directions, load_directions, parse_amount,
                                  resolve_name, save_directions)
from model.use.faces import encode_split, named_faces
from model.use.loading import Trained
from model.evaluation.outputs import check_folder, print_written, write_atomic, write_each
from model.use.replaceable import check_replaceable
from model.evaluation.pictures import plot_table
from pipeline.errors import ConfigError


def encode(args: argparse.Namespace, trained: Trained, console: Console) -> int:
    """keys, μ, log σ² (and the attributes, when the shards have them) of a split, as one .npz."""
    from pipeline.shards import read_attributes

    out = trained.output(args.out, f"latents-{args.split}.npz")
    shards = args.data or trained.default_shards()
    attributes = read_attributes(shards, args.split, required=False)
    codes = _encode(args, trained, shards, console)
    arrays = {"keys": np.array(codes.keys), "mu": codes.mu.numpy(), "logvar": codes.logvar.numpy(),
              "checkpoint": np.array(str(trained.path)), "step": np.array(trained.step)}
    if attributes is not None:
        arrays["attributes"] = attributes.table(codes.keys)
        arrays["attribute_names"] = np.array(attributes.names)

    def save(tmp: Path) -> None:
        with open(tmp, "wb") as fh:  # a file object: np.savez would append .npz to a name
            np.savez(fh, **arrays)

    write_atomic(out, save)
    kl = latent.kl_per_image(codes.mu, codes.logvar)
    console.print(f"{len(codes.keys):,} samples of {args.split} → latent {codes.mu.shape[1]}: mean KL {kl.mean():.2f} "
                  f"nats, {int((codes.mu.var(0) > 0.01).sum())} of {codes.mu.shape[1]} units active (Var μ > 0.01)")
    what = "keys, mu, logvar" + (", attributes, attribute_names" if attributes is not None else
                                 " (the shards carry no attributes)")
    print_written(console, [(out, what)])
    return 0


def attributes(args: argparse.Namespace, trained: Trained, console: Console) -> int:
    """One direction per attribute with enough faces on both sides, saved beside the checkpoint."""
    out = (trained.output(args.out, FILE_NAME) if args.out
           else check_replaceable(trained.path.parent / FILE_NAME, (trained.path, *trained.inputs)))
    directions = _compute(args, trained, console, out)
    console.print(f"[bold]attribute directions[/] from {directions.count:,} faces of {args.split}: mean μ with minus "
                  "mean μ without; separation = balanced accuracy of the projection on the direction")
    table = Table()
    for col in ("attribute", "with", "without", "|direction|", "separation"):
        table.add_column(col, justify="left" if col == "attribute" else "right")
    for name, vec in directions.vectors.items():
        pos = directions.positives[name]
        table.add_row(name, f"{pos:,}", f"{directions.count - pos:,}", f"{vec.norm():.2f}",
                      f"{directions.separation[name]:.2f}")
    console.print(table)
    _print_skipped(console, directions)
    print_written(console, [(out, f"{len(directions.vectors)} directions of dimension {trained.model.cfg.latent_dim}")])
    return 0


def edit(args: argparse.Namespace, trained: Trained, console: Console) -> int:
    """Faces moved along attribute directions: ``--add NAME=AMOUNT`` … or ``--sweep NAME`` … from −span to +span."""
    if bool(args.add) == bool(args.sweep):
        raise ConfigError("give --add NAME=AMOUNT (one or more) or --sweep NAME (one or more), not both")
    if args.steps < 2 or not args.span > 0:
        raise ConfigError(f"--steps must be >= 2 and --span > 0, got {args.steps} and {args.span}")
    amounts = [parse_amount(spec) for spec in args.add or []]
    out = trained.output(args.out, "edits.png")
    check_folder(args.each, "--each")
    faces = named_faces(args, trained, console)
    directions = _directions(args, trained, console, wanted=[n for n, _ in amounts] + list(args.sweep or []))
    if amounts:
        resolved = [(directions.resolve(n), a) for n, a in amounts]
        changes = [(f"{n} {a:+.3g}", {n: a}) for n, a in resolved]
        if len({n for n, _ in resolved}) == len(resolved) > 1:  # "all" together, when no attribute repeats
            changes.append(("all", dict(resolved)))
        plan = [(label, i, [("reconstruction", {}), *changes]) for i, label in enumerate(faces.labels)]
    else:
        steps = latent.sweep_amounts(args.span, args.steps)
        plan = [(label, i, [(f"{name} {a:+.3g}", {name: a}) for a in steps])
                for i, label in enumerate(faces.labels) for name in map(directions.resolve, args.sweep)]

    # One row per face (--add) or per face and attribute (--sweep): the input, then the decoded edits.
    mu, _ = latent.encode(trained.model, faces.images)
    codes = [latent.edit(mu[i], directions.vectors, change) for _, i, columns in plan for _, change in columns]
    decoded = iter(latent.decode(trained.model, torch.stack(codes)))
    rows = [[faces.images[i], *(next(decoded) for _ in columns)] for _, i, columns in plan]
    cell_labels = [["input", *(name for name, _ in columns)] for _, _, columns in plan]
    title = (f"attribute edits: μ + amount × (mean μ with − mean μ without), directions from "
             f"{directions.source.get('split')} ({trained.path.name}, step {trained.step:,})")
    written = [(plot_table(rows, out, title=title, cell_labels=cell_labels, row_labels=[p[0] for p in plan]),
                f"{len(rows)} rows: the input, then {len(codes) // len(rows)} edited faces")]
    if args.each:
        names = [f"{label}_{name.replace(' ', '')}" for label, _, columns in plan for name, _ in columns]
        write_each(torch.stack([img for row in rows for img in row[1:]]), args.each, names)
        written.append((args.each, f"{len(names)} edited faces, one PNG each (FACE_EDIT.png)"))
    print_written(console, written)
    return 0


def _directions(args: argparse.Namespace, trained: Trained, console: Console, wanted: list[str]) -> Directions:
    """``--directions FILE``; else the checkpoint's own, computed now when missing or stale (after
    checking the ``wanted`` names against the shards' attributes, so a typo costs no encoding)."""
    if args.directions:
        path = Path(args.directions)
        if not path.is_file():
            what = "is not a file" if path.exists() else "does not exist"
            raise ConfigError(f"--directions {path} {what}; make it with: python -m model attributes")
        try:
            return load_directions(path, trained.fingerprint)
        except ConfigError as err:
            raise ConfigError(f"{err}; make directions for this checkpoint with: python -m model attributes") from None
    path = trained.path.parent / FILE_NAME
    if path.is_file():
        try:
            return load_directions(path, trained.fingerprint)
        except ConfigError as err:
            check_replaceable(path, (trained.path, *trained.inputs))  # stale ones of ours, not somebody's file
            console.print(f"[yellow]note:[/] {err}: computing new ones")
    else:
        console.print(f"no attribute directions beside {trained.path.name} yet: computing them (as "
                      f"`python -m model attributes` does)")
    directions = _compute(args, trained, console, path, split="train", wanted=wanted)
    _print_skipped(console, directions)
    return directions


def _compute(args: argparse.Namespace, trained: Trained, console: Console, out: Path,
             split: str | None = None, wanted: Sequence[str] = ()) -> Directions:
    """Encode ``split`` (default ``--split``), read its attributes, save the directions to ``out``."""
    from pipeline.shards import read_attributes

    split = split or args.split
    if args.min_count < 1:
        raise ConfigError(f"--min-count must be >= 1, got {args.min_count}")
    shards = args.data or trained.default_shards()
    attrs = read_attributes(shards, split)  # before encoding: shards without attributes fail at once
    for name in wanted:
        resolve_name(name, attrs.names)
    codes = _encode(args, trained, shards, console, split)
    source = {"shards": str(shards), "split": split, "checkpoint": str(trained.path), "step": trained.step,
              "fingerprint": trained.fingerprint}
    directions = compute_directions(codes.mu, attrs.table(codes.keys), attrs.names, min_count=args.min_count,
                                    source=source)
    if not directions.vectors:
        raise ConfigError(f"no attribute has {args.min_count} faces with and without it among the {directions.count} "
                          f"encoded faces of {split}; lower --min-count or encode more (--max-samples)")
    save_directions(directions, out)
    return directions


def _encode(args: argparse.Namespace, trained: Trained, shards: Path, console: Console, split: str | None = None):
    if args.max_samples is not None and args.max_samples < 1:
        raise ConfigError(f"--max-samples must be >= 1, got {args.max_samples}")
    return encode_split(trained.model, shards, split or args.split, batch_size=args.batch_size, backend=args.backend,
                        size=trained.model.cfg.image_size, crop=trained.crop, max_samples=args.max_samples,
                        console=console)


def _print_skipped(console: Console, directions: Directions) -> None:
    skipped = directions.skipped
    if skipped:
        listed = ", ".join(f"{n} ({p})" for n, p in skipped.items())
        console.print(f"skipped (fewer than {directions.min_count} faces with or without them; in brackets how many "
                      f"have them): {listed}")
