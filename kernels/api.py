"""The public loss ops: each validates its inputs, asks ``resolve_impl`` which implementation runs,
and calls either the plain-PyTorch reference (``kernels.reference``) or the fused Triton path
(``kernels.ops``). The fused ops are imported only where Triton is installed.

``grad_in_forward`` (``sse``, ``sigmoid_sse``, ``vae_loss``) picks where the fused path computes
the gradient w.r.t. the prediction: written during the forward (default; the backward is one
multiply) or recomputed by a second kernel in the backward. fp16 inputs always recompute. The
reasoning and the byte counts are in ``kernels.ops.sse``; the reference ignores the argument.
"""
from typing import Optional, Tuple, Union

import torch

from .checks import check_kl, check_latents, check_pair
from .impl import HAS_TRITON, resolve_impl
from .reference import LossParts, reparam_kl_ref, sigmoid_sse_ref, sse_ref, vae_loss_ref

if HAS_TRITON:
    from .ops.reparam_kl import reparam_kl_triton
    from .ops.sse import sigmoid_sse_triton, sse_triton
    from .ops.vae_loss import vae_loss_triton


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


def sse(x_hat: torch.Tensor, x: torch.Tensor, impl: str = "auto", *, grad_in_forward: bool = True) -> torch.Tensor:
    """Per-sample Σ_{C,H,W}(x̂ − x)², shape [B], fp32. Any shape B×…, contiguous or channels_last."""
    check_pair("x_hat", x_hat, "x", x)
    if resolve_impl(impl, x_hat.device) == "torch":
        return sse_ref(x_hat, x)
    return sse_triton(x_hat, x, grad_in_forward)


def sigmoid_sse(logits: torch.Tensor, x: torch.Tensor, impl: str = "auto", *,
                grad_in_forward: bool = True) -> torch.Tensor:
    """Per-sample Σ_{C,H,W}(sigmoid(logits) − x)², shape [B], fp32; the sigmoid is fused in."""
    check_pair("logits", logits, "x", x)
    if resolve_impl(impl, logits.device) == "torch":
        return sigmoid_sse_ref(logits, x)
    return sigmoid_sse_triton(logits, x, grad_in_forward)


def vae_loss(out: torch.Tensor, x: torch.Tensor, kl: torch.Tensor, beta: Union[float, torch.Tensor], *,
             logits: bool = True, impl: str = "auto", grad_in_forward: bool = True) -> LossParts:
    """loss = mean_b(SSE_b + β·KL_b) with rec = mean_b(SSE_b) and kl = mean_b(KL_b), 0-dim fp32 each.

    ``out`` are decoder logits (``logits=True``: the sigmoid is applied inside the kernel) or
    images in [0, 1]; ``x`` the targets, same shape; ``kl`` the per-sample KL [B] from
    :func:`reparam_kl`. ``beta`` may be a float or a 0-dim tensor (a tensor avoids recompiles
    under torch.compile while KL annealing changes it). ``impl``: see :func:`resolve_impl`.
    """
    check_pair("out", out, "x", x)
    check_kl(kl, out.shape[0], out.device)
    if resolve_impl(impl, out.device) == "torch":
        return vae_loss_ref(out, x, kl, beta, logits=logits)
    return vae_loss_triton(out, x, kl, beta, logits, grad_in_forward)
