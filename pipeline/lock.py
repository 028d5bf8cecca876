"""One writer per output folder for preshard and the synthetic generator: ``OUT/.TOOL.lock``, held with ``flock``.

Two runs on one ``--out`` would rename each other's temporary files away and interleave their state
(two presharded halves, a tree drawn twice at once), so a second run is refused with one line naming
the holder that the lock file records. The kernel drops an ``flock`` when its process dies (kill -9
included), so a lock file left by a dead run holds nothing and is simply taken over: a rerun resumes.
Where the filesystem has no file locks (some network and FUSE mounts) the run goes on unguarded, as
it did before there was a lock; train.py's run lock (model/training/checkpoint.py) is the stricter one,
because a training run lives for hours and across hosts.
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
from typing import Iterator

from .errors import UserError

#: flock's answers on a filesystem without file locks (as opposed to "somebody holds it").
_NO_LOCKS = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS}


def lock_name(tool: str) -> str:
    """The lock file's name inside the folder, e.g. ``.preshard.lock``."""
    return f".{tool}.lock"


@contextlib.contextmanager
def one_writer(folder: str | os.PathLike, tool: str) -> Iterator[None]:
    """Hold ``folder``'s lock for ``tool`` while inside (the folder must exist); UserError if another
    live ``tool`` holds it. The lock file is removed on the way out."""
    path = Path(folder) / lock_name(tool)
    fd = _take(path, tool)
    me = {"host": socket.gethostname(), "pid": os.getpid(),
          "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
          "command": " ".join(getattr(sys, "orig_argv", sys.argv))}
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(me) + "\n").encode(), 0)
        yield
    finally:
        try:
            if _same_file(path, fd):
                path.unlink()
        finally:
            os.close(fd)


def _take(path: Path, tool: str) -> int:
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise UserError(f"{path.parent} is being written by another {tool} run ({holder}; lock file {path}): "
                            f"wait for it to end, stop it, or pick another --out") from None
        except OSError as err:
            if err.errno in _NO_LOCKS:
                return fd
            os.close(fd)
            raise
        if _same_file(path, fd):
            return fd
        os.close(fd)  # the holder ended and removed the file between our open and our flock: try again


def _same_file(path: Path, fd: int) -> bool:
    try:
        return os.stat(path).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
        return False


def _holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0))
    except ValueError:
        info = None
    if not isinstance(info, dict):
        return "a process that is starting"
    return (f"pid {info.get('pid', '?')} on host {info.get('host', '?')} since {info.get('started', '?')}: "
            f"{info.get('command', '?')}")
