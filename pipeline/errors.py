"""User-facing errors and stops: one readable line, no library traceback.

Every CLI in the project wraps its ``main`` in :func:`cli_entry`, so bad input (a missing split
file, a corrupt JPEG, a bad config value) or any OS error on a path (a full disk, a read-only
filesystem, an ``--out`` that is a file or lies under one, a permission) ends the program with
``error: <message>`` and exit code 2 instead of a deep traceback, and a stop by signal (Ctrl-C = SIGINT, or the SIGTERM
a scheduler sends before it kills) ends it with one line and exit code 128 + the signal number
(130, 143). While a CLI runs, SIGTERM raises :class:`Interrupted` just as Ctrl-C raises
KeyboardInterrupt, so that ``finally`` blocks (temporary files, worker pools) run either way.
"""
from __future__ import annotations

import contextlib
import errno
import functools
import os
import shlex
import shutil
import signal
import sys
import threading
from pathlib import Path
from typing import Callable, Iterator

#: The errors a full disk (or an exhausted quota) gives a write.
NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


class UserError(Exception):
    """An error caused by the user's input; ``str(err)`` is shown as-is."""


class DataError(UserError):
    """Bad or missing data: CelebA source, shards, index files, manifest."""


class ConfigError(UserError):
    """Bad configuration key or value, or a checkpoint from another config."""


class Interrupted(KeyboardInterrupt):
    """A stop by signal; ``str(err)`` is the line to show, :attr:`exit_code` is 128 + the signal.

    A KeyboardInterrupt, so that code written for Ctrl-C (worker pools, DataLoader) treats
    SIGTERM the same way.
    """

    def __init__(self, signum: int = signal.SIGINT, message: str = "") -> None:
        super().__init__(message)
        self.signum = int(signum)

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def signal_name(signum: int) -> str:
    return {signal.SIGINT: "Ctrl-C (SIGINT)", signal.SIGTERM: "SIGTERM"}.get(signum, f"signal {signum}")


def is_disk_full(err: BaseException) -> bool:
    return isinstance(err, OSError) and err.errno in NO_SPACE


def _free_space(path: Path) -> str:
    """"1.2 MB free on /mount" for the filesystem ``path`` (or its nearest existing folder above) is on."""
    where = path.resolve()
    probe = next((p for p in (where, *where.parents) if p.exists()), Path("/"))
    mount = next((p for p in (probe, *probe.parents) if os.path.ismount(p)), probe)
    try:
        return f"{shutil.disk_usage(probe).free / 1e6:,.1f} MB free on {mount}"
    except OSError:
        return f"free space on {mount} unknown"


def disk_full_message(path: str | os.PathLike, err: OSError) -> str:
    """"disk full while writing PATH: 1.2 MB free on /mount (No space left on device)"."""
    return f"disk full while writing {path}: {_free_space(Path(path))} ({err.strerror or os.strerror(err.errno)})"


@contextlib.contextmanager
def writing_to(path: str | os.PathLike) -> Iterator[None]:
    """Inside, an OSError that names no file (a ``write`` on an open file, a worker's error) is taken to be
    about ``path``, the output being written: the one line then names it instead of the working directory."""
    try:
        yield
    except OSError as err:
        if err.filename is None:
            err.filename = os.fspath(path)
        raise


def _blocking_file(path: Path) -> Path | None:
    """The nearest existing path at or above ``path`` if it is not a folder (nothing can be made under it)."""
    for p in (path, *path.parents):
        if os.path.lexists(p):
            return None if p.is_dir() else p
    return None


#: errno → what to do, for the one line of an OSError on a path (see :func:`os_error_message`).
_WHAT_TO_DO = {
    errno.EACCES: "choose a path you may use, or change its permissions",
    errno.EPERM: "choose a path you may use, or change its permissions",
    errno.EROFS: "that filesystem is read-only: choose a path on a writable one",
    errno.ENOENT: "check the path",
    errno.EISDIR: "it is a folder: name a file",
    errno.ENAMETOOLONG: "choose a shorter name",
    errno.ELOOP: "a symbolic link on the path points back to itself: fix or remove it",
    errno.EMFILE: "too many open files: raise the limit (ulimit -n) or use fewer workers",
    errno.ENFILE: "too many open files on this system: close some programs or use fewer workers",
    errno.EIO: "the disk or network filesystem failed: check it, then run the command again",
    errno.EXDEV: "choose a path on one filesystem",
}


def os_error_message(err: OSError, resumable: bool = False) -> str:
    """One line for an OSError: the path it concerns and what to do (a full disk: the free space, and how to go on)."""
    if is_disk_full(err):
        if isinstance(err.filename, (str, bytes, os.PathLike)):
            line = disk_full_message(os.fsdecode(err.filename), err)
        else:  # nobody said which output: the working directory's filesystem is the best guess, and said to be one
            line = (f"disk full ({err.strerror or os.strerror(err.errno)}) while writing a file the error does not "
                    f"name; the working directory {os.getcwd()} has {_free_space(Path.cwd())}")
        how = f"run the same command to continue: {same_command()}" if resumable else f"run it again: {same_command()}"
        return f"{line}; free some space, then {how}"
    if err.errno == errno.EPIPE:
        return "the output was closed before the command finished (broken pipe)"
    name = errno.errorcode.get(err.errno or 0, "")
    reason = f"{err.strerror or str(err) or type(err).__name__}{f' ({name})' if name else ''}"
    hint = _WHAT_TO_DO.get(err.errno, "check the path and run the command again")
    if not isinstance(err.filename, (str, bytes, os.PathLike)):  # None, or a file descriptor
        return f"{reason}; {hint}"
    path = Path(os.fsdecode(err.filename))
    if err.errno in (errno.EEXIST, errno.ENOTDIR) and (blocking := _blocking_file(path)) is not None:
        where = "that is a file" if blocking == path else f"{blocking} is a file"
        return f"{path}: {where}, not a folder; name a folder that exists or can be made"
    if err.errno == errno.ENOENT and err.filename2 is None:
        missing = next((p for p in (*reversed(path.parents), path) if not os.path.lexists(p)), path)
        return f"{path}: {missing} does not exist; check the path"
    two = f" → {os.fsdecode(err.filename2)}" if isinstance(err.filename2, (str, bytes, os.PathLike)) else ""
    return f"{path}{two}: {reason}; {hint}"


def same_command() -> str:
    """This program's command line as it was typed (``sys.orig_argv``): what a user reruns."""
    return shlex.join(getattr(sys, "orig_argv", [sys.executable, *sys.argv]))


@contextlib.contextmanager
def _sigterm_raises() -> Iterator[None]:
    """While inside: SIGTERM raises :class:`Interrupted` (main thread only; restored after)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def raise_interrupted(signum: int, frame) -> None:
        raise Interrupted(signum)

    previous = signal.signal(signal.SIGTERM, raise_interrupted)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _error_line(message: str) -> None:
    from rich.console import Console

    # soft_wrap: the message stays one line however narrow the terminal is.
    Console(stderr=True).print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)


def cli_entry(main: Callable[..., int | None] | None = None, *, resumable: bool = False):
    """Decorator for a CLI's ``main``: a UserError or an OSError (see :func:`os_error_message`) → ``error: …``
    and exit code 2;
    Ctrl-C or SIGTERM → one line and 128 + the signal. Use as ``@cli_entry`` or, for a command
    whose rerun continues where it stopped, ``@cli_entry(resumable=True)`` (the line says so)."""
    if main is None:
        return functools.partial(cli_entry, resumable=resumable)

    @functools.wraps(main)
    def wrapper(*args, **kwargs) -> int:
        with _sigterm_raises():
            try:
                return int(main(*args, **kwargs) or 0)
            except UserError as err:
                _error_line(str(err))
                return 2
            except KeyboardInterrupt as err:
                signum = err.signum if isinstance(err, Interrupted) else signal.SIGINT
                line = str(err) or f"stopped by {signal_name(signum)}"
                if resumable:
                    line += f": nothing half-done looks finished; run the same command to continue: {same_command()}"
                print(line, file=sys.stderr, flush=True)
                return 128 + signum
            except OSError as err:
                _error_line(os_error_message(err, resumable))
                return 2

    return wrapper
