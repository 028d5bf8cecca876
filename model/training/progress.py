"""What the trainer prints: a live progress bar per epoch and a metrics table per epoch.

Only rank 0 prints (other ranks get a quiet console). The bar shows the values of the last log
interval, so drawing it never forces a device sync.
"""
from __future__ import annotations

from typing import Any

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table


def make_console(is_main: bool) -> Console:
    return Console(quiet=not is_main, highlight=False)


class EpochProgress:
    """Context manager: one rich bar for one epoch, plus a GPU-utilization sampler on CUDA."""

    def __init__(self, console: Console, epoch: int, epochs: int, steps: int, *, completed: int = 0,
                 device: torch.device | None = None):
        self.progress = Progress(TextColumn("[bold]epoch {task.fields[ep]}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[stats]}"),
                                 console=console, transient=False, disable=console.quiet)
        self.task = self.progress.add_task("train", total=steps, completed=completed,
                                           ep=f"{epoch + 1}/{epochs}", stats="")
        self._sampler = None
        if device is not None and device.type == "cuda" and not console.quiet:
            from model.training.gpu_util import GpuUtilSampler

            self._sampler = GpuUtilSampler(device.index or 0)

    def __enter__(self) -> "EpochProgress":
        self.progress.start()
        if self._sampler:
            self._sampler.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._sampler:
            self._sampler.stop()
        self.progress.stop()

    def advance(self) -> None:
        self.progress.advance(self.task)

    def update(self, *, loss: float, rec: float, kl: float, ips: float, mfu: float | None = None) -> None:
        stats = f"loss {loss:,.1f}  SSE {rec:,.1f}  KL {kl:,.1f}  {ips:,.0f} img/s"
        if mfu is not None:
            stats += f"  MFU {100 * mfu:.1f}%"
        self.progress.update(self.task, stats=stats)

    @property
    def gpu_util(self) -> float | None:
        """GPU utilization (%) averaged since the epoch started (the epoch table's)."""
        return self._sampler.mean if self._sampler else None

    def take_gpu_util(self) -> float | None:
        """GPU utilization (%) averaged since the last call: one log interval's (TensorBoard's train/gpu_util)."""
        return self._sampler.take() if self._sampler else None


def _f(v: float | None, fmt: str) -> str:
    return "—" if v is None else format(v, fmt)


def epoch_table(epoch: int | None, epochs: int, train: dict[str, Any] | None, evaluation: dict[str, Any],
                images_per_s: float | None, gpu_util: float | None, is_best: bool, *, title: str | None = None) -> Table:
    """One table: the last train log of the epoch next to the validation (or test) metrics."""
    table = Table(title=title or f"epoch {epoch}/{epochs}" + ("  (best val ELBO so far)" if is_best else ""))
    # Per image: SSE summed over pixels, KL over latents; ELBO = −(SSE + KL) with β = 1.
    for col in ("", "loss", "SSE", "MSE/px", "KL", "ELBO", "img/s", "GPU%"):
        table.add_column(col, justify="left" if not col else "right")
    if train:
        table.add_row("train", _f(train["loss"], ",.2f"), _f(train["rec"], ",.2f"),
                      _f(train["mse_per_pixel"], ".5f"), _f(train["kl"], ",.2f"), "—",
                      _f(images_per_s, ",.0f"), _f(gpu_util, ".0f"))
    name = "val" if title is None else "test"
    table.add_row(name, _f(evaluation["elbo_loss"], ",.2f"), _f(evaluation["rec"], ",.2f"),
                  _f(evaluation["mse_per_pixel"], ".5f"), _f(evaluation["kl"], ",.2f"), _f(evaluation["elbo"], ",.2f"),
                  "—" if train else _f(images_per_s, ",.0f"), "—")
    return table
