"""Latent-space arithmetic on a trained VAE: prior samples, walks between two codes, attribute edits.

Faces are encoded to their posterior mean μ (the deterministic code, as in ``ConvVAE.reconstruct``)
and decoded through the sigmoid. Everything here is plain tensor math in fp32, batched, without
gradients; which faces and which directions come from the callers.
"""
from __future__ import annotations

import math
from typing import Mapping

import torch

from model.vae import ConvVAE

#: How a walk between two codes moves: straight line, or along the great circle (spherical).
WALKS = ("slerp", "linear")
_BATCH = 256


def sample_latents(n: int, dim: int, *, temperature: float = 1.0, seed: int = 0) -> torch.Tensor:
    """n codes from the prior N(0, T²·I), drawn on the CPU so that a seed gives the same codes on any device."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, dim, generator=gen) * temperature


@torch.no_grad()
def encode(model: ConvVAE, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(μ, log σ²) of images B×3×H×W in [0, 1], in batches, returned on the CPU in fp32."""
    device = next(model.parameters()).device
    mus, logvars = [], []
    for chunk in images.split(_BATCH):
        mu, logvar = model.encode(chunk.to(device, torch.float32))
        mus.append(mu.float().cpu())
        logvars.append(logvar.float().cpu())
    return torch.cat(mus), torch.cat(logvars)


@torch.no_grad()
def decode(model: ConvVAE, z: torch.Tensor) -> torch.Tensor:
    """Images in [0, 1] (CPU, fp32) from codes, in batches."""
    device = next(model.parameters()).device
    return torch.cat([model.decode(chunk.to(device, torch.float32)).cpu() for chunk in z.split(_BATCH)])


def walk(a: torch.Tensor, b: torch.Tensor, steps: int, mode: str = "slerp") -> torch.Tensor:
    """``steps`` codes from ``a`` to ``b`` (both ends included).

    "slerp" follows the great circle between the two directions and interpolates the norm, so the
    codes in the middle keep the length typical of the prior instead of shrinking towards the origin
    as a straight line does (White 2016, "Sampling Generative Networks").
    """
    if mode not in WALKS:
        raise ValueError(f"unknown walk {mode!r}: expected one of {', '.join(WALKS)}")
    t = torch.linspace(0.0, 1.0, steps, dtype=torch.float32)[:, None]
    a, b = a.float(), b.float()
    if mode == "linear":
        return (1 - t) * a + t * b
    na, nb = a.norm(), b.norm()
    cos = torch.dot(a / na.clamp_min(1e-12), b / nb.clamp_min(1e-12)).clamp(-1.0, 1.0)
    omega = torch.arccos(cos)
    if float(torch.sin(omega)) < 1e-6:  # (anti)parallel: the circle is not defined, a line is as good
        return (1 - t) * a + t * b
    # slerp of the two unit vectors is a unit vector; the length goes linearly from |a| to |b|
    unit = (torch.sin((1 - t) * omega) * a / na + torch.sin(t * omega) * b / nb) / torch.sin(omega)
    return unit * ((1 - t) * na + t * nb)


def edit(mu: torch.Tensor, directions: Mapping[str, torch.Tensor], amounts: Mapping[str, float]) -> torch.Tensor:
    """μ + Σ amount·direction, for one code [D] or a batch [B, D]."""
    out = mu.float().clone()
    for name, amount in amounts.items():
        out = out + float(amount) * directions[name].float()
    return out


def sweep_amounts(span: float, steps: int) -> list[float]:
    """``steps`` evenly spaced amounts from −span to +span (0 among them when ``steps`` is odd)."""
    if steps == 1:
        return [0.0]
    return [round(-span + 2 * span * i / (steps - 1), 6) for i in range(steps)]


def kl_per_image(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(q(z|x) ‖ N(0, I)) per image, in nats."""
    return -0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(dim=1)


def mse_per_image(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean squared error per image over C·H·W (images in [0, 1])."""
    return (a.float() - b.float()).pow(2).flatten(1).mean(dim=1)


def angle_degrees(a: torch.Tensor, b: torch.Tensor) -> float:
    """The angle between two codes, for the walk's printout."""
    cos = torch.dot(a.float(), b.float()) / (a.norm() * b.norm()).clamp_min(1e-12)
    return math.degrees(math.acos(max(-1.0, min(1.0, float(cos)))))
