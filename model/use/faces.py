"""The faces a command works on, all brought in through ``pipeline`` (the one way in for data).

A face named on the command line is an image file or a sample key of a split; either way it is
prepared by the loader's own crop + resize. A whole split is read by ``pipeline.make_loader`` in
order, batched on the model's device, and encoded to (keys, μ, log σ²) behind a progress bar.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from rich.console import Console

from model.use.latent import encode
from model.vae import ConvVAE

#: A name with one of these endings (or a path separator) is a file, never a sample key.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm")


@dataclass
class Faces:
    """Images N×3×H×W in [0, 1] on the CPU, with a short label each (file stem or sample key)."""

    images: torch.Tensor
    labels: list[str]


def is_file_spec(spec: str) -> bool:
    """Whether a FACE argument names a file (it exists, has an image suffix or a path separator)."""
    return os.path.exists(spec) or spec.lower().endswith(IMAGE_SUFFIXES) or os.sep in spec or "/" in spec


def to_tensor(arrays: Sequence[np.ndarray]) -> torch.Tensor:
    """uint8 H×W×3 arrays → float N×3×H×W in [0, 1] (the loader's contract)."""
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float().div(255)


def load_faces(specs: Sequence[str], *, shards: Callable[[], Path], split: str, crop: int | None, size: int,
               console: Console | None = None) -> Faces:
    """Each spec as a face, in order. ``shards`` is called only when a spec is a sample key."""
    from pipeline.images import CELEBA_SIZE, image_size, read_image_file, read_split_images

    arrays: dict[int, np.ndarray] = {}
    keys = [(i, s) for i, s in enumerate(specs) if not is_file_spec(s)]
    for i, spec in enumerate(specs):
        if is_file_spec(spec):
            arrays[i] = read_image_file(spec, crop, size)
            wh = image_size(spec)
            if console is not None and wh is not None and min(wh) < size:
                console.print(f"[yellow]note:[/] {spec} is {wh[0]}×{wh[1]}, smaller than the {size}×{size} the model "
                              "sees: it is enlarged, so the face is blurred and so is what the model makes of it")
            elif console is not None and crop is not None and wh not in (None, CELEBA_SIZE) and min(wh) > crop * 1.25:
                console.print(f"[yellow]note:[/] {spec} is {wh[0]}×{wh[1]}, not CelebA's aligned 178×218: the "
                              f"centre {crop}×{crop} crop shows less of the face than training saw (see --crop)")
    if keys:
        got = read_split_images(shards(), split, [s for _, s in keys], crop, size)
        arrays.update({i: a for (i, _), a in zip(keys, got)})
    return Faces(to_tensor([arrays[i] for i in range(len(specs))]), unique_labels(specs))


#: ``--crop``'s default: the crop in the checkpoint's own config (an object, so argparse leaves it as it is).
AS_TRAINED = object()


def named_faces(args, trained, console: Console) -> Faces:
    """The FACE arguments of a command (files, or keys of ``--split`` in ``--data`` or the checkpoint's
    shards), prepared as the loader prepares images."""
    crop = trained.crop if args.crop is AS_TRAINED else args.crop
    return load_faces(args.faces, shards=lambda: args.data or trained.default_shards(), split=args.split,
                      crop=crop, size=trained.model.cfg.image_size, console=console)


def unique_labels(specs: Sequence[str]) -> list[str]:
    """File stems or keys, made unique with -2, -3 … (two files may share a stem)."""
    out: list[str] = []
    for spec in specs:
        base = Path(spec).stem if is_file_spec(spec) else spec
        label, n = base, 1
        while label in out:
            n += 1
            label = f"{base}-{n}"
        out.append(label)
    return out


@dataclass
class SplitLatents:
    """μ and log σ² of every sample of a split (or of its first ``max_samples``), in index order."""

    keys: list[str]
    mu: torch.Tensor  # N×D, CPU fp32
    logvar: torch.Tensor


def encode_split(model: ConvVAE, shards: Path, split: str, *, batch_size: int, backend: str, size: int,
                 crop: int | None,
                 max_samples: int | None, console: Console) -> SplitLatents:
    """Read ``split`` in order through ``pipeline.make_loader`` and encode it, with a progress bar."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from pipeline.loader import make_loader

    device = next(model.parameters()).device
    loader = make_loader(shards, split, batch_size, device=device, backend=backend, shuffle=False, drop_last=False,
                         with_keys=True, size=size, crop=crop)
    total = loader.num_samples if max_samples is None else min(max_samples, loader.num_samples)
    keys: list[str] = []
    mus, logvars = [], []
    columns = (TextColumn(f"encoding {split}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    try:
        with Progress(*columns, console=console, disable=console.quiet) as bar:
            task = bar.add_task(split, total=total)
            for images, batch_keys in loader:
                take = min(len(batch_keys), total - len(keys))
                mu, logvar = encode(model, images[:take])
                mus.append(mu)
                logvars.append(logvar)
                keys += batch_keys[:take]
                bar.update(task, completed=len(keys))
                if len(keys) >= total:
                    break
    finally:
        loader.close()
    return SplitLatents(keys, torch.cat(mus), torch.cat(logvars))


def first_samples(shards: Path, split: str, n: int, *, device: torch.device, backend: str, size: int,
                  crop: int | None) -> Faces:
    """The first ``n`` samples of a split in index order, as the loader prepares them."""
    from pipeline.loader import make_loader

    loader = make_loader(shards, split, n, device=device, backend=backend, shuffle=False, drop_last=False,
                         with_keys=True, size=size, crop=crop)
    try:
        images, keys = next(iter(loader))
    finally:
        loader.close()
    return Faces(images.float().cpu(), list(keys))
