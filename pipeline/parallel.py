"""CPU parallelism shared by preshard and the synthetic generator: core count, an ordered
process-pool map with bounded look-ahead, and a progress bar that is a no-op when disabled.
"""
from __future__ import annotations

import os
from collections import deque
from typing import Any, Callable, Iterable, Iterator, TypeVar

from .errors import UserError

T = TypeVar("T")
R = TypeVar("R")


def usable_cores() -> int:
    """Cores this process may run on (the affinity mask, not the machine's total): the default
    worker/thread count of preshard, the synthetic generator and the loader."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def ordered_map(fn: Callable[[T], R], tasks: Iterable[T], workers: int, *, caller: str) -> Iterator[tuple[T, R]]:
    """Yield ``(task, fn(task))`` in task order, computed in ``workers`` spawned processes.

    At most ``4 × workers`` tasks are in flight, so memory stays bounded however many tasks
    there are (a task's result may hold image bytes). With one worker or one task everything
    runs in this process. ``caller`` names the public function in the error raised when a worker
    dies, which in practice means a script that spawned workers without a ``__main__`` guard.
    """
    tasks = list(tasks)
    if workers <= 1 or len(tasks) <= 1:
        for task in tasks:
            yield task, fn(task)
        return
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    # spawn, not fork: the caller may hold threads (torch, rich's refresh thread, DALI).
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn"))
    try:
        todo = iter(tasks)
        pending: deque = deque()
        for task in todo:
            pending.append((task, pool.submit(fn, task)))
            if len(pending) >= 4 * workers:
                break
        while pending:
            task, future = pending.popleft()
            try:
                result = future.result()
            except BrokenProcessPool:
                raise UserError(f"a worker process died. When calling {caller} from a script, put the call under "
                                "`if __name__ == '__main__':` (workers are spawned and re-import the script), "
                                "or pass workers=1") from None
            nxt = next(todo, None)
            if nxt is not None:
                pending.append((nxt, pool.submit(fn, nxt)))
            yield task, result
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


class ProgressBar:
    """One rich progress bar (description, bar, done/total, time left), or nothing when disabled."""

    def __init__(self, enabled: bool, description: str, total: int | None) -> None:
        self._bar: Any = None
        if not enabled:
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self._bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
        self._task = self._bar.add_task(description, total=total)
        self._bar.start()

    def advance(self, n: int = 1) -> None:
        if self._bar is not None:
            self._bar.advance(self._task, n)

    def stop(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None

    def __enter__(self) -> "ProgressBar":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
