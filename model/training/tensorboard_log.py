"""Optional TensorBoard events (``tensorboard: true``): RUN/tensorboard/, beside metrics.jsonl.

Off by default, and free when off: tensorboard is imported only when a log is enabled (rank 0 of a
run with the key on); a disabled log does nothing and makes no folder. On ``--resume`` the writer
gets ``purge_step`` (SummaryWriter's: TensorBoard's reader hides the events at that step and later
that the interrupted run wrote), so the curves read like an uninterrupted run's, as metrics.jsonl
does. A full disk becomes one DiskFull line. View with ``tensorboard --logdir runs/``.
"""
from __future__ import annotations

import math
import numbers
from pathlib import Path
from typing import Any, Iterable, Iterator

import torch

from model.training.artifacts import image_grid
from model.training.disk_full import reporting
from pipeline.errors import ConfigError

#: metrics.jsonl bookkeeping keys: the step is the x axis, kind and epoch are not curves.
_BOOKKEEPING = {"kind", "step", "epoch"}
MISSING = ("tensorboard: true needs the tensorboard package: pip install tensorboard "
           "(or the project's [tensorboard] extra)")


def _number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def flatten(metrics: dict, prefix: str = "") -> dict[str, float]:
    """Nested dicts of numbers → {"a/b": number}; lists, strings, None and non-finite values dropped."""
    out: dict[str, float] = {}
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, name + "/"))
        elif _number(value):
            out[name] = float(value)
    return out


class TensorBoardLog:
    """SummaryWriter on ``run_dir/tensorboard``, or a no-op when ``enabled`` is false."""

    def __init__(self, run_dir: Path, enabled: bool, purge_step: int | None = None):
        self.dir = Path(run_dir) / "tensorboard"
        self.writer = None
        self._step = 0
        self._kept: torch.Tensor | None = None
        if not enabled:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ConfigError(MISSING) from None
        with reporting(self.dir):
            self.writer = SummaryWriter(log_dir=str(self.dir), purge_step=purge_step)

    enabled = property(lambda self: self.writer is not None)

    def _at(self, step: int) -> int:
        self._step = max(self._step, step)
        return step

    def scalars(self, step: int, values: dict[str, Any], prefix: str) -> None:
        """``prefix/key`` for each finite number in ``values`` (None, bools, strings, dicts skipped)."""
        if not self.enabled:
            return
        with reporting(self.dir):
            for key, value in values.items():
                if key not in _BOOKKEEPING and _number(value):
                    self.writer.add_scalar(f"{prefix}/{key}", float(value), self._at(step))

    def evaluation(self, step: int, metrics: dict) -> None:
        """evaluation.json's numbers, nested dicts flattened: ``eval/regions/inside``."""
        if self.enabled:
            self.scalars(step, flatten(metrics), "eval")

    def images(self, step: int, tag: str, images: torch.Tensor, nrow: int = 8) -> None:
        """A B×3×H×W batch in [0, 1] as one grid image (``nrow`` per row, white padding)."""
        if not self.enabled:
            return
        grid = image_grid(images.detach().float().cpu(), min(nrow, images.shape[0]))
        with reporting(self.dir):
            self.writer.add_image(tag, grid, self._at(step), dataformats="HWC")

    def keep_first(self, batches: Iterable[Any], n: int = 8) -> Iterable[Any]:
        """``batches`` unchanged; an enabled log keeps the first batch's first ``n`` images for :meth:`pictures`."""
        return self._keeping(batches, n) if self.enabled else batches

    def _keeping(self, batches: Iterable[Any], n: int) -> Iterator[Any]:
        for i, batch in enumerate(batches):
            if i == 0:  # a copy: a loader may reuse its buffers
                self._kept = (batch[0] if isinstance(batch, (tuple, list)) else batch)[:n].detach().clone()
            yield batch

    @torch.no_grad()
    def pictures(self, step: int, model: torch.nn.Module, *, seed: int, autocast, n_samples: int = 16) -> None:
        """``reconstructions`` (kept images over their posterior-mean reconstructions), ``samples`` (fixed z)."""
        if not self.enabled:
            return
        was_training, device = model.training, next(model.parameters()).device
        model.eval()
        try:
            gen = torch.Generator(device=device).manual_seed(seed)
            z = torch.randn(n_samples, model.cfg.latent_dim, generator=gen, device=device)
            with autocast():
                samples = model.decode(z)
                x = self._kept
                recon = model.reconstruct(x) if x is not None else None
        finally:
            model.train(was_training)
        if recon is not None:
            self.images(step, "reconstructions", torch.cat([x.float().cpu(), recon.float().cpu()]), nrow=x.shape[0])
        self.images(step, "samples", samples, nrow=8)

    def hparams(self, cfg: dict, metrics: dict) -> None:
        """Config (lists as text) and final metrics as ``hparam/KEY``, in this folder (add_hparams makes a subfolder)."""
        if not self.enabled:
            return
        from torch.utils.tensorboard.summary import hparams

        hp = {k: str(v) if isinstance(v, (list, tuple)) else v for k, v in cfg.items()
              if isinstance(v, (bool, int, float, str, list, tuple))}
        final = {f"hparam/{k}": v for k, v in flatten(metrics).items()}
        with reporting(self.dir):
            for summary in hparams(hp, final):
                self.writer.file_writer.add_summary(summary, self._step)
            for tag, value in final.items():
                self.writer.add_scalar(tag, value, self._step)

    def close(self) -> None:
        writer, self.writer = self.writer, None
        if writer is not None:
            with reporting(self.dir):
                writer.close()

    def __enter__(self) -> "TensorBoardLog":
        return self

    def __exit__(self, exc_type, *exc: Any) -> None:
        try:
            self.close()
        except Exception:
            if exc_type is None:  # else the error already on its way is the one to report
                raise
