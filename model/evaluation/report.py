"""The evaluation as a rich table: each number with what it says about the three failure modes."""
from __future__ import annotations

from typing import Any


def evaluation_table(ev: dict[str, Any], *, title: str | None = None):
    from rich.table import Table

    t = Table(title=title or f"evaluation: {ev.get('split', '?')}, {ev['count']:,} images", show_lines=False)
    t.add_column("metric")
    t.add_column("value", justify="right")
    t.add_column("reads as")

    def row(name: str, value: Any, fmt: str, note: str = "") -> None:
        t.add_row(name, "—" if value is None else format(value, fmt), note)

    row("MSE / pixel", ev["mse_per_pixel"], ".5f", "through the posterior mean")
    row("PSNR (dB)", ev["psnr_db"], ".2f", "mean of per-image PSNR")
    row("SSIM", ev["ssim"], ".4f", "Wang et al. 2004, 11×11 Gaussian σ 1.5")
    row("ELBO (β = 1)", ev["elbo"], ",.1f", "−(SSE + KL) per image, as the trainer logs it")
    row("−log p(x) IWAE (nats)", ev["nll_iwae"], ",.1f",
        f"K = {ev['iwae_k']}, {ev['iwae_images']} images; ELBO's: {_fmt(ev.get('nll_elbo'), ',.1f')}; "
        f"{ev.get('likelihood', '')}")
    row("bits / dim", ev["bits_per_dim"], ".4f", "IWAE bound on the 8-bit scale")
    row("active units", ev["active_units"], "d", f"of {ev['latent_dim']} (Cov_x E(z_u) > {ev['active_threshold']})")
    row("sharpness ratio", ev["sharpness_ratio"], ".3f", "high-freq. energy kept (1 = as sharp as the input): blur")
    reg = ev["regions"]
    row("MSE face / outside", reg["face_mse_per_pixel"], ".5f",
        f"outside {reg['outside_mse_per_pixel']:.5f} (×{reg['outside_to_face']:.2f}): backgrounds")
    worst = [r for r in ev.get("attributes") or [] if r["ratio"] is not None][:3]
    if worst:
        t.add_row("worst attributes", f"×{worst[0]['ratio']:.2f}",
                  ", ".join(f"{r['attribute']} ×{r['ratio']:.2f} ({r['count_with']})" for r in worst) + ": accessories")
    elif ev.get("attributes_note"):
        t.add_row("attributes", "—", ev["attributes_note"])
    row("diversity ratio", ev.get("diversity_ratio"), ".3f", "samples' spread ÷ test images' (< 1: average face)")
    if ev.get("recon_to_mean_face") is not None:
        row("to the mean face", ev["recon_to_mean_face"], ".4f",
            f"reconstructions; inputs {ev['input_to_mean_face']:.4f}, samples {ev['sample_to_mean_face']:.4f}")
    row("FID", ev.get("fid"), ".2f", ev.get("fid_protocol") if ev.get("fid") is not None else ev.get("fid_note", ""))
    return t


def _fmt(value: Any, fmt: str) -> str:
    return "—" if value is None else format(value, fmt)
