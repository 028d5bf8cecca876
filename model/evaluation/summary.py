"""From one pass's raw numbers to the keys of evaluation.json (docs/evaluation.md: "What `evaluation.json` holds").

Means are over images; ratios of sums where a ratio of means would let a few flat images dominate
(the sharpness ratio). Every number says which images it is over (``count``, ``iwae_images``,
``diversity_images``) so two evaluations can be compared honestly.
"""
from __future__ import annotations

import math
from typing import Any

import torch

from model.evaluation.collect import Collected
from model.evaluation.settings import EvalSettings
from model.metrics import attribute_errors, bits_per_dim, elbo_nll, iwae_nll, mean_distance_to, mean_pairwise_distance
from model.metrics.latent import ACTIVE_THRESHOLD
from model.metrics.regions import FACE_AXES, FACE_CENTER
from model.metrics.spectrum import CUTOFF

#: An attribute's error ratio is only computed with at least this many images on both sides.
ATTRIBUTE_MIN_COUNT = 5


def summarize(c: Collected, settings: EvalSettings, *, samples: torch.Tensor | None,
              attributes: tuple[list[str], torch.Tensor] | None, attributes_note: str | None) -> dict[str, Any]:
    """The evaluation's numbers. ``samples``: decoded prior samples (N×3×H×W, CPU) for the diversity
    keys; ``attributes``: (names, N×A bool in ``c.keys`` order), or None with ``attributes_note`` saying why."""
    p = c.per_image
    mean = lambda name: float(p[name].mean())  # noqa: E731
    out: dict[str, Any] = {
        "count": len(c.keys),
        "mse_per_pixel": mean("mse"),
        "psnr_db": mean("psnr"),
        "ssim": mean("ssim"),
        "elbo": -float((p["sse_sampled"] + p["kl"]).mean()),
        "rec": mean("sse_sampled"),
        "kl": mean("kl"),
    }
    out.update(_likelihood(c.iwae_log_w, c.pixels, settings.iwae_k))
    log_sigma = settings.decoder_log_sigma
    out["likelihood"] = ("Gaussian decoder, σ² = ½ (the SSE loss's)" if log_sigma is None
                         else f"Gaussian decoder, learned σ = {math.exp(log_sigma):.4f}")
    out.update({
        "active_units": c.latent.active_units,
        "latent_dim": int(c.latent.kl_per_dim.numel()),
        "active_threshold": ACTIVE_THRESHOLD,
        "kl_per_dim": c.latent.sorted_kl(),
        "sharpness_ratio": float(p["hf_recon"].sum() / p["hf_input"].sum().clamp_min(1e-12)),
        "sharpness_cutoff": CUTOFF,
        "regions": {
            "face_mse_per_pixel": mean("mse_face"),
            "outside_mse_per_pixel": mean("mse_outside"),
            "outside_to_face": mean("mse_outside") / max(mean("mse_face"), 1e-12),
            "ellipse": {"center": list(FACE_CENTER), "axes": list(FACE_AXES)},
        },
    })
    if attributes is not None:
        names, table = attributes
        out["attributes"] = attribute_errors(p["mse"], table, names, min_count=ATTRIBUTE_MIN_COUNT)
        out["attributes_note"] = f"ratio = MSE/pixel with ÷ without; needs {ATTRIBUTE_MIN_COUNT} images on each side"
    else:
        out["attributes"], out["attributes_note"] = None, attributes_note
    out.update(_diversity(c, samples))
    return out


def _likelihood(log_w: torch.Tensor, dims: int, k: int) -> dict[str, Any]:
    if not log_w.numel():
        return {"nll_iwae": None, "nll_elbo": None, "bits_per_dim": None, "iwae_k": k, "iwae_images": 0}
    nll, elbo = float(iwae_nll(log_w).mean()), float(elbo_nll(log_w).mean())
    ks = sorted({2**i for i in range(int(math.log2(k)) + 1)} | {k})
    return {
        "nll_iwae": nll, "nll_elbo": elbo, "bits_per_dim": bits_per_dim(nll, dims),
        "bits_per_dim_elbo": bits_per_dim(elbo, dims), "iwae_k": k, "iwae_images": int(log_w.shape[0]),
        # the same samples' bound with only the first k of them: how it tightens with K
        "nll_iwae_by_k": {str(j): float(iwae_nll(log_w[:, :j]).mean()) for j in ks},
    }


def _diversity(c: Collected, samples: torch.Tensor | None) -> dict[str, Any]:
    n = min(c.kept_inputs.shape[0], samples.shape[0] if samples is not None else 0)
    if n < 2:
        return {"diversity_ratio": None, "diversity_images": n}
    test = float(mean_pairwise_distance(c.kept_inputs[:n]))
    drawn = float(mean_pairwise_distance(samples[:n]))
    face = c.mean_face
    return {
        "diversity_ratio": drawn / max(test, 1e-12),
        "sample_pairwise_distance": drawn,
        "test_pairwise_distance": test,
        "recon_to_mean_face": float(mean_distance_to(c.kept_recons[:n], face)),
        "input_to_mean_face": float(mean_distance_to(c.kept_inputs[:n], face)),
        "sample_to_mean_face": float(mean_distance_to(samples[:n], face)),
        "diversity_images": n,
    }


def scalars_of(ev: dict | None) -> dict:
    """The evaluation's single numbers (for summary.json): no per-dimension or per-attribute lists."""
    if ev is None:
        return {}
    return {k: v for k, v in ev.items() if isinstance(v, (int, float, str)) or v is None} | {
        "regions": {k: v for k, v in ev["regions"].items() if not isinstance(v, dict)}}
