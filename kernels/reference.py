"""Plain-PyTorch references of the loss path: the math the Triton kernels must reproduce.

Everything accumulates in fp32 (fp64 for fp64 inputs) whatever the input dtype, like the kernels;
autograd provides the gradients. These run on any device and are what ``impl="torch"`` uses.
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from .checks import acc_dtype, check_kl, check_latents, check_pair


class LossParts(NamedTuple):
    """0-dim fp32 tensors: loss = mean_batch(SSE + β·KL), rec = mean_batch(SSE), kl = mean_batch(KL)."""

    loss: torch.Tensor
    rec: torch.Tensor
    kl: torch.Tensor


def reparam_kl_ref(mu: torch.Tensor, logvar: torch.Tensor, eps: torch.Tensor | None = None, *,
                   seed: int | torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """z = mu + eps·exp(½·logvar) (dtype of mu) and KL = −½·Σ_d(1 + logvar − mu² − exp(logvar)) per row.

    Without ``eps`` the noise is drawn with torch (seeded by ``seed`` when given); it is not the
    same stream as the Triton kernel's Philox noise.
    """
    check_latents(mu, logvar, eps)
    acc = acc_dtype(mu, logvar, eps)
    if eps is None and seed is None:
        # randn_like, not randn(mu.shape): under torch.compile with a dynamic batch size the
        # shape is symbolic, which randn(size, generator=...) cannot trace.
        eps = torch.randn_like(mu, dtype=acc)
    elif eps is None:
        gen = torch.Generator(device=mu.device).manual_seed(int(seed))
        eps = torch.randn(mu.shape, generator=gen, device=mu.device, dtype=acc)
    m, lv = mu.to(acc), logvar.to(acc)
    z = m + eps.to(acc) * torch.exp(0.5 * lv)
    kl = -0.5 * (1 + lv - m * m - torch.exp(lv)).sum(dim=1)
    return z.to(torch.promote_types(mu.dtype, logvar.dtype)), kl


def sse_ref(x_hat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Per-sample Σ_{C,H,W} (x̂ − x)², shape [B], fp32 (fp64 for fp64 inputs)."""
    check_pair("x_hat", x_hat, "x", x)
    acc = acc_dtype(x_hat, x)
    return (x_hat.to(acc) - x.to(acc)).square().flatten(1).sum(dim=1)


def sigmoid_sse_ref(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Per-sample Σ_{C,H,W} (sigmoid(logits) − x)², shape [B], fp32 (fp64 for fp64 inputs)."""
    check_pair("logits", logits, "x", x)
    acc = acc_dtype(logits, x)
    return (torch.sigmoid(logits.to(acc)) - x.to(acc)).square().flatten(1).sum(dim=1)


def vae_loss_ref(out: torch.Tensor, x: torch.Tensor, kl: torch.Tensor, beta: float | torch.Tensor, *,
                 logits: bool = True) -> LossParts:
    """loss = mean_batch(SSE + β·KL) with SSE from ``sigmoid_sse_ref`` (logits) or ``sse_ref``."""
    rec_per_sample = sigmoid_sse_ref(out, x) if logits else sse_ref(out, x)
    check_kl(kl, out.shape[0], out.device)
    rec = rec_per_sample.mean()
    kl_mean = kl.to(rec.dtype).mean()
    return LossParts(rec + beta * kl_mean, rec, kl_mean)
