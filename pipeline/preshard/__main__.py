"""``python -m pipeline.preshard``: run the CLI (see :mod:`pipeline.preshard.cli`)."""
from __future__ import annotations

from .cli import main

if __name__ == "__main__":  # spawned validation workers import this module too; they must not run main
    raise SystemExit(main())
