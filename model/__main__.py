"""``python -m model``: the commands that use a trained checkpoint (see model/use/cli.py)."""
from __future__ import annotations

from model.use.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
