"""The one way in for data: CelebA (or synthetic faces) → WebDataset shards → image batches.

Heavy imports (torch, DALI) happen lazily so that ``python -m pipeline.preshard``
and ``python -m pipeline.synthetic`` start fast and need neither.
"""
from __future__ import annotations

import os

from .errors import ConfigError, DataError, UserError

__all__ = ["make_loader", "preshard", "write_synthetic_celeba", "usable_cores", "DataError", "ConfigError",
           "UserError"]


def usable_cores() -> int:
    """Cores this process may run on (the affinity mask, not the machine's total): the default
    worker/thread count of preshard, the synthetic generator and the loader."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)

_LAZY = {
    "make_loader": ("pipeline.loader", "make_loader"),
    "preshard": ("pipeline.preshard", "preshard"),
    "write_synthetic_celeba": ("pipeline.synthetic", "write_synthetic_celeba"),
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'pipeline' has no attribute {name!r}")
