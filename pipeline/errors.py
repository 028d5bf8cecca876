"""User-facing errors: one readable line, no library traceback.

Every CLI in the project wraps its ``main`` in :func:`cli_entry`, so bad input
(a missing split file, a corrupt JPEG, a bad config value) ends the program
with ``error: <message>`` and exit code 2 instead of a deep traceback.
"""
from __future__ import annotations

import functools
import sys
from typing import Callable


class UserError(Exception):
    """An error caused by the user's input; ``str(err)`` is shown as-is."""


class DataError(UserError):
    """Bad or missing data: CelebA source, shards, index files, manifest."""


class ConfigError(UserError):
    """Bad configuration key or value, or a checkpoint from another config."""


def cli_entry(main: Callable[..., int | None]) -> Callable[..., int]:
    """Run ``main``; turn a UserError (and Ctrl-C) into one line and exit code 2 (130)."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs) -> int:
        try:
            return int(main(*args, **kwargs) or 0)
        except UserError as err:
            from rich.console import Console

            # soft_wrap: the message stays one line however narrow the terminal is.
            Console(stderr=True).print(f"[bold red]error:[/] {err}", highlight=False, soft_wrap=True)
            return 2
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return 130

    return wrapper
