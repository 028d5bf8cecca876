"""Checkpoints: everything needed to continue a run exactly, written atomically.

A checkpoint holds the model, optimizer and GradScaler states, the position in training
(global step, epoch, batches done in that epoch), the best validation ELBO so far, the merged
config, the runtime's resolved choices (amp, channels_last, compile: a resumed run computes as its
start did, see :func:`model.training.runtime.keep_resumed_choices`) and every RNG state (Python,
NumPy, torch CPU and CUDA). It is serialised in memory first and then written through
:func:`model.training.disk_full.atomic_write` (temporary file in the same folder, fsync,
``os.replace``, fsync of the folder), so kill -9 or a full disk mid-write leaves the previous
``last.pt`` intact, and a full disk is reported as one line naming the file (not as torch's zip
writer's "unexpected pos" error, which is what ``torch.save`` straight to a full disk raises).
"""
from __future__ import annotations

import io
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from model.training.disk_full import atomic_write
from pipeline.errors import ConfigError

FORMAT = "celeba-vae-ckpt/1"


def rng_state() -> dict[str, Any]:
    """Every RNG the training loop draws from."""
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` captured (CUDA states only where CUDA is present)."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def save_atomic(obj: Any, path: str | Path) -> Path:
    """``torch.save`` into memory, then :func:`atomic_write` onto ``path`` (DiskFull when the disk is full)."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)  # a few times the model's size: small for this VAE
    return atomic_write(path, buffer.getbuffer())


@dataclass
class LastCheckpoint:
    """The newest complete ``last.pt``: what a stop or a failure leaves to resume from."""

    path: Path
    step: int | None = None  # None: none written yet

    def describe(self) -> str:
        return (f"checkpoint {self.path} (step {self.step}) is intact" if self.step is not None
                else "no checkpoint had been written yet")


def make_checkpoint(*, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scaler: Any, step: int,
                    epoch: int, batch_in_epoch: int, best_val_elbo: float | None, config: dict[str, Any],
                    runtime: dict[str, Any] | None = None, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The checkpoint dict. ``epoch``/``batch_in_epoch`` give where to continue: a finished epoch
    is stored as (epoch + 1, 0); a stop in an epoch's last step as (epoch, steps per epoch), whose
    resumed run starts with that epoch's end (validation, best.pt). ``runtime``:
    :func:`model.training.runtime.runtime_choices`."""
    return {
        "format": FORMAT,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None and scaler.is_enabled() else None,
        "step": step,
        "epoch": epoch,
        "batch_in_epoch": batch_in_epoch,
        "best_val_elbo": best_val_elbo,
        "config": dict(config),
        "runtime": runtime,
        "rng": rng_state(),
        **(extra or {}),
    }


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint written by this project; ConfigError when absent or not ours."""
    from model.training.checkpoint_file import check_archive, load_failed

    path = Path(path)
    if not path.exists():
        raise ConfigError(f"no checkpoint to resume from: {path} does not exist")
    check_archive(path)  # python -m model reads checkpoints too: both say the same about a damaged file
    try:
        # Our own files: they hold RNG states (numpy arrays, tuples), so not weights_only.
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # damaged past its first bytes
        raise load_failed(path, err) from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise ConfigError(f"{path} is not a checkpoint of this trainer (format {FORMAT})")
    missing = [k for k in ("model", "optimizer", "config", "step", "epoch", "batch_in_epoch", "rng") if k not in ckpt]
    if missing or not isinstance(ckpt["config"], dict):
        raise ConfigError(f"{path} is damaged: its {', '.join(map(repr, missing or ['config']))} entry is missing")
    return ckpt


def load_model_state(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str | Path) -> None:
    """``load_state_dict`` that reports a shape/key mismatch as one ConfigError line."""
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        first = str(err).strip().splitlines()
        detail = first[1].strip() if len(first) > 1 else first[0]
        raise ConfigError(f"checkpoint {source} was made for a different model: {detail}") from None
