"""What a run shows while it trains and leaves behind: metrics.jsonl, the progress bar and epoch
tables, GPU utilisation (NVML) and the matmul peak behind the MFU line, TensorBoard, and the pictures.

Sections (each keeps the notes of the module it was):

    metrics_log      metrics.jsonl: one JSON object per log point and per evaluation; the list of log sinks
    progress         the live progress bar and the table per epoch
    gpu_util         GPU utilisation sampled with NVML while work runs
    peak             the device's achieved matmul FLOP/s: the MFU line's denominator
    tensorboard_log  optional TensorBoard events (tensorboard: true)
    artifacts        the pictures: training curves, reconstructions, samples, a latent walk, failures
"""
from __future__ import annotations

import contextlib
import io
import json
import math
import numbers
from dataclasses import dataclass
from pathlib import Path
import statistics
import threading
import time
from typing import Any, Iterable, Iterator, Optional, Sequence

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table
import torch

from model.training.checkpoint import append_line, write_text
from model.training.checkpoint import atomic_write
from model.training.checkpoint import reporting
from model.training.step import config_beta_at
from pipeline.errors import ConfigError


# ====================================================================================================
# metrics_log
# metrics.jsonl: one JSON object per logged training step and per evaluation.
#
# Records carry ``kind`` ("train", "val", "test"), ``step`` and ``epoch``. On ``--resume`` the file is
# cut back to the checkpoint's step, so that lines logged after the last checkpoint of an interrupted
# run (stopped, killed, or out of disk space) are not repeated: the resumed file reads like an
# uninterrupted run's. The cut rewrites the file atomically, and an append that fails is undone
# (see :mod:`model.training.checkpoint`); a last line torn by kill -9 mid-append is dropped on reading.
# Only a resumed run reads the file: a new run starts it afresh, whatever an earlier run left there.
# ====================================================================================================
class MetricsLog:
    """Appends records to ``path``; inert on ranks other than 0 (``path`` None)."""

    def __init__(self, path: str | Path | None):
        self.path = Path(path) if path else None
        self.records: list[dict[str, Any]] = []

    def truncate_after(self, step: int, epochs_done: int) -> None:
        """On resume: read the file, keep train records up to ``step`` and validation records of the
        ``epochs_done`` finished epochs (records count epochs from 1); drop everything else, test records included."""
        if self.path and self.path.exists():
            self.records = _read(self.path)
        keep = [r for r in self.records
                if (r["kind"] == "train" and r["step"] <= step)
                or (r["kind"] == "val" and r["epoch"] <= epochs_done)]
        self._rewrite(keep)

    def reset(self) -> None:
        """A new run: an empty file."""
        self._rewrite([])

    def write(self, record: dict[str, Any], **readings: Any) -> None:
        """As one of :class:`LogSinks`: the record as it is. Readings of the machine stay out: this file holds
        the run's own numbers, which a resumed run continues and the training-log plot reads."""
        self.log(record)

    def log(self, record: dict[str, Any]) -> None:
        record = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}
        if self.path:
            append_line(self.path, json.dumps(record) + "\n")
        self.records.append(record)

    def _rewrite(self, records: list[dict[str, Any]]) -> None:
        if self.path:
            write_text(self.path, "".join(json.dumps(r) + "\n" for r in records))
        self.records = records


def _read(path: Path) -> list[dict[str, Any]]:
    foreign = "it was not written by this trainer (delete or repair it to resume)"
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path} is not UTF-8 text (byte {err.start}); {foreign}") from None
    records = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except (json.JSONDecodeError, RecursionError):
            if i == len(lines) - 1:
                break  # torn by a kill mid-append; the resume cuts back past it anyway
            raise ConfigError(f"{path} line {i + 1} is not JSON; {foreign}") from None
        if not isinstance(record, dict) or not {"kind", "step", "epoch"} <= set(record):
            raise ConfigError(f"{path} line {i + 1} is not a metrics record (kind, step, epoch); {foreign}")
        records.append(record)
    return records


class LogSinks:
    """The one list of where the loop's records go: metrics.jsonl (:class:`MetricsLog`), TensorBoard
    (:class:`TensorBoardLog`) and, while an epoch runs, its progress bar (:class:`EpochProgress`). Each
    takes a record in its own form (``write(record, **readings)``); the loop sends it once."""

    def __init__(self, *sinks: Any):
        self.sinks = list(sinks)

    def write(self, record: dict[str, Any], **readings: Any) -> None:
        """``record`` (kind, step, epoch and its numbers) to every sink; ``readings``: the machine's state
        (GPU utilisation), for the sinks that draw curves."""
        for sink in self.sinks:
            sink.write(record, **readings)

    @contextlib.contextmanager
    def showing(self, bar: "EpochProgress") -> Iterator["EpochProgress"]:
        """``bar`` running, and among the sinks, for the ``with`` block (one epoch)."""
        with bar:
            self.sinks.append(bar)
            try:
                yield bar
            finally:
                self.sinks.remove(bar)


# ====================================================================================================
# progress
# What the trainer prints: a live progress bar per epoch and a metrics table per epoch.
#
# Only rank 0 prints (other ranks get a quiet console). The bar shows the values of the last log
# interval, so drawing it never forces a device sync.
# ====================================================================================================
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

    def retarget(self, epoch: int, epochs: int, steps: int) -> None:
        """A new length for this epoch and the run (a budget's re-plan)."""
        self.progress.update(self.task, total=steps, ep=f"{epoch + 1}/{epochs}")

    def update(self, *, loss: float, rec: float, kl: float, ips: float, mfu: float | None = None) -> None:
        stats = f"loss {loss:,.1f}  SSE {rec:,.1f}  KL {kl:,.1f}  {ips:,.0f} img/s"
        if mfu is not None:
            stats += f"  MFU {100 * mfu:.1f}%"
        self.progress.update(self.task, stats=stats)

    def write(self, record: dict[str, Any], **readings: Any) -> None:
        """As one of :class:`LogSinks`: a train record's loss terms and rate on the bar (it shows no other kind)."""
        if record["kind"] == "train":
            self.update(loss=record["loss"], rec=record["rec"], kl=record["kl"], ips=record["images_per_s"],
                        mfu=record.get("mfu"))

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


# ====================================================================================================
# gpu_util
# GPU utilization sampled with NVML while work runs: "is my GPU busy?".
#
# NVML's utilization counter is the share of the last sample period in which at least one kernel
# ran on the GPU; sampling it from a background thread costs the training loop nothing. Where there
# is no GPU or no nvidia-ml-py, the sampler is inert and reports ``None`` — the caller prints "n/a".
# ====================================================================================================
def nvml_handle(pynvml, device_index: int):
    """NVML's handle for torch's ``cuda:<device_index>``.

    NVML numbers every GPU in the machine and ignores CUDA_VISIBLE_DEVICES, so under
    ``CUDA_VISIBLE_DEVICES=3`` (or a scheduler that sets it) torch's cuda:0 is NVML's GPU 3:
    the device is matched by UUID, and by index only where torch cannot tell its UUID."""
    import torch

    try:
        uuid = str(torch.cuda.get_device_properties(device_index).uuid)
    except Exception:  # older torch without .uuid, or no device properties
        return pynvml.nvmlDeviceGetHandleByIndex(device_index)
    return pynvml.nvmlDeviceGetHandleByUUID(uuid if uuid.startswith(("GPU-", "MIG-")) else f"GPU-{uuid}")


class GpuUtilSampler:
    """Context manager: samples GPU utilization (%) of ``device_index`` every ``interval`` seconds.

    >>> with GpuUtilSampler() as s:
    ...     run_training_steps()
    >>> s.mean  # None where unmeasurable
    """

    def __init__(self, device_index: int = 0, interval: float = 0.05):
        self.device_index = device_index
        self.interval = interval
        self.samples: list[float] = []
        self._taken = 0  # samples[:_taken] were read by take()
        self.reason: Optional[str] = None
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._handle = None
        self._nvml = None

    def __enter__(self) -> "GpuUtilSampler":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        try:
            import torch

            if not torch.cuda.is_available():
                self.reason = "no CUDA device"
                return
            import pynvml  # provided by nvidia-ml-py

            pynvml.nvmlInit()
            self._nvml = pynvml
            self._handle = nvml_handle(pynvml, self.device_index)
        except ImportError:
            self.reason = "nvidia-ml-py not installed"
            return
        except Exception as err:  # NVML missing in a container, permissions, ...
            self.reason = f"NVML unavailable: {err}"
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="gpu-util-sampler", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.samples.append(float(self._nvml.nvmlDeviceGetUtilizationRates(self._handle).gpu))
            except Exception as err:
                self.reason = f"NVML read failed: {err}"
                return
            time.sleep(self.interval)

    def stop(self) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join(timeout=2)
            self._thread = None

    def reset(self) -> None:
        """Drop samples taken so far (e.g. during warm-up) and keep sampling."""
        self.samples.clear()
        self._taken = 0

    def take(self) -> Optional[float]:
        """Mean of the samples since the last ``take`` (None: none since): one log interval's utilization,
        where :attr:`mean` keeps averaging from the start."""
        end = len(self.samples)  # the thread only appends: what is counted here stays counted
        fresh, self._taken = self.samples[self._taken:end], end
        return statistics.fmean(fresh) if fresh else None

    @property
    def mean(self) -> Optional[float]:
        return statistics.fmean(self.samples) if self.samples else None

    @property
    def busy_fraction(self) -> Optional[float]:
        """Share of samples at ≥ 90 % utilization: how often the GPU was saturated."""
        if not self.samples:
            return None
        return sum(s >= 90 for s in self.samples) / len(self.samples)


# ====================================================================================================
# peak
# The device's achieved matmul FLOP/s in the AMP dtype: the denominator of the MFU line.
#
# Measured (a large bf16/fp32 matmul), not read from a spec sheet, so the ratio is honest on any
# device, including this project's CPU machines. The numerator is :mod:`model.flops`.
# ====================================================================================================
@dataclass
class MFU:
    """images/s → model FLOPs utilisation: counted FLOPs per image (forward + backward) ÷ the measured matmul peak."""

    flops_per_image: int
    peak: float

    def __call__(self, images_per_s: float) -> float:
        return images_per_s * self.flops_per_image / self.peak


def mfu_meter(model_cfg: Any, rt: Any) -> MFU | None:
    """The MFU line's meter on CUDA, None elsewhere (counting FLOPs imports torch._dynamo, ~1.5 s: only worth
    it where the line is shown)."""
    if rt.device.type != "cuda":
        return None
    from model.flops import vae_flops_per_image

    return MFU(vae_flops_per_image(model_cfg), measure_matmul_peak(rt.device, rt.amp_dtype or torch.float32))


def measure_matmul_peak(device: str | torch.device, dtype: torch.dtype = torch.bfloat16,
                        n: int | None = None, seconds: float = 0.5, windows: int = 4) -> float:
    """Achieved FLOP/s of a square matmul on ``device``: the denominator of MFU.

    The best of ``windows`` timed windows, not their mean: a peak is what the device can do, and
    a window slowed by other load would understate it (and push MFU past 100 %)."""
    device = torch.device(device)
    n = n or (8192 if device.type == "cuda" else 1024)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(3):
        a @ b
    sync()
    best = 0.0
    for _ in range(windows):
        iters, t0 = 0, time.perf_counter()
        while True:
            a @ b
            iters += 1
            if iters % 4 == 0:
                sync()
                if time.perf_counter() - t0 >= seconds / windows:
                    break
        best = max(best, 2.0 * n**3 * iters / (time.perf_counter() - t0))
    return best


# ====================================================================================================
# tensorboard_log
# Optional TensorBoard events (``tensorboard: true``): RUN/tensorboard/, beside metrics.jsonl.
#
# Off by default, and free when off: tensorboard is imported only when a log is enabled (rank 0 of a
# run with the key on); a disabled log does nothing and makes no folder. On ``--resume`` the writer
# gets ``purge_step`` (SummaryWriter's: TensorBoard's reader hides the events at that step and later
# that the interrupted run wrote), so the curves read like an uninterrupted run's, as metrics.jsonl
# does. A full disk becomes one DiskFull line. View with ``tensorboard --logdir runs/``.
# ====================================================================================================
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

    def write(self, record: dict[str, Any], **readings: Any) -> None:
        """As one of :class:`LogSinks`: the record's numbers and the machine's ``readings`` as curves under the
        record's kind (``train/loss``, ``train/gpu_util``, ``val/elbo``)."""
        self.scalars(record["step"], {**record, **readings}, record["kind"])

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


# ====================================================================================================
# artifacts
# The run directory's pictures: training curves, reconstructions, samples, a latent walk, failures.
#
# Plotting takes plain CPU tensors/arrays (images B×3×H×W in [0, 1]) so that it never touches the
# model or the device; train.py gathers the images, this module draws them. matplotlib runs with the
# Agg backend: no display is needed. Each picture is rendered in memory and replaced atomically, so a
# full disk or a kill leaves the previous picture (or none), never half a PNG.
# ====================================================================================================
def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _hwc(img: torch.Tensor | np.ndarray) -> np.ndarray:
    arr = img.detach().float().cpu().numpy() if isinstance(img, torch.Tensor) else np.asarray(img, dtype=np.float32)
    return np.clip(arr.transpose(1, 2, 0), 0.0, 1.0)


def image_grid(images: torch.Tensor, nrow: int, pad: int = 2) -> np.ndarray:
    """Tile B×3×H×W images into one H'×W'×3 array, ``nrow`` images per row, white padding."""
    b, _, h, w = images.shape
    rows = (b + nrow - 1) // nrow
    grid = np.ones((rows * (h + pad) + pad, nrow * (w + pad) + pad, 3), dtype=np.float32)
    for i in range(b):
        r, c = divmod(i, nrow)
        y, x = pad + r * (h + pad), pad + c * (w + pad)
        grid[y:y + h, x:x + w] = _hwc(images[i])
    return grid


def save_figure(fig, path: Path) -> Path:
    buffer = io.BytesIO()
    try:
        fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    finally:
        pyplot().close(fig)
    return atomic_write(path, buffer.getbuffer())


#: Terms the objective adds to the train records (model/losses/objective.py), each drawn in a panel of its
#: own when a run logged it: key → title.
EXTRA_PANELS = {
    "rec_nll": "reconstruction term: Gaussian NLL / image",
    "sigma": "decoder σ (σ-VAE)",
    "kl_penalty": "KL term under free bits: Σ_j max(λ, E KL_j)",
    "kl_dims_under_floor": "latent dimensions under the free-bits floor",
    "perceptual": "perceptual term P (VGG features)",
    "ssim_loss": "structural term S = 1 − (MS-)SSIM",
}


def loss_terms(train: Sequence[dict[str, Any]], config: dict[str, Any] | None = None) -> str:
    """What the logged total loss is made of, e.g. "SSE + β·KL" or "Gaussian NLL (learned σ) + β·Σ max(λ, KL_j)
    + 0.1·perceptual": from the config when given, else from the terms the records hold."""
    has = lambda key: any(key in r for r in train)  # noqa: E731
    cfg = config or {}
    recon = cfg.get("recon") or ("gaussian" if has("rec_nll") else "sse")
    parts = [{"sse": "SSE", "gaussian_learned_sigma": "Gaussian NLL (learned σ)",
              "gaussian_optimal_sigma": "Gaussian NLL (optimal σ)"}.get(recon, "Gaussian NLL")]
    parts.append("β·Σ max(λ, KL_j)" if cfg.get("free_bits") or has("kl_penalty") else "β·KL")
    weight = lambda key: f"{cfg[key]:g}" if cfg.get(key) else "w"  # noqa: E731
    if cfg.get("perceptual_weight") or has("perceptual"):
        parts.append(f"{weight('perceptual_weight')}·perceptual")
    if cfg.get("ssim_weight") or has("ssim_loss"):
        parts.append(f"{weight('ssim_weight')}·(1 − {'MS-SSIM' if cfg.get('ssim_scales', 1) > 1 else 'SSIM'})")
    return " + ".join(parts)


def plot_training_log(records: Iterable[dict[str, Any]], path: str | Path, *, schedule: str | None = None,
                      config: dict[str, Any] | None = None, total_steps: int | None = None) -> Path:
    """training_log.png: total loss (titled with the terms it is made of), reconstruction (SSE/sample) and
    KL vs step, train and val; the KL weight β; then one panel per term the objective added (EXTRA_PANELS).

    β: with ``config`` and ``total_steps``, the schedule's value at every step of the run (the β of the
    update that ends at each step, as train.py computes it) with the logged steps marked on it;
    otherwise the logged steps only. The panel is titled with the KL schedule (``schedule``, else the
    config's, else a record's ``kl_schedule``)."""
    plt = pyplot()
    records = list(records)
    train = [r for r in records if r.get("kind") == "train"]
    val = [r for r in records if r.get("kind") == "val"]
    extras = [key for key in EXTRA_PANELS if any(r.get(key) is not None for r in train)]
    cols = 2 if not extras else 3
    rows = -(-(4 + len(extras)) // cols)
    fig, grid = plt.subplots(rows, cols, figsize=(6 * cols, 4 * rows), squeeze=False)
    axes = list(grid.ravel())
    for ax in axes[4 + len(extras):]:
        fig.delaxes(ax)
    panels = (("loss", f"total loss ({loss_terms(train, config)})"), ("rec", "reconstruction SSE / image"),
              ("kl", "KL / image"))
    for ax, (key, title) in zip(axes, panels):
        if train:
            ax.plot([r["step"] for r in train], [r[key] for r in train], label="train", lw=1.2)
        val_key = {"loss": "elbo_loss", "rec": "rec", "kl": "kl"}[key]
        if val:
            ax.plot([r["step"] for r in val], [r[val_key] for r in val], "o-",
                    label="val" + (" (−ELBO: SSE + KL, β=1)" if key == "loss" else ""))
        _decorate(ax, title)
    if train and min(r["rec"] for r in train) > 0:
        axes[1].set_yscale("log")
    schedule = schedule or (config or {}).get("kl_schedule") or next(
        (r["kl_schedule"] for r in records if r.get("kl_schedule")), None)
    _beta_panel(axes[3], train, config, total_steps, schedule)
    for ax, key in zip(axes[4:], extras):
        points = [(r["step"], r[key]) for r in train if r.get(key) is not None]
        ax.plot(*zip(*points), lw=1.2, color="tab:green", label="train")
        _decorate(ax, EXTRA_PANELS[key])
    fig.tight_layout()
    return save_figure(fig, Path(path))


def _decorate(ax, title: str) -> None:
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("step")
    ax.grid(alpha=0.3)
    if ax.lines:
        ax.legend()


def _beta_panel(ax, train: list[dict[str, Any]], config: dict[str, Any] | None, total_steps: int | None,
                schedule: str | None) -> None:
    logged = [(r["step"], r["beta"]) for r in train if r.get("beta") is not None]
    if config is not None and total_steps:
        # train.py draws β for 0-based step s before the update; the record of that update says step s + 1
        betas = [config_beta_at(s, config, total_steps) for s in range(total_steps)]
        ax.plot(range(1, total_steps + 1), betas, lw=1.2, color="tab:purple", label="schedule (every step)")
        if logged:
            ax.plot(*zip(*logged), ".", color="black", ms=3, label="logged steps")
    elif logged:
        ax.plot(*zip(*logged), lw=1.2, color="tab:purple", label="train (logged steps)")
    if ax.lines:
        ax.set_ylim(bottom=0)
    _decorate(ax, "β schedule" + (f" ({schedule})" if schedule else ""))
    ax.set_ylabel("β (KL weight)")


class FirstImages:
    """The first ``n`` images of a pass and their keys, read along it (called with each batch): the faces of
    reconstructions.png and interpolation.png, taken from the closing pass over the test split instead of
    a loader of their own. Copies: a loader may reuse its buffers."""

    def __init__(self, n: int):
        self.n, self.images, self.keys = n, [], []

    def __call__(self, x: torch.Tensor, keys: Sequence[str]) -> None:
        take = self.n - len(self.keys)
        if take > 0:
            self.images.append(x[:take].clone())
            self.keys += list(keys[:take])

    @property
    def full(self) -> bool:
        return len(self.keys) >= self.n

    def read(self, batches: Iterable[tuple[torch.Tensor, Sequence[str]]]) -> "FirstImages":
        """Take them from ``batches`` (the first ones only)."""
        for x, keys in batches:
            self(x, keys)
            if self.full:
                break
        return self

    @property
    def batch(self) -> torch.Tensor:
        return torch.cat(self.images)


def plot_pairs(originals: torch.Tensor, reconstructions: torch.Tensor, path: str | Path, *, title: str,
               labels: Sequence[str] | None = None) -> Path:
    """Originals on the top row, their reconstructions below; optional per-column labels."""
    plt = pyplot()
    n = originals.shape[0]
    fig, axes = plt.subplots(2, n, figsize=(1.4 * n, 3.4 if labels else 3.0), squeeze=False)
    for i in range(n):
        for row, imgs in enumerate((originals, reconstructions)):
            ax = axes[row][i]
            ax.imshow(_hwc(imgs[i]))
            ax.set_xticks([])
            ax.set_yticks([])
        if labels:
            axes[0][i].set_title(labels[i], fontsize=7)
    axes[0][0].set_ylabel("input")
    axes[1][0].set_ylabel("recon.")
    fig.suptitle(title)
    return save_figure(fig, Path(path))


def plot_samples(images: torch.Tensor, path: str | Path, *, title: str = "samples: decode(z), z ~ N(0, I)") -> Path:
    """samples.png: a square-ish grid of generated images."""
    plt = pyplot()
    nrow = int(np.ceil(np.sqrt(images.shape[0])))
    fig, ax = plt.subplots(figsize=(8, 8 * ((images.shape[0] + nrow - 1) // nrow) / nrow + 0.4))
    ax.imshow(image_grid(images, nrow))
    ax.axis("off")
    ax.set_title(title)
    return save_figure(fig, Path(path))


def plot_interpolation(start: torch.Tensor, end: torch.Tensor, walk: torch.Tensor, path: str | Path,
                       *, keys: tuple[str, str] = ("", "")) -> Path:
    """interpolation.png: the two test faces at the ends, decoded latents between them."""
    plt = pyplot()
    row = torch.cat([start[None], walk, end[None]])
    fig, ax = plt.subplots(figsize=(1.3 * row.shape[0], 1.9))
    ax.imshow(image_grid(row, row.shape[0]))
    ax.axis("off")
    ax.set_title(f"latent walk {keys[0]} → {keys[1]} (ends: inputs; between: decode((1-t)·μ₀ + t·μ₁))", fontsize=9)
    return save_figure(fig, Path(path))
