"""Writing the run directory so that neither a full disk nor kill -9 leaves a torn file.

Every file train.py writes goes through :func:`atomic_write` (a temporary file beside the target,
fsync, ``os.replace``: readers see the old file or the new one, never half of one) or
:func:`append_line` (cut back to its old end when the write fails). A full disk (ENOSPC, or an
exhausted quota, EDQUOT) becomes one :class:`DiskFull` error naming the path and the free space,
so the run ends with one line and exit code 2 while its previous checkpoint stays intact.
Temporary files left by a killed process are removed by :func:`remove_temps` once the run
directory's lock is held (nobody else can be writing them then).
"""
from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path
from typing import Iterator

from pipeline.errors import UserError, disk_full_message, is_disk_full


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
