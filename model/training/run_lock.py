"""One run directory, one writer: ``RUN/.lock``, held with ``flock`` for as long as train.py runs.

Two trainers on one run directory would interleave their metrics and overwrite each other's
checkpoints, so a second one is refused, naming the holder (host, pid, start time, command) that
the lock file records. The kernel drops an ``flock`` when its process dies, kill -9 included, so a
lock file left behind by a dead trainer of this host is not held by anybody: it is taken over with a
notice naming the dead holder.

Another host is a different matter: where ``flock`` only works within one machine (NFS mounted with
``nolock`` or ``local_lock``, Lustre's ``localflock``), a live run on another node holds no lock this
node can see. A lock file naming another host is therefore refused even when ``flock`` succeeds, with
one line naming that run; ``--break-lock`` (train.py) takes it over once the user has checked that run
is gone (e.g. a job killed on a node that has since been given back).

A filesystem without file locks at all (``flock`` fails with ENOLCK, EOPNOTSUPP or ENOSYS: Lustre
mounted without ``flock``, some FUSE filesystems) gets a notice and the same judgement from the lock
file alone: another host's lock is refused as above, this host's is refused while its pid is alive.
Refusing to run there instead would make train.py unusable on common cluster scratch filesystems;
what is lost is only the detection of two trainers started within the same instant.

The lock is taken before anything reads or writes the run directory (``--resume`` included); if
the directory did not exist and the run fails before writing into it, it is removed again.

Holding the lock, a run without ``--resume`` checks that the directory holds no other run
(:func:`check_fresh_run`): a fresh run into a used directory would replace ``last.pt`` and keep the old
``best.pt`` and pictures beside its own config, and ``python -m model`` would then serve the old weights
under the new config. It is refused, naming ``--resume``, another ``--out`` and ``--overwrite``, which
removes what train.py and ``python -m model`` wrote there (and nothing else) before the run starts.
"""
from __future__ import annotations

import datetime
import errno
import fcntl
import json
import os
import shutil
import socket
import sys
from pathlib import Path

from model.training.disk_full import reporting
from pipeline.errors import ConfigError

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
#: flock's answers on a filesystem that has no file locks (as opposed to "somebody holds it").
NO_LOCKS = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS}


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
            self._fd, no_locks = _lock(self.path)
            if no_locks:
                self.notices.append(f"notice: {self.path}: this filesystem has no file locks (flock: {no_locks}); "
                                    "judging a previous lock by the host and pid it names")
            try:
                previous = _read(self._fd)
                if previous:
                    self.notices.append(_take_over(self.path, previous, flock_held=not no_locks,
                                                   break_lock=self.break_lock))
            except BaseException:
                os.close(self._fd)
                self._fd = None
                raise
            self._me = _me()
            os.ftruncate(self._fd, 0)
            os.pwrite(self._fd, (json.dumps(self._me) + "\n").encode(), 0)
        return self

    def __exit__(self, *exc) -> None:
        if self._fd is None:
            return
        try:
            # Not if --break-lock elsewhere has taken the file over meanwhile: then it is that run's.
            if _same_file(self.path, self._fd) and _read(self._fd) == self._me:
                self.path.unlink()
        finally:
            os.close(self._fd)  # releases the flock
            self._fd = None
        if self._created_dir:
            try:
                self.run_dir.rmdir()  # only succeeds if the failed run wrote nothing there
            except OSError:
                pass


def _lock(path: Path) -> tuple[int, str]:
    """An fd of ``path`` holding an exclusive flock, and "" — or, where the filesystem has no locks,
    the fd and flock's error name. ConfigError naming the holder if a live process holds it."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read(fd)
            os.close(fd)
            raise _in_use(path, holder) from None
        except OSError as err:
            if err.errno not in NO_LOCKS:
                os.close(fd)
                raise
            return fd, errno.errorcode.get(err.errno, str(err.errno))
        if _same_file(path, fd):
            return fd, ""
        os.close(fd)  # the holder released and removed the file between our open and our flock: retry


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


def _same_file(path: Path, fd: int) -> bool:
    try:
        return os.stat(path).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
        return False


def _read(fd: int) -> dict | None:
    raw = os.pread(fd, 4096, 0)
    try:
        info = json.loads(raw)
    except ValueError:
        return None
    return info if isinstance(info, dict) else None


def _me() -> dict:
    return {"host": socket.gethostname(), "pid": os.getpid(),
            "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "command": " ".join(getattr(sys, "orig_argv", sys.argv))}


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
