"""The bounds of every count a user gives a CLI, and the one check that says them.

A count without an upper bound is an invitation to run until killed (``sample --n 100000`` held
1.76 GB at 5,000 faces and kept going), so every count option is checked against a range here, and
the refusal names the range and why it ends there. The bounds sit well above any sensible use: they
stop a typo (an extra zero or three), not an experiment.
"""
from __future__ import annotations

import math

from .errors import ConfigError

#: Worker processes: more than this many per core only adds start-up time and memory.
WORKERS_PER_CORE = 4
#: Worker processes whatever the core count (spawned processes each import the project).
MAX_WORKERS = 256


def check_count(option: str, value: int, low: int, high: int, why: str = "") -> int:
    """``value`` if ``low <= value <= high``, else ConfigError naming ``option``, the range and ``why`` the
    range ends where it does."""
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        tail = f" ({why})" if why else ""
        raise ConfigError(f"{option} must be in {low:,}..{high:,}{tail}, got {value!r}")
    return value


def check_number(option: str, value: float, low: float, high: float, why: str = "") -> float:
    """The same for a real number: finite and in [``low``, ``high``]."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not low <= value <= high:
        tail = f" ({why})" if why else ""
        raise ConfigError(f"{option} must be a number in {low:,g}..{high:,g}{tail}, got {value!r}")
    return value


def check_workers(option: str, value: int | None) -> int | None:
    """None (all cores) or a worker count of at most ``WORKERS_PER_CORE`` per usable core and ``MAX_WORKERS``."""
    if value is None:
        return None
    from .parallel import usable_cores

    cores = usable_cores()
    return check_count(option, value, 1, min(MAX_WORKERS, WORKERS_PER_CORE * cores),
                       f"at most {WORKERS_PER_CORE} per usable core, {cores} here, and {MAX_WORKERS} in all")
