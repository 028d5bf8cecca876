"""User-facing errors and stops: one readable line, no library traceback.

Every CLI in the project wraps its ``main`` in :func:`cli_entry`, so bad input (a missing split
file, a corrupt JPEG, a bad config value) or a full disk ends the program with ``error: <message>``
and exit code 2 instead of a deep traceback, and a stop by signal (Ctrl-C = SIGINT, or the SIGTERM
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


def disk_full_message(path: str | os.PathLike, err: OSError) -> str:
    """"disk full while writing PATH: 1.2 MB free on /mount (No space left on device)"."""
    where = Path(path).resolve()
    probe = next((p for p in (where, *where.parents) if p.exists()), Path("/"))
    mount = next((p for p in (probe, *probe.parents) if os.path.ismount(p)), probe)
    try:
        free = f"{shutil.disk_usage(probe).free / 1e6:,.1f} MB free on {mount}"
    except OSError:
        free = f"free space on {mount} unknown"
    return f"disk full while writing {path}: {free} ({err.strerror or os.strerror(err.errno)})"


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
    """Decorator for a CLI's ``main``: a UserError or a full disk → ``error: …`` and exit code 2;
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
                if not is_disk_full(err):
                    raise
                _error_line(disk_full_message(err.filename or os.getcwd(), err))
                return 2

    return wrapper
