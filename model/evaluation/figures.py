"""evaluation.png (KL per dimension, per-attribute error ratios, region errors, the IWAE bound by K)
and failure_modes.png (the worst images of each failure mode above their reconstructions)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from model.training.validate import Failure
from model.training.observe import pyplot, save_figure
from model.evaluation.pictures import plot_table

#: Attributes drawn in evaluation.png's ratio panel (the worst ones; all of them are in the JSON).
TOP_ATTRIBUTES = 15


def plot_evaluation(ev: dict[str, Any], path: Path) -> Path:
    plt = pyplot()
    fig, axes = plt.subplots(2, 2, figsize=(13, 8.5))
    _kl_panel(axes[0][0], ev)
    _attribute_panel(axes[0][1], ev)
    _region_panel(axes[1][0], ev)
    _iwae_panel(axes[1][1], ev)
    fig.suptitle(f"evaluation of {ev.get('split', '?')} ({ev['count']:,} images): PSNR {ev['psnr_db']:.2f} dB, "
                 f"SSIM {ev['ssim']:.3f}, sharpness {ev['sharpness_ratio']:.2f}, active units "
                 f"{ev['active_units']}/{ev['latent_dim']}", fontsize=11)
    fig.tight_layout()
    return save_figure(fig, path)


def _kl_panel(ax, ev: dict[str, Any]) -> None:
    rows = ev["kl_per_dim"]
    colours = ["tab:blue" if r["active"] else "tab:gray" for r in rows]
    ax.bar(range(len(rows)), [r["kl"] for r in rows], color=colours, width=1.0)
    ax.set_title(f"KL per latent dimension, sorted (grey: inactive, Cov_x E[z_u] ≤ {ev['active_threshold']})", fontsize=9)
    ax.set_xlabel("dimensions by KL")
    ax.set_ylabel("mean KL (nats)")


def _attribute_panel(ax, ev: dict[str, Any]) -> None:
    rows = [r for r in ev.get("attributes") or [] if r["ratio"] is not None][:TOP_ATTRIBUTES]
    if not rows:
        ax.text(0.5, 0.5, ev.get("attributes_note") or "no attribute has enough images", ha="center", va="center",
                wrap=True, fontsize=9)
        ax.axis("off")
        return
    rows = rows[::-1]
    ax.barh([f"{r['attribute']} ({r['count_with']})" for r in rows], [r["ratio"] for r in rows],
            color=["tab:red" if r["ratio"] > 1 else "tab:green" for r in rows])
    ax.axvline(1.0, color="black", lw=0.8)
    ax.set_title("MSE/pixel with the attribute ÷ without (worst first; images with it)", fontsize=9)
    ax.tick_params(axis="y", labelsize=7)


def _region_panel(ax, ev: dict[str, Any]) -> None:
    reg = ev["regions"]
    ax.bar(["face ellipse", "outside (hair, background)"], [reg["face_mse_per_pixel"], reg["outside_mse_per_pixel"]],
           color=["tab:blue", "tab:orange"])
    ax.set_ylabel("MSE / pixel")
    div = ev.get("diversity_ratio")
    ax.set_title(f"error by region (outside ÷ face = {reg['outside_to_face']:.2f})"
                 + (f"; diversity ratio {div:.2f}" if div is not None else ""), fontsize=9)


def _iwae_panel(ax, ev: dict[str, Any]) -> None:
    by_k = ev.get("nll_iwae_by_k")
    if not by_k:
        ax.text(0.5, 0.5, "no IWAE bound (iwae_images = 0)", ha="center", va="center")
        ax.axis("off")
        return
    ks = [int(k) for k in by_k]
    ax.plot(ks, list(by_k.values()), marker="o")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("importance samples K")
    ax.set_ylabel("−log p(x) bound (nats / image)")
    ax.set_title(f"IWAE bound tightens with K: {ev['bits_per_dim']:.3f} bits/dim at K = {ev['iwae_k']} "
                 f"({ev['iwae_images']} images)", fontsize=9)


def plot_failure_modes(worst: dict[str, list[Failure]], path: Path) -> Path | None:
    """One pair of rows per mode: the worst inputs, their reconstructions below."""
    rows, labels, row_labels = [], [], []
    for mode, examples in worst.items():
        if not examples:
            continue
        value = "sharpness" if mode == "blur" else "MSE"
        rows += [[e.image for e in examples], [e.reconstruction for e in examples]]
        labels += [[f"{e.key}\n{value} {e.value:.3g}" for e in examples], [""] * len(examples)]
        row_labels += [mode, ""]
    if not rows:
        return None
    return plot_table(rows, path, title="the worst images per failure mode, inputs above their reconstructions",
                      cell_labels=labels, row_labels=row_labels)
