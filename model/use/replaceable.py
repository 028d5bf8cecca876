"""Outputs that would replace what a command did not make: its own inputs, or files of others under its suffixes.

``--out`` names a file the command then replaces; that is the point of naming it, except where the file is
one of the command's inputs (``reconstruct face.png --out face.png``, ``attributes --out`` the checkpoint) or
holds something of somebody's under a suffix this project writes (a ``.pt`` that is no directions file, an
``.npz`` that holds no latents): those are refused before any work is done.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from model.use.directions import FORMAT
from pipeline.errors import ConfigError


def check_replaceable(path: Path, inputs: Sequence[Path]) -> Path:
    """``path``, after refusing (before any work is done) to replace what the command did not make: one of
    its own inputs (the checkpoint, a face, a directions file), something that is not a regular file, or a
    ``.pt``/``.npz`` that does not hold what this project writes under that suffix (a checkpoint, say)."""
    if not path.exists():
        return path
    if not path.is_file():
        raise ConfigError(f"--out {path} exists and is not a regular file; name a new file or one this command wrote")
    for source in inputs:
        try:
            same = source.exists() and os.path.samefile(path, source)
        except OSError:
            same = False
        if same:
            raise ConfigError(f"--out {path} is one of this command's inputs; writing it would replace that input: "
                              "name another file")
    suffix = path.suffix.lower()
    if suffix in (".pt", ".npz") and not _ours(path, suffix):
        what = "attribute directions" if suffix == ".pt" else "latents (keys, mu, logvar)"
        raise ConfigError(f"{path} exists and does not hold {what} written by python -m model; it is not "
                          "replaced: name another --out, or move that file away")
    return path


def _ours(path: Path, suffix: str) -> bool:
    """Whether an existing output file holds what this project writes under ``suffix``."""
    try:
        if suffix == ".npz":
            with np.load(path, allow_pickle=False) as doc:
                return {"keys", "mu", "logvar"} <= set(doc.files)
        doc = torch.load(path, map_location="cpu", weights_only=True)
        return isinstance(doc, dict) and doc.get("format") == FORMAT
    except Exception:  # unreadable, or a pickle a weights-only load refuses: not ours either way
        return False
