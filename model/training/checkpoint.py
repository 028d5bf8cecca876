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

During training, checkpoints are written in the background (:class:`CheckpointWriter`): the loop
only waits for the state to be copied into host buffers (pinned on CUDA, reused from one write to
the next); a thread serialises, fsyncs and renames while the next steps run. The best state so far
is kept as a copy on the device (:class:`BestState`) and written beside ``last.pt``, not at every epoch.
"""
from __future__ import annotations

import io
import random
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

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

    def written(self, name: str, step: int) -> None:
        """:class:`CheckpointWriter`'s report that ``name`` at ``step`` is safely on disk."""
        if name == self.path.name:
            self.step = step


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


def _to_host(obj: Any, pool: dict[str, torch.Tensor], key: str, pinned: bool) -> Any:
    """``obj`` with every tensor copied into ``pool``'s host buffer for ``key`` (allocated once, pinned
    for CUDA sources; copies from the device are queued, not waited for)."""
    if isinstance(obj, torch.Tensor):
        src = obj.detach()
        buf = pool.get(key)
        if buf is None or buf.shape != src.shape or buf.dtype != src.dtype:
            buf = torch.empty(src.shape, dtype=src.dtype, device="cpu", pin_memory=pinned and src.is_cuda)
            pool[key] = buf
        buf.copy_(src, non_blocking=src.is_cuda)
        return buf
    if isinstance(obj, dict):
        return {k: _to_host(v, pool, f"{key}/{k}", pinned) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)) and any(isinstance(v, (torch.Tensor, dict, list, tuple)) for v in obj):
        return type(obj)(_to_host(v, pool, f"{key}/{i}", pinned) for i, v in enumerate(obj))
    return obj


def snapshot_on_device(obj: Any) -> Any:
    """A copy of ``obj``'s tensors where they live (a device-to-device copy: no host work, no sync)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().clone()
    if isinstance(obj, dict):
        return {k: snapshot_on_device(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)) and any(isinstance(v, (torch.Tensor, dict, list, tuple)) for v in obj):
        return type(obj)(snapshot_on_device(v) for v in obj)
    return obj


class CheckpointWriter:
    """Writes checkpoints in the background, one write at a time, each file atomically.

    :meth:`write` waits for the previous write (re-raising its error, a full disk say), copies the
    states into host buffers and hands them to a thread that serialises, fsyncs and renames them in
    the order given (best.pt before last.pt: a kill between the two redoes the newer one only).
    ``waited`` is the time the caller spent in :meth:`write` and :meth:`wait`: what checkpoints cost the
    training loop. ``done(name, step)`` runs in the thread once a file is safely on disk."""

    def __init__(self, folder: Path, device: torch.device, *, save: Callable[[Any, Path], Any] | None = None,
                 done: Callable[[str, int], None] | None = None):
        self.folder = Path(folder)
        self.cuda = device.type == "cuda"
        self._save = save or save_atomic
        self._done = done
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._pool: dict[str, torch.Tensor] = {}
        self.waited = 0.0
        self.writes = 0

    def write(self, files: dict[str, dict[str, Any]]) -> None:
        """Queue ``{file name: checkpoint dict}`` (dicts from :func:`make_checkpoint`)."""
        t0 = time.perf_counter()
        try:
            self._join()
            host = {name: _to_host(state, self._pool, name, pinned=self.cuda) for name, state in files.items()}
            ready = None
            if self.cuda:
                ready = torch.cuda.Event()
                ready.record()  # the queued device → host copies are complete once this has passed
            self._thread = threading.Thread(target=self._run, args=(host, ready), name="checkpoint-writer",
                                            daemon=False)
            self._thread.start()
            self.writes += 1
        finally:
            self.waited += time.perf_counter() - t0

    def wait(self) -> None:
        """Block until the write in flight (if any) is on disk; raise its error."""
        t0 = time.perf_counter()
        try:
            self._join()
        finally:
            self.waited += time.perf_counter() - t0

    def drain(self) -> None:
        """Let the write in flight finish, on a path that is already ending with an error of its own
        (the write's error, if any, gives way to that one; the last good checkpoint stays named)."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self._error = None

    def _join(self) -> None:
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            err, self._error = self._error, None
            raise err

    def _run(self, host: dict[str, dict[str, Any]], ready) -> None:
        try:
            if ready is not None:
                ready.synchronize()
            for name, state in host.items():
                self._save(state, self.folder / name)
                if self._done is not None:
                    self._done(name, int(state["step"]))
        except BaseException as err:  # re-raised in the training loop by the next write or wait
            self._error = err


class BestState:
    """The best checkpoint so far, kept as a copy on the device until the next write."""

    def __init__(self) -> None:
        self.state: dict[str, Any] | None = None
        self.dirty = False

    def keep(self, state: dict[str, Any]) -> None:
        self.state = snapshot_on_device(state)
        self.dirty = True

    def take(self) -> dict[str, Any] | None:
        """The state to write with the next last.pt, once (None when unchanged since the last write)."""
        if not self.dirty:
            return None
        self.dirty = False
        return self.state
