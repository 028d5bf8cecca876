"""Everything a run keeps on disk and how it keeps it safe: atomic writes (a full disk or kill -9
never leaves a torn file), checkpoints (what they hold, their background writer, why a file cannot be
read), and the run directory's lock (one writer per run).

Sections (each keeps the notes of the module it was):

    disk_full        atomic writes: neither a full disk nor kill -9 leaves a torn file
    checkpoint_file  why a checkpoint file cannot be read, in one wording for every reader
    checkpoint       what a checkpoint holds; the background writer; the best state on the device
    run_lock         one run directory, one writer: RUN/.lock, held with flock while train.py runs
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
import io
import os
from pathlib import Path
import random
import secrets
import shutil
import socket
import threading
import time
from typing import Any, Callable, Iterator
import zipfile

import numpy as np
import torch

from pipeline.errors import ConfigError
from pipeline.errors import UserError, disk_full_message, is_disk_full
from pipeline.lock import my_record, read_record, same_file, take, write_record


# ====================================================================================================
# disk_full
# Writing the run directory so that neither a full disk nor kill -9 leaves a torn file.
#
# Every file train.py writes goes through :func:`atomic_write` (a temporary file beside the target,
# fsync, ``os.replace``: readers see the old file or the new one, never half of one) or
# :func:`append_line` (cut back to its old end when the write fails). A full disk (ENOSPC, or an
# exhausted quota, EDQUOT) becomes one :class:`DiskFull` error naming the path and the free space,
# so the run ends with one line and exit code 2 while its previous checkpoint stays intact.
# Temporary files left by a killed process are removed by :func:`remove_temps` once the run
# directory's lock is held (nobody else can be writing them then).
# ====================================================================================================
class DiskFull(UserError):
    """No space left (or quota exhausted) while writing a file of the run."""


@contextlib.contextmanager
def reporting(path: str | os.PathLike) -> Iterator[None]:
    """Turn a full-disk OSError raised inside into :class:`DiskFull` naming ``path``."""
    try:
        yield
    except OSError as err:
        if is_disk_full(err):
            raise DiskFull(disk_full_message(path, err)) from None
        raise


def _write(fh, data: bytes | memoryview, target: Path) -> None:
    """The one place run files get their bytes (``target`` names the file being replaced); loops
    because an unbuffered write may take only part of the data (as one does when the disk fills)."""
    view = memoryview(data)
    while view:
        view = view[fh.write(view):]


def atomic_write(path: str | os.PathLike, data: bytes | memoryview) -> Path:
    """Replace ``path`` with ``data``: temp file in the same folder, fsync, ``os.replace``, then fsync of the
    folder (without it a power cut or kernel crash soon after could bring back the previous file: intact,
    but older than what the run reported)."""
    path = Path(path)
    with reporting(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the umask's mode, as open() gives
        try:
            with os.fdopen(fd, "wb", buffering=0) as fh:
                _write(fh, data, path)
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        _fsync_folder(path.parent)
    return path


def _fsync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable (POSIX); a no-op where folders cannot be opened or synced."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # e.g. EINVAL where a filesystem does not sync folders
        pass
    finally:
        os.close(fd)


def write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write(path, text.encode("utf-8"))


def append_line(path: str | os.PathLike, line: str) -> None:
    """Append one line; when the write fails the file is cut back, so no torn line stays behind."""
    path = Path(path)
    with reporting(path), open(path, "ab", buffering=0) as fh:
        end = fh.tell()
        try:
            _write(fh, line.encode("utf-8"), path)
        except OSError:
            fh.truncate(end)
            raise


def remove_temps(folder: str | os.PathLike) -> list[Path]:
    """Delete :func:`atomic_write`'s temporary files in ``folder`` (left behind by a killed process)."""
    folder = Path(folder)
    stale = [p for p in folder.glob(".*.tmp") if p.is_file()] if folder.is_dir() else []
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


# ====================================================================================================
# checkpoint_file
# Why a checkpoint file cannot be read, in one wording for every reader (train.py --resume, python -m model).
#
# ``torch.load``'s own errors say what its unpickler or zip reader tripped over ("PytorchStreamReader failed
# reading zip archive: failed finding central directory", "invalid load key, '\xff'"), which tells a user
# nothing about the file. So the file is looked at first (empty, a zip cut short, not a torch archive at
# all, a member whose bytes no longer match their checksum), and whatever ``torch.load`` still raises on a
# file that looked right is reported as damage.
# ====================================================================================================
#: The start of every ``torch.save`` file: a zip (the format since PyTorch 1.6), or a pickle (the legacy one).
_ZIP_MAGIC = b"PK\x03\x04"
_PICKLE_MAGIC = b"\x80"


def damaged(path: str | Path) -> ConfigError:
    return ConfigError(f"cannot read checkpoint {path}: it is truncated or damaged (an incomplete copy?)")


def not_a_checkpoint(path: str | Path) -> ConfigError:
    return ConfigError(f"cannot read checkpoint {path}: it is not a PyTorch checkpoint (not a torch.save archive)")


def check_archive(path: str | Path) -> None:
    """ConfigError (one of the two above) unless ``path`` looks like a whole ``torch.save`` file."""
    path = Path(path)
    if not path.is_file():
        what = "a folder" if path.is_dir() else "not a regular file"
        raise ConfigError(f"cannot read checkpoint {path}: it is {what}")
    with open(path, "rb") as fh:
        head = fh.read(4)
    if not head:
        raise damaged(path)
    if head == _ZIP_MAGIC:
        if not zipfile.is_zipfile(path):  # a zip's table of contents is at its end: this one was cut short
            raise damaged(path)
        if not _checksums_match(path):
            raise damaged(path)
        return
    if not head.startswith(_PICKLE_MAGIC):
        raise not_a_checkpoint(path)


def _checksums_match(path: Path) -> bool:
    """Whether every member's bytes match the CRC-32 that ``torch.save`` recorded. ``torch.load`` does not look:
    a checkpoint damaged inside a tensor loads without complaint and serves wrong weights. (A CRC of 0 is what
    a save without checksums records: such members are not checked.)"""
    try:
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                if info.CRC == 0:
                    continue
                with zf.open(info) as member:  # zipfile compares the CRC when the member has been read whole
                    while member.read(1 << 22):
                        pass
    except (zipfile.BadZipFile, EOFError, ValueError, NotImplementedError):
        return False
    return True


def load_failed(path: str | Path, err: BaseException) -> ConfigError:
    """The line for ``torch.load`` failing on a file that passed :func:`check_archive`."""
    if isinstance(err, (ModuleNotFoundError, ImportError)) or (isinstance(err, AttributeError) and "module" in str(err)):
        return ConfigError(f"cannot read checkpoint {path}: it holds objects of code this environment lacks "
                           f"({str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__})")
    return damaged(path)


# ====================================================================================================
# checkpoint
# Checkpoints: everything needed to continue a run exactly, written atomically.
#
# A checkpoint holds the model, optimizer and GradScaler states, the position in training
# (global step, epoch, batches done in that epoch), the best validation ELBO so far, the merged
# config, the runtime's resolved choices (amp, channels_last, compile: a resumed run computes as its
# start did, see :func:`model.training.runtime.keep_resumed_choices`) and every RNG state (Python,
# NumPy, torch CPU and CUDA). It is serialised in memory first and then written through
# :func:`model.training.checkpoint.atomic_write` (temporary file in the same folder, fsync,
# ``os.replace``, fsync of the folder), so kill -9 or a full disk mid-write leaves the previous
# ``last.pt`` intact, and a full disk is reported as one line naming the file (not as torch's zip
# writer's "unexpected pos" error, which is what ``torch.save`` straight to a full disk raises).
#
# During training, checkpoints are written in the background (:class:`CheckpointWriter`): the loop
# only waits for the state to be copied into host buffers (pinned on CUDA, reused from one write to
# the next); a thread serialises, fsyncs and renames while the next steps run. The best state so far
# is kept as a copy on the device (:class:`BestState`) and written beside ``last.pt``, not at every epoch.
# ====================================================================================================
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


def map_tensors(obj: Any, fn: Callable[[torch.Tensor, str], torch.Tensor], key: str = "") -> Any:
    """``obj`` (a checkpoint's nesting of dicts, lists and tuples) with every tensor replaced by
    ``fn(tensor, key)``, ``key`` naming its place ("model/enc.0.weight"); everything else as it is."""
    if isinstance(obj, torch.Tensor):
        return fn(obj.detach(), key)
    if isinstance(obj, dict):
        return {k: map_tensors(v, fn, f"{key}/{k}") for k, v in obj.items()}
    if isinstance(obj, (list, tuple)) and any(isinstance(v, (torch.Tensor, dict, list, tuple)) for v in obj):
        return type(obj)(map_tensors(v, fn, f"{key}/{i}") for i, v in enumerate(obj))
    return obj


def _to_host(obj: Any, pool: dict[str, torch.Tensor], key: str, pinned: bool) -> Any:
    """``obj`` with every tensor copied into ``pool``'s host buffer for its place (allocated once, pinned
    for CUDA sources; copies from the device are queued, not waited for)."""
    def copy(src: torch.Tensor, place: str) -> torch.Tensor:
        buf = pool.get(place)
        if buf is None or buf.shape != src.shape or buf.dtype != src.dtype:
            buf = torch.empty(src.shape, dtype=src.dtype, device="cpu", pin_memory=pinned and src.is_cuda)
            pool[place] = buf
        return buf.copy_(src, non_blocking=src.is_cuda)

    return map_tensors(obj, copy, key)


def snapshot_on_device(obj: Any) -> Any:
    """A copy of ``obj``'s tensors where they live (a device-to-device copy: no host work, no sync)."""
    return map_tensors(obj, lambda t, _: t.clone())


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


# ====================================================================================================
# run_lock
# One run directory, one writer: ``RUN/.lock``, held with ``flock`` for as long as train.py runs. It is
# taken with pipeline/lock.py's primitive (``take``: the flock, the retry when the holder removes the file
# meanwhile, the filesystem without locks) that preshard's and the generator's lock use too; what this lock
# adds is its judgement of a previous holder, below.
#
# Two trainers on one run directory would interleave their metrics and overwrite each other's
# checkpoints, so a second one is refused, naming the holder (host, pid, start time, command) that
# the lock file records. The kernel drops an ``flock`` when its process dies, kill -9 included, so a
# lock file left behind by a dead trainer of this host is not held by anybody: it is taken over with a
# notice naming the dead holder.
#
# Another host is a different matter: where ``flock`` only works within one machine (NFS mounted with
# ``nolock`` or ``local_lock``, Lustre's ``localflock``), a live run on another node holds no lock this
# node can see. A lock file naming another host is therefore refused even when ``flock`` succeeds, with
# one line naming that run; ``--break-lock`` (train.py) takes it over once the user has checked that run
# is gone (e.g. a job killed on a node that has since been given back).
#
# A filesystem without file locks at all (``flock`` fails with ENOLCK, EOPNOTSUPP or ENOSYS: Lustre
# mounted without ``flock``, some FUSE filesystems) gets a notice and the same judgement from the lock
# file alone: another host's lock is refused as above, this host's is refused while its pid is alive.
# Refusing to run there instead would make train.py unusable on common cluster scratch filesystems;
# what is lost is only the detection of two trainers started within the same instant.
#
# The lock is taken before anything reads or writes the run directory (``--resume`` included); if
# the directory did not exist and the run fails before writing into it, it is removed again.
#
# Holding the lock, a run without ``--resume`` checks that the directory holds no other run
# (:func:`check_fresh_run`): a fresh run into a used directory would replace ``last.pt`` and keep the old
# ``best.pt`` and pictures beside its own config, and ``python -m model`` would then serve the old weights
# under the new config. It is refused, naming ``--resume``, another ``--out`` and ``--overwrite``, which
# removes what train.py and ``python -m model`` wrote there (and nothing else) before the run starts.
# ====================================================================================================
LOCK_NAME = ".lock"
BREAK_FLAG = "--break-lock"
OVERWRITE_FLAG = "--overwrite"
#: What a run that never reached its first checkpoint leaves: a fresh run simply replaces these.
_UNFINISHED = {LOCK_NAME, "config.json", "metrics.jsonl", "checkpoints"}
#: Files and folders of a run: train.py's (config, metrics, pictures, summary, evaluation, checkpoints, TensorBoard)
#: and python -m model's (inference/, evaluation/ and attributes.pt beside the checkpoints). --overwrite removes these.
RUN_FILES = {"config.json", "metrics.jsonl", "summary.json", "evaluation.json", "evaluation.png", "failure_modes.png",
             "training_log.png", "reconstructions.png", "samples.png", "interpolation.png", "failures.png",
             "checkpoints", "tensorboard", "inference", "evaluation"}


class RunLock:
    """Context manager: hold ``run_dir``'s lock (or do nothing when ``enabled`` is False: ranks ≠ 0).
    ``break_lock``: take over a lock that names another host (or, without file locks, a live pid)."""

    def __init__(self, run_dir: str | os.PathLike, *, enabled: bool = True, break_lock: bool = False) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_NAME
        self.enabled, self.break_lock = enabled, break_lock
        self.notices: list[str] = []  # one line each: a lock taken over, a filesystem without locks
        self._fd: int | None = None
        self._me: dict | None = None
        self._created_dir = False

    def __enter__(self) -> "RunLock":
        if not self.enabled:
            return self
        self._created_dir = not self.run_dir.exists()
        with reporting(self.path):
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self._fd, no_locks = take(self.path, lambda holder: _in_use(self.path, holder))
            if no_locks:
                self.notices.append(f"notice: {self.path}: this filesystem has no file locks (flock: {no_locks}); "
                                    "judging a previous lock by the host and pid it names")
            try:
                previous = read_record(self._fd)
                if previous:
                    self.notices.append(_take_over(self.path, previous, flock_held=not no_locks,
                                                   break_lock=self.break_lock))
            except BaseException:
                os.close(self._fd)
                self._fd = None
                raise
            self._me = my_record()
            write_record(self._fd, self._me)
        return self

    def __exit__(self, *exc) -> None:
        if self._fd is None:
            return
        try:
            # Not if --break-lock elsewhere has taken the file over meanwhile: then it is that run's.
            if same_file(self.path, self._fd) and read_record(self._fd) == self._me:
                self.path.unlink()
        finally:
            os.close(self._fd)  # releases the flock
            self._fd = None
        if self._created_dir:
            try:
                self.run_dir.rmdir()  # only succeeds if the failed run wrote nothing there
            except OSError:
                pass


def _take_over(path: Path, previous: dict, *, flock_held: bool, break_lock: bool) -> str:
    """The notice for taking over the lock file ``previous`` of a run that no longer holds it, or
    ConfigError where that run may still be alive: on another host (whose locks this one may not
    see), or, without file locks, a live pid on this host. ``break_lock`` overrides both."""
    host, pid = previous.get("host", "?"), previous.get("pid")
    foreign = host != socket.gethostname()
    live = not foreign and not flock_held and isinstance(pid, int) and pid != os.getpid() and _alive(pid)
    if break_lock and (foreign or live):
        return (f"{path}: broke the lock of pid {pid} on host {host} (since {previous.get('started', '?')}), "
                f"as {BREAK_FLAG} asked")
    if foreign:
        raise ConfigError(f"run directory {path.parent} is locked by {_holder(previous)}, another host, whose "
                          f"file locks this host may not see; if that run has ended, rerun with {BREAK_FLAG} "
                          f"to take the directory over (lock file {path})")
    if live:
        raise _in_use(path, previous, f"; if pid {pid} is not that run any more, rerun with {BREAK_FLAG}")
    return (f"{path}: took over the lock of pid {pid if pid is not None else '?'} on host {host} "
            f"(since {previous.get('started', '?')}), which ended without releasing it (killed?)")


def _in_use(path: Path, holder: dict | None, hint: str = "") -> ConfigError:
    who = _holder(holder) if holder else "another trainer"
    return ConfigError(f"run directory {path.parent} is in use by {who} (lock file {path}); wait for that run "
                       f"to end, stop it, or choose another --out{hint}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # somebody else's process
        return True
    return True


def _holder(info: dict) -> str:
    return (f"pid {info.get('pid', '?')} on host {info.get('host', '?')} (since {info.get('started', '?')}: "
            f"{info.get('command', '?')})")


def check_fresh_run(run_dir: str | os.PathLike, *, resume: bool, overwrite: bool) -> list[str]:
    """For a run without ``--resume``: ConfigError if ``run_dir`` already holds another run (any checkpoint, or
    anything a finished run or ``python -m model`` writes) or files train.py does not write; with ``overwrite``,
    remove the run's files instead (files of others stay) and return the notice lines saying so."""
    run_dir = Path(run_dir)
    if resume:
        if overwrite:
            raise ConfigError(f"--resume continues the run in {run_dir} and {OVERWRITE_FLAG} replaces it: pick one")
        return []
    if not run_dir.is_dir():
        return []
    entries = {p.name: p for p in run_dir.iterdir() if not _temp(p.name)}
    used = sorted(name for name, p in entries.items() if name not in _UNFINISHED or _holds_checkpoints(p))
    if not used:
        return []
    ours = sorted(name for name in used if name in RUN_FILES)
    others = sorted(name for name in used if name not in RUN_FILES)
    if not overwrite:
        last = run_dir / "checkpoints" / "last.pt"
        held = (f"the run of {last}" if last.is_file() else
                f"{', '.join(ours[:4])}{', …' if len(ours) > 4 else ''} of an earlier run" if ours else
                f"files train.py does not write ({', '.join(others[:3])}{', …' if len(others) > 3 else ''})")
        continue_it = "continue it with --resume, " if last.is_file() else ""
        raise ConfigError(f"run directory {run_dir} already holds {held}; a new run would mix with it: "
                          f"{continue_it}pick another --out, or pass {OVERWRITE_FLAG} to replace "
                          f"{'it' if ours else 'nothing but what train.py writes'}")
    ours = sorted(name for name in entries if name in RUN_FILES)  # with the unfinished run's config and metrics
    for name in ours:
        path = entries[name]
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    notices = [f"notice: {OVERWRITE_FLAG}: removed the earlier run's {', '.join(ours)} from {run_dir}"] if ours else []
    if others:
        notices.append(f"notice: {run_dir} also holds files train.py does not write, left as they are: "
                       f"{', '.join(others[:5])}{', …' if len(others) > 5 else ''}")
    return notices


def _holds_checkpoints(path: Path) -> bool:
    """Whether the ``checkpoints`` folder holds anything but temporary files (an unfinished run's is empty)."""
    return path.is_dir() and any(not _temp(p.name) for p in path.iterdir())


def _temp(name: str) -> bool:
    return name.startswith(".") and name.endswith(".tmp")
