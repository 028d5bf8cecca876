"""The one way in for data: CelebA (or synthetic faces) → WebDataset shards → image batches.

Heavy imports (torch, DALI) happen lazily so that ``python -m pipeline.preshard``
and ``python -m pipeline.synthetic`` start fast and need neither.
"""
from __future__ import annotations

from .errors import ConfigError, DataError, UserError

__all__ = ["make_loader", "preshard", "write_synthetic_celeba", "DataError", "ConfigError", "UserError"]

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
