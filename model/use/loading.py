"""A trained model from a run directory or a checkpoint file, on the device asked for.

Checkpoints are read with ``torch.load(weights_only=True)`` and an allow-list of the numpy types our
RNG states need, so loading a checkpoint someone sent you cannot run code hidden in its pickle;
``--trust-checkpoint`` unpickles the whole file (for files you trust that hold other objects); the same
checks of the format and the model and config entries follow either way.
Tensors are mapped to the CPU first, so a checkpoint written on a GPU loads anywhere.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from model.training.checkpoint import FORMAT, load_model_state
from model.training.checkpoint import check_archive, load_failed
from model.use.directions import FILE_NAME
from model.evaluation.outputs import check_file
from model.use.replaceable import check_replaceable
from model.vae import ConvVAE, VAEConfig
from pipeline.errors import ConfigError, DataError

try:  # numpy >= 2
    from numpy._core.multiarray import _reconstruct
except ImportError:  # numpy 1.x
    from numpy.core.multiarray import _reconstruct

#: What a checkpoint of this trainer pickles besides tensors: numpy arrays (the NumPy RNG state).
SAFE_GLOBALS = [_reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32))]
#: Where a command's outputs go by default, inside the run directory.
OUTPUT_DIR = "inference"


@dataclass
class Trained:
    """A checkpoint's network in eval mode, with where it came from."""

    model: ConvVAE
    config: dict[str, Any]
    path: Path
    device: torch.device
    step: int
    epoch: int
    best_val_elbo: float | None
    fingerprint: str  # of the weights: ties attribute directions to the checkpoint they came from
    decoder_log_sigma: float | None = None  # a σ-VAE's learned log σ (None: σ² = ½, the SSE loss's)
    inputs: tuple[Path, ...] = ()  # the other files the command reads (faces, directions): never overwritten

    @property
    def run_dir(self) -> Path:
        """The run directory: the folder above ``checkpoints/``, else the checkpoint's own folder."""
        parent = self.path.parent
        return parent.parent if parent.name == "checkpoints" else parent

    def output(self, out: str | Path | None, default_name: str) -> Path:
        """``--out`` as given (``default_name`` inside it when it is a folder), or ``RUN/inference/default_name``;
        checked before any work is done (same suffix as ``default_name``, a folder that can be made)."""
        if out is None:
            path = self.run_dir / OUTPUT_DIR / default_name
        else:
            path = Path(out) / default_name if Path(out).is_dir() else Path(out)
        return check_replaceable(check_file(path, Path(default_name).suffix), (self.path, *self.inputs))

    @property
    def crop(self) -> int | None:
        """The centre crop the model was trained with (checkpoints older than the ``crop`` key: CelebA's 148)."""
        return self.config.get("crop", 148)

    def default_shards(self) -> Path:
        """The shards this checkpoint was trained on (config ``data``, or the synthetic default)."""
        shards = Path(self.config.get("data") or self.config.get("synthetic_shards") or "data/shards")
        if not (shards / "manifest.json").is_file():
            raise DataError(f"this command needs shards: the checkpoint was trained on {shards}, which holds no "
                            "manifest.json here; pass --data SHARDS")
        return shards

    def describe(self) -> str:
        return f"{self.path} (step {self.step:,}, epoch {self.epoch}, {self.device})"


def checkpoint_path(run: str | Path | None, checkpoint: str | Path | None, last: bool, default_run: Path) -> Path:
    """``--checkpoint FILE``, else ``RUN/checkpoints/{best,last}.pt`` (RUN: ``--run`` or the default run)."""
    if checkpoint is not None:
        if last:
            raise ConfigError("--last picks a checkpoint of a run directory; with --checkpoint name the file itself")
        return Path(checkpoint)
    run_dir = Path(run) if run is not None else default_run
    path = run_dir / "checkpoints" / ("last.pt" if last else "best.pt")
    if not run_dir.is_dir():
        given = "" if run is not None else " (the default run; pass --run DIR or --checkpoint FILE)"
        raise ConfigError(f"run directory {run_dir} does not exist{given}")
    if not path.is_file():
        others = [p.name for p in sorted(path.parent.glob("*.pt")) if p.name != FILE_NAME]
        if not last and "last.pt" in others:
            hint = ("it has only last.pt (best.pt is written after an epoch's validation): pass --last to use "
                    "last.pt, or let the run finish an epoch")
        elif last and "best.pt" in others:
            hint = "it has best.pt: leave out --last to use it"
        else:
            hint = (f"has it saved a checkpoint yet? (checkpoints there: {', '.join(others) or 'none'}; "
                    "or pass --checkpoint FILE)")
        raise ConfigError(f"run directory {run_dir} has no {path.relative_to(run_dir)}: {hint}")
    return path


def read_checkpoint(path: str | Path, trust: bool = False) -> dict[str, Any]:
    """The checkpoint dict, on the CPU; one ConfigError line for anything that is not ours."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"checkpoint {path} does not exist")
    if not path.is_file():
        raise ConfigError(f"checkpoint {path} is a folder; for a run directory use --run {path}")
    ckpt = _read_trusted(path) if trust else _read_weights_only(path)
    # The same checks whichever way it was read: a trusted file may still be another program's dict.
    if not isinstance(ckpt, dict) or "format" not in ckpt:
        what = "a bare state dict" if isinstance(ckpt, dict) else f"a {type(ckpt).__name__}"
        raise ConfigError(f"{path} is not a checkpoint of this trainer: it holds {what} (expected format {FORMAT})")
    if ckpt["format"] != FORMAT:
        raise ConfigError(f"{path} has checkpoint format {ckpt['format']!r}; this version reads {FORMAT!r}")
    for key in ("model", "config"):
        if not isinstance(ckpt.get(key), dict):
            raise ConfigError(f"{path} is damaged: its {key!r} entry is missing")
    return ckpt


def _read_trusted(path: Path) -> Any:
    """The whole unpickled object (``--trust-checkpoint``)."""
    check_archive(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # damaged, or a class this environment lacks
        raise load_failed(path, err) from None


def _read_weights_only(path: Path) -> Any:
    """The file through ``torch.load(weights_only=True)`` with the numpy types our RNG states need."""
    check_archive(path)
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # UnpicklingError for a foreign object, RuntimeError for a damaged archive
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(err))
        if found:
            raise ConfigError(f"{path} holds a {found.group(1)} object, which a weights-only load refuses; if you "
                              "trust the file, pass --trust-checkpoint") from None
        raise load_failed(path, err) from None


def load_trained(path: str | Path, device: str | torch.device | None = None, trust: bool = False) -> Trained:
    """Read the checkpoint, build the network from its own config, load the weights, eval mode, on ``device``."""
    from pipeline.loader import resolve_device

    dev = resolve_device(device)
    ckpt = read_checkpoint(path, trust)
    cfg = ckpt["config"]
    try:
        vae_cfg = VAEConfig.from_dict(cfg)
        model = ConvVAE(vae_cfg, loss_impl="torch")
    except (ValueError, TypeError) as err:
        raise ConfigError(f"checkpoint {path} has an unusable model config: {err}") from None
    load_model_state(model, ckpt["model"], path)
    model.to(dev).eval()
    log_sigma = (ckpt.get("objective") or {}).get("log_sigma")
    return Trained(model, dict(cfg), Path(path), dev, int(ckpt.get("step", 0)), int(ckpt.get("epoch", 0)),
                   ckpt.get("best_val_elbo"), weights_fingerprint(ckpt["model"]),
                   None if log_sigma is None else float(log_sigma))


def weights_fingerprint(state: dict[str, torch.Tensor]) -> str:
    """A short hash of every tensor in a state dict (names, shapes and values)."""
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]
