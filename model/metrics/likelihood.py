"""How likely the model finds an image: the ELBO and the importance-weighted bound (IWAE), in nats and bits/dim.

The trainer's loss is SSE + β·KL. With β = 1 that is, up to a constant, the negative ELBO of a Gaussian
decoder of fixed variance σ² = ½: −log p(x|z) = Σ (x − x̂)² / (2σ²) + (D/2)·log(2πσ²) = SSE + (D/2)·log π,
D = C·H·W. This module states that constant so the bounds are real log-likelihoods of x ∈ [0, 1]^D.

IWAE (Burda, Grosse and Salakhutdinov 2016, "Importance Weighted Autoencoders", ICLR):
    log p(x) ≥ log (1/K) Σ_k w_k,   w_k = p(x|z_k) p(z_k) / q(z_k|x),   z_k ~ q(z|x),
which equals the ELBO's estimate at K = 1, is never below the mean of the same log w_k (Jensen), grows
with K in expectation, and tends to log p(x) as K → ∞. Bits per dimension on the 8-bit scale: a density
on [0, 1] gives a bin of width 1/256 the mass p(x)·256^−D, so bits/dim = (NLL + D·ln 256) / (D·ln 2).
"""
from __future__ import annotations

import math
from typing import Callable

import torch

LOG_2PI = math.log(2 * math.pi)


def gaussian_log_likelihood(mean: torch.Tensor, x: torch.Tensor, log_sigma: float | None = None) -> torch.Tensor:
    """log p(x|z) per image for the decoder mean ``mean`` (N×…): with σ² = ½ (``log_sigma`` None, the SSE
    loss's) −SSE − (D/2)·log π; with a learned σ (the σ-VAE's) −SSE/(2σ²) − D·log σ − (D/2)·log 2π."""
    d = x[0].numel()
    sse = (x.double() - mean.double()).pow(2).flatten(1).sum(1)
    if log_sigma is None:
        return -sse - 0.5 * d * math.log(math.pi)
    return -sse * (0.5 * math.exp(-2 * log_sigma)) - d * log_sigma - 0.5 * d * LOG_2PI


def log_normal(z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """log N(z; mu, diag(exp(logvar))), summed over the last dimension."""
    return -0.5 * (LOG_2PI + logvar + (z - mu).pow(2) * torch.exp(-logvar)).sum(-1)


def iwae_log_weights(x: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor,
                     decode: Callable[[torch.Tensor], torch.Tensor], k: int, *,
                     generator: torch.Generator | None = None, chunk: int = 4096,
                     log_sigma: float | None = None, eps: torch.Tensor | None = None) -> torch.Tensor:
    """log w for K posterior samples per image: [B, K] in fp64, under the decoder σ of ``log_sigma``
    (None: σ² = ½; see :func:`gaussian_log_likelihood`). The standard-normal noise is drawn from
    ``generator``, or given as ``eps`` (B×K×L; the same noise gives the same weights on every device).

    ``decode`` maps latents [N, L] to decoder means shaped like ``x`` ([N, C, H, W] in [0, 1]); it is
    called on at most ``chunk`` latents at a time, so memory does not grow with K.
    """
    if k < 1:
        raise ValueError(f"iwae needs k >= 1 samples, got {k}")
    b, latent = mu.shape
    mu, logvar = mu.double(), logvar.double()
    if eps is None:
        eps = torch.randn(b, k, latent, generator=generator, device=mu.device, dtype=torch.float64)
    elif eps.shape != (b, k, latent):
        raise ValueError(f"iwae eps must be B×K×L = {(b, k, latent)}, got {tuple(eps.shape)}")
    eps = eps.to(torch.float64)
    z = mu[:, None] + torch.exp(0.5 * logvar)[:, None] * eps  # B×K×L
    log_prior = log_normal(z, torch.zeros_like(z), torch.zeros_like(z))
    log_q = log_normal(z, mu[:, None], logvar[:, None])
    flat_z = z.reshape(b * k, latent)
    flat_x = x[:, None].expand(b, k, *x.shape[1:]).reshape(b * k, *x.shape[1:])
    log_px = torch.cat([
        gaussian_log_likelihood(decode(flat_z[i:i + chunk].to(x.dtype if x.is_floating_point() else torch.float32)),
                                flat_x[i:i + chunk], log_sigma)
        for i in range(0, b * k, chunk)
    ]).reshape(b, k)
    return log_px + log_prior - log_q


def iwae_nll(log_w: torch.Tensor) -> torch.Tensor:
    """−log (1/K) Σ_k w_k per image (nats): the IWAE bound on −log p(x)."""
    return -(torch.logsumexp(log_w, dim=1) - math.log(log_w.shape[1]))


def elbo_nll(log_w: torch.Tensor) -> torch.Tensor:
    """−(1/K) Σ_k log w_k per image (nats): the ELBO's estimate from the same samples (never below iwae_nll)."""
    return -log_w.mean(dim=1)


def bits_per_dim(nll: torch.Tensor | float, dims: int) -> torch.Tensor | float:
    """Negative log-likelihood of [0, 1]-scaled images in nats → bits per dimension on the 8-bit scale."""
    return (nll + dims * math.log(256)) / (dims * math.log(2))
