"""Stopping a run by signal: finish the step, checkpoint it, say how to resume.

While the training loop runs, SIGINT (Ctrl-C) and SIGTERM (what schedulers send before they
kill, and what torchrun sends its workers when it stops) only set a flag: the loop finishes the
step it is in, writes ``last.pt`` at that step and exits with 128 + the signal (130, 143), printing
the command that resumes. A second Ctrl-C quits at once without writing anything. Repeated
SIGTERMs change nothing: under a scheduler every process of a job gets one, and torchrun forwards
its own to the workers, so one stop arrives several times. For the same reason, under torchrun a
SIGINT less than a second after the first counts as the same Ctrl-C (the terminal delivers it to
every process, and torchrun forwards it again).

Under DDP the ranks must stop at the same step, or the ones still stepping wait forever in
DDP's gradient all-reduce. Each rank's flag is therefore all-reduced (MAX) at fixed steps, the same
on every rank, and all of them stop after the first such step that sees a flag. How often is a
trade of latency against cost: on CPU (gloo) the collective costs a small fraction of a step
(bench/RESULTS.md, "Stop flags under DDP"), so it runs every step; on CUDA reading its
result syncs the device, which would stall the kernel queue every step, so it runs at the log
points, where train.py syncs anyway, and a stop waits at most one log interval (``log_every_s``,
2 s by default), far inside any scheduler's grace period (torchrun's is 30 s).

A stop never waits for a validation: one landing in an epoch's last step writes ``last.pt`` at that
step (epoch not finished) and leaves the epoch's end to the resumed run; one landing during the
validation cuts it short (:meth:`StopSignals.until_signal`) and does the same, in one process (under
DDP the ranks would have to agree batch by batch; there the validation, on GPUs, is short). One that arrives after the
loop's last look at the flag (while the final epoch's end is written, say) is acted on right after
the loop, before the test evaluation: the checkpoint policy (model/training/step.py) asks
:meth:`StopSignals.should_stop` once more there.

Outside the loop (data preparation, the final evaluation and pictures) nothing is pending that a
checkpoint could save: there a signal stops the program at once (see ``pipeline.errors.cli_entry``).
"""
from __future__ import annotations

import os
import shlex
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterable, Iterator

import torch

from pipeline.errors import Interrupted, signal_name

_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def launched_by_torchrun() -> bool:
    return "TORCHELASTIC_RUN_ID" in os.environ


class StopSignals:
    """Context manager around the training loop: a signal sets a flag; :meth:`should_stop` reads it."""

    def __init__(self, *, distributed: bool, check_every: int, device: torch.device, announce: bool = True):
        # check_every 0: the ranks compare flags only where the caller forces it (train.py's log points)
        self.distributed, self.check_every, self.device = distributed, max(0, check_every), device
        self.announce = announce
        self.received: int | None = None  # the first stop signal this process got
        self.agreed: int | None = None  # the signal every rank stops for (single process: ``received``)
        self._received_at = 0.0
        self._same_press = 1.0 if launched_by_torchrun() else 0.0
        self._previous: dict[int, object] = {}

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            for signum in _SIGNALS:
                if signal.getsignal(signum) is not signal.SIG_IGN:  # e.g. SIGINT of a shell's background job
                    self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame) -> None:
        now = time.monotonic()
        if self.received is None:
            self.received, self._received_at = signum, now
            if self.announce:
                # os.write, not print: this runs between two bytecodes of whatever the loop was doing.
                os.write(2, f"\n{signal_name(signum)}: stopping after this step, once its checkpoint is written "
                            "(Ctrl-C again to quit without saving)\n".encode())
        elif signum == signal.SIGINT and now - self._received_at > self._same_press:
            raise Interrupted(signum)

    class Cut(Exception):
        """Raised by :meth:`until_signal`'s iterator: a stop signal arrived while it was being read."""

    def until_signal(self, batches: Iterable[Any]) -> Iterator[Any]:
        """``batches``, cut short by a stop signal (:class:`Cut`) in a single process, so that a stop does
        not wait for a whole validation; under DDP unchanged (a rank leaving alone would hang the others)."""
        for batch in batches:
            if self.received is not None and not self.distributed:
                raise self.Cut
            yield batch

    def should_stop(self, step: int, *, force: bool = False) -> bool:
        """Whether to stop after ``step``. Under DDP every rank must call this after every step (and
        with ``force`` at the same other points): the ranks agree every ``check_every`` steps."""
        if not self.distributed:
            self.agreed = self.received
            return self.agreed is not None
        if not force and (not self.check_every or step % self.check_every):
            return False
        import torch.distributed as dist

        flag = torch.tensor(self.received or 0, dtype=torch.int32, device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        value = int(flag.item())
        self.agreed = value or None
        return value != 0


def resume_command(run_dir: str | os.PathLike) -> str:
    """The command that continues this run: this program as it was started, its arguments replaced
    by ``--out RUN_DIR --resume`` (the checkpoint holds the rest); under torchrun, the torchrun line."""
    own = sys.argv[1:]
    head = _torchrun_head(own) if launched_by_torchrun() else None
    if head is None:
        argv = list(getattr(sys, "orig_argv", [sys.executable, *sys.argv]))
        head = argv[:len(argv) - len(own)]
    return shlex.join([*head, "--out", str(run_dir), "--resume"])


def _torchrun_head(own: list[str]) -> list[str]:
    """torchrun's command line up to the training script, read from the parent process (Linux);
    a generic torchrun line where that cannot be read."""
    try:
        parent = Path(f"/proc/{os.getppid()}/cmdline").read_bytes().decode().split("\0")[:-1]
    except OSError:
        parent = []
    if parent and parent[len(parent) - len(own):] == own:
        head = parent[:len(parent) - len(own)]
        if len(head) > 1 and Path(head[1]).name == "torchrun":
            head = head[1:]  # "python .../torchrun" is how the kernel ran the torchrun script
        return head
    return ["torchrun", f"--nproc_per_node={os.environ.get('LOCAL_WORLD_SIZE', '1')}", sys.argv[0]]
