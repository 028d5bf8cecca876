"""The run directory's pictures: training curves, reconstructions, samples, a latent walk, failures.

Plotting takes plain CPU tensors/arrays (images B×3×H×W in [0, 1]) so that it never touches the
model or the device; train.py gathers the images, this module draws them. matplotlib runs with the
Agg backend: no display is needed. Each picture is rendered in memory and replaced atomically, so a
full disk or a kill leaves the previous picture (or none), never half a PNG.
"""
from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch

from model.training.disk_full import atomic_write


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


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The records of a metrics.jsonl file."""
    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_training_log(records: Iterable[dict[str, Any]], path: str | Path, *, schedule: str | None = None) -> Path:
    """training_log.png, a 2×2 grid: total loss, reconstruction (SSE/sample) and KL vs step, train and
    val; and the KL weight β of the train records vs step, titled with the KL schedule (``schedule``,
    else a record's ``kl_schedule``, when either names it)."""
    plt = pyplot()
    records = list(records)
    train = [r for r in records if r.get("kind") == "train"]
    val = [r for r in records if r.get("kind") == "val"]
    fig, grid = plt.subplots(2, 2, figsize=(12, 8))
    axes = grid.ravel()
    panels = (("loss", "total loss (SSE + β·KL)"), ("rec", "reconstruction SSE / image"), ("kl", "KL / image"))
    for ax, (key, title) in zip(axes, panels):
        if train:
            ax.plot([r["step"] for r in train], [r[key] for r in train], label="train", lw=1.2)
        val_key = {"loss": "elbo_loss", "rec": "rec", "kl": "kl"}[key]
        if val:
            ax.plot([r["step"] for r in val], [r[val_key] for r in val], "o-", label="val" + (" (β=1)" if key == "loss" else ""))
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend()
    if train and min(r["rec"] for r in train) > 0:
        axes[1].set_yscale("log")
    schedule = schedule or next((r["kl_schedule"] for r in records if r.get("kl_schedule")), None)
    betas = [(r["step"], r["beta"]) for r in train if r.get("beta") is not None]
    ax = axes[3]
    if betas:
        ax.plot(*zip(*betas), lw=1.2, color="tab:purple", label="train (logged steps)")
        ax.legend()
        ax.set_ylim(bottom=0)
    ax.set_title("β schedule" + (f" ({schedule})" if schedule else ""))
    ax.set_xlabel("step")
    ax.set_ylabel("β (KL weight)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, Path(path))


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
