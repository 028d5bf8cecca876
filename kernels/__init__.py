"""The VAE loss path as fused Triton kernels, each beside its plain-PyTorch reference.

    z, kl = reparam_kl(mu, logvar)                 # z = mu + eps·exp(½·logvar), KL per sample
    parts = vae_loss(logits, x, kl, beta)          # mean_b(Σ(sigmoid(logits) − x)² + β·KL_b)

Every op takes ``impl="auto" | "triton" | "torch"``, resolved by :func:`resolve_impl` (Triton on
CUDA, the reference elsewhere, Triton's interpreter on CPU when TRITON_INTERPRET=1). Inputs may
be fp32, bf16 or fp16 (fp64 too, for gradcheck); sums accumulate in fp32 and the per-sample and
total losses are fp32.
"""
from typing import Optional, Tuple, Union

import torch

from .checks import KernelInputError, check_latents, check_pair
from .reference import LossParts, reparam_kl_ref, sigmoid_sse_ref, sse_ref
from .vae_loss import HAS_TRITON, resolve_impl, vae_loss

if HAS_TRITON:
    from .reparam_kl import reparam_kl_triton
    from .sse import sigmoid_sse_triton, sse_triton

__all__ = ["reparam_kl", "sse", "sigmoid_sse", "vae_loss", "resolve_impl", "LossParts", "KernelInputError"]


def reparam_kl(mu: torch.Tensor, logvar: torch.Tensor, eps: Optional[torch.Tensor] = None, *,
               seed: Union[int, torch.Tensor, None] = None, impl: str = "auto") -> Tuple[torch.Tensor, torch.Tensor]:
    """z = mu + eps·exp(½·logvar) and KL_b = −½·Σ_d(1 + logvar − mu² − exp(logvar)).

    mu, logvar: B×D (rows may be strided, e.g. from ``h.chunk(2, dim=1)``). Returns z (dtype of
    mu) and kl [B] fp32. Without ``eps`` the noise is drawn in the kernel (Philox, regenerated in
    the backward); ``seed`` (int or 1-element int tensor on the device) fixes it, otherwise it is
    drawn from torch's generator, so ``torch.manual_seed`` makes runs reproducible. The torch
    reference draws its noise with ``torch.randn`` instead: same distribution, different numbers.
    """
    check_latents(mu, logvar, eps)
    if resolve_impl(impl, mu.device) == "torch":
        return reparam_kl_ref(mu, logvar, eps, seed=seed)
    return reparam_kl_triton(mu, logvar, eps, seed=seed)


def sse(x_hat: torch.Tensor, x: torch.Tensor, impl: str = "auto") -> torch.Tensor:
    """Per-sample Σ_{C,H,W}(x̂ − x)², shape [B], fp32. Any shape B×…, contiguous or channels_last."""
    check_pair("x_hat", x_hat, "x", x)
    if resolve_impl(impl, x_hat.device) == "torch":
        return sse_ref(x_hat, x)
    return sse_triton(x_hat, x)


def sigmoid_sse(logits: torch.Tensor, x: torch.Tensor, impl: str = "auto") -> torch.Tensor:
    """Per-sample Σ_{C,H,W}(sigmoid(logits) − x)², shape [B], fp32; the sigmoid is fused in."""
    check_pair("logits", logits, "x", x)
    if resolve_impl(impl, logits.device) == "torch":
        return sigmoid_sse_ref(logits, x)
    return sigmoid_sse_triton(logits, x)
