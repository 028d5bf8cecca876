"""One writer per output folder for preshard and the synthetic generator: ``OUT/.TOOL.lock``, held with ``flock``.

Two runs on one ``--out`` would rename each other's temporary files away and interleave their state
(two presharded halves, a tree drawn twice at once), so a second run is refused with one line naming
the holder that the lock file records. The kernel drops an ``flock`` when its process dies (kill -9
included), so a lock file left by a dead run holds nothing and is simply taken over: a rerun resumes.
Where the filesystem has no file locks (some network and FUSE mounts) the run goes on unguarded, as
it did before there was a lock; train.py's run lock (model/training/checkpoint.py) is the stricter one,
because a training run lives for hours and across hosts. Both take the lock with :func:`take` and keep
the holder's record (host, pid, start, command) with :func:`my_record`, :func:`write_record` and
:func:`read_record`; they differ only in what they make of a previous holder.
"""
from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import json
import os
import socket
import sys
from pathlib import Path
from typing import Callable, Iterator

from .errors import UserError

#: flock's answers on a filesystem without file locks (as opposed to "somebody holds it").
NO_LOCKS = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS}


def lock_name(tool: str) -> str:
    """The lock file's name inside the folder, e.g. ``.preshard.lock``."""
    return f".{tool}.lock"


@contextlib.contextmanager
def one_writer(folder: str | os.PathLike, tool: str) -> Iterator[None]:
    """Hold ``folder``'s lock for ``tool`` while inside (the folder must exist); UserError if another
    live ``tool`` holds it. The lock file is removed on the way out."""
    path = Path(folder) / lock_name(tool)
    fd, _ = take(path, lambda holder: UserError(
        f"{path.parent} is being written by another {tool} run ({_holder(holder)}; lock file {path}): "
        f"wait for it to end, stop it, or pick another --out"))
    try:
        write_record(fd, my_record())
        yield
    finally:
        try:
            if same_file(path, fd):
                path.unlink()
        finally:
            os.close(fd)


def take(path: Path, refuse: Callable[[dict | None], Exception]) -> tuple[int, str]:
    """An fd of ``path`` (created if missing) holding an exclusive flock, and "" — or, where the filesystem has
    no file locks, the fd and flock's error name (e.g. "ENOLCK"). Where a live process holds the lock, raises
    ``refuse(the record its lock file holds, or None)``; any other flock failure is raised as it is."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = read_record(fd)
            os.close(fd)
            raise refuse(holder) from None
        except OSError as err:
            if err.errno not in NO_LOCKS:
                os.close(fd)
                raise
            return fd, errno.errorcode.get(err.errno, str(err.errno))
        if same_file(path, fd):
            return fd, ""
        os.close(fd)  # the holder ended and removed the file between our open and our flock: try again


def same_file(path: Path, fd: int) -> bool:
    """Whether ``path`` still names the file open as ``fd`` (a holder removes its lock file on the way out)."""
    try:
        return os.stat(path).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
        return False


def my_record() -> dict:
    """What a lock file says about its holder: this process's host, pid, start time and command."""
    return {"host": socket.gethostname(), "pid": os.getpid(),
            "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "command": " ".join(getattr(sys, "orig_argv", sys.argv))}


def write_record(fd: int, record: dict) -> None:
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)


def read_record(fd: int) -> dict | None:
    """The lock file's record, or None where it holds none (empty: a holder that is starting; half written)."""
    try:
        info = json.loads(os.pread(fd, 4096, 0))
    except ValueError:
        return None
    return info if isinstance(info, dict) else None


def _holder(info: dict | None) -> str:
    if info is None:
        return "a process that is starting"
    return (f"pid {info.get('pid', '?')} on host {info.get('host', '?')} since {info.get('started', '?')}: "
            f"{info.get('command', '?')}")
