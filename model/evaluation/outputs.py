"""Files a command writes, each one whole or not at all.

Every output is written to a temporary name in its destination folder and renamed into place, so
an interrupted command leaves the previous file (or none), never half of a PNG, GIF or archive.
"""
from __future__ import annotations

import os
import re
import uuid
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from pipeline.errors import ConfigError, writing_to


def write_atomic(path: str | Path, write: Callable[[Path], object]) -> Path:
    """Call ``write(tmp)`` for a temp file beside ``path`` (same suffix, so writers that go by the
    suffix pick the right format), then move it onto ``path``."""
    path = Path(path)
    # writing_to: a writer's own errors (a full disk in PIL's or numpy's write) name no file; they are this one's.
    with writing_to(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        # The writer creates the file itself (not mkstemp), so it gets the user's usual permissions.
        tmp = path.with_name(f".{path.stem}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp{path.suffix}")
        try:
            write(tmp)
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    return path


def check_folder(folder: str | Path | None, option: str) -> None:
    """Refuse, before any work is done, an output folder that is an existing file or lies under one
    (the nearest existing folder above it decides whether it can be made)."""
    if folder is None:
        return
    folder = Path(folder)
    blocking = _file_in_the_way(folder)
    if blocking is not None:
        what = "that is a file" if blocking == folder else f"{blocking} is a file, not a folder"
        raise ConfigError(f"{option} {folder}: {what}; name a folder")
    _check_writable(folder, option)


def check_file(path: Path, suffix: str) -> Path:
    """``path``, after refusing (before any work is done) an ``--out`` of the wrong kind or whose
    folder is a file."""
    if path.suffix.lower() != suffix:
        raise ConfigError(f"--out {path}: this command writes a {suffix} file; name one ending in {suffix}")
    blocking = _file_in_the_way(path.parent)
    if blocking is not None:
        raise ConfigError(f"--out {path}: {blocking} is a file, not a folder")
    _check_writable(path.parent, "--out")
    return path


def _check_writable(folder: Path, option: str) -> None:
    """ConfigError when ``folder`` (or, if it is still to be made, the nearest existing folder above it) cannot
    be written: a read-only filesystem or a folder of somebody else's, found before any work is done."""
    existing = next((p for p in (folder, *folder.parents) if p.exists()), None)
    if existing is not None and not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"{option} {folder}: cannot write in {existing} (a read-only filesystem, or no "
                          "permission); choose a folder you can write to")


def _file_in_the_way(folder: Path) -> Path | None:
    """The nearest existing path at or above ``folder`` if it is a file (``folder`` cannot be made), else None."""
    for path in (folder, *folder.parents):
        if path.exists():
            return None if path.is_dir() else path
    return None


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """N×3×H×W floats in [0, 1] → N×H×W×3 uint8 (rounded, as a PNG stores them)."""
    return (images.detach().float().clamp(0, 1).mul(255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy())


def safe_name(label: str) -> str:
    """A label as a file name: letters, digits, ``+-=._`` kept, anything else becomes ``_``."""
    return re.sub(r"[^A-Za-z0-9+\-=._]", "_", label).strip("._") or "image"


def write_each(images: torch.Tensor, folder: str | Path, names: Sequence[str]) -> list[Path]:
    """One PNG per image at its own resolution: ``folder/NAME.png``."""
    from PIL import Image

    folder = Path(folder)
    return [write_atomic(folder / f"{safe_name(name)}.png", lambda tmp, a=arr: Image.fromarray(a).save(tmp, "PNG"))
            for arr, name in zip(to_uint8(images), names)]


def write_gif(frames: torch.Tensor, path: str | Path, *, scale: int = 4, frame_ms: int = 120) -> Path:
    """An animated GIF that plays the frames forward and back, each pixel shown ``scale``×``scale``."""
    from PIL import Image

    arrays = to_uint8(frames)
    arrays = arrays.repeat(scale, axis=1).repeat(scale, axis=2)  # nearest-neighbour: the model's real pixels
    pictures = [Image.fromarray(a) for a in arrays]
    loop = pictures + pictures[-2:0:-1]
    return write_atomic(path, lambda tmp: loop[0].save(tmp, "GIF", save_all=True, append_images=loop[1:],
                                                       duration=frame_ms, loop=0))


def print_written(console, written: Sequence[tuple[str | Path, str]]) -> None:
    """The closing table of every command: each file (or folder) written and what it holds."""
    from rich.table import Table

    table = Table(title="wrote", title_justify="left")
    table.add_column("path", overflow="fold")
    table.add_column("what")
    for path, what in written:
        table.add_row(str(path), what)
    console.print(table)
