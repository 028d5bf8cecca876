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
from model.training.schedules import config_beta_at


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
