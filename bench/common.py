"""What every benchmark shares: timing, environment capture, a rich table, JSON output."""
from __future__ import annotations

import json
import platform
import statistics
import subprocess
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence


def env_info() -> dict[str, Any]:
    """Device, library versions and git commit: stored with every JSON result."""
    import torch

    from pipeline.parallel import usable_cores

    info: dict[str, Any] = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "host_cpu": platform.processor() or platform.machine(),
        "cpu_count": usable_cores(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "git_commit": _git_commit(),
    }
    for mod in ("triton", "nvidia.dali", "webdataset", "numpy"):
        try:
            info[mod.split(".")[-1]] = __import__(mod, fromlist=["__version__"]).__version__
        except Exception:  # not installed: recorded as absent, not an error
            info[mod.split(".")[-1]] = None
    return info


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).resolve().parent, timeout=5)
        return out.stdout.strip() or None
    except Exception:
        return None


def sync(device: Any = None) -> None:
    """Wait for queued GPU work so that wall-clock timings are honest."""
    import torch

    if torch.cuda.is_available() and (device is None or str(device).startswith("cuda")):
        torch.cuda.synchronize()


def time_repeats(fn: Callable[[], Any], repeats: int, warmup: int = 1, device: Any = None) -> list[float]:
    """Seconds per call of ``fn`` for ``repeats`` calls after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return times


def median(xs: Iterable[float]) -> float:
    return statistics.median(list(xs))


def print_table(title: str, columns: Sequence[str], rows: Iterable[Sequence[Any]], caption: str | None = None) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, caption=caption)
    for i, col in enumerate(columns):
        table.add_column(col, justify="left" if i == 0 else "right")
    for row in rows:
        table.add_row(*[_fmt(v) for v in row])
    # Non-terminal output (CI logs, files) would be squeezed to 80 columns and truncate labels.
    console = Console()
    if not console.is_terminal:
        console = Console(width=160)
    console.print(table)


def _fmt(v: Any) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.3g}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def save_json(path: str | Path | None, name: str, results: Any, settings: dict[str, Any]) -> dict[str, Any]:
    """Wrap ``results`` with env info and the exact settings; write to ``path`` if given."""
    doc = {"benchmark": name, "env": env_info(), "settings": settings, "results": results}
    if path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(doc, indent=2, default=str) + "\n")
    return doc
