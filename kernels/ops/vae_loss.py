"""The fused VAE loss total: (sigmoid-)SSE + β·KL reduced to three 0-dim tensors, and its backward.

    loss = mean_b( SSE_b + β·KL_b ),   rec = mean_b(SSE_b),   kl = mean_b(KL_b)

Forward: two launches -- the SSE kernel (which also writes the gradient w.r.t. the decoder output,
already scaled by 1/B) and a one-program finalize kernel that turns the partial sums and the
per-sample KL into loss, rec and kl. Backward: one broadcast multiply of the stored gradient by
the upstream gradient (or the recompute kernel with ``grad_in_forward=False`` and for fp16, see
``kernels.ops.sse``), and the KL gradient as a stride-0 [B] view. Nothing is read back to the host.
"""
from typing import Optional, Tuple, Union

import torch
import triton
import triton.language as tl

from ..checks import acc_dtype, rows_view
from ..errors import KernelConfigError
from ..impl import interpreting
from ..reference import LossParts
from .sse import grad_buffer_like, launch_sse, sse_bwd, stores_grad_in_forward, target_grad
from .utils import Launcher, acc_tl, wrap_triton


@triton.jit
def _finalize_kernel(partial_ptr, n_partials, kl_ptr, stride_kl, B, beta_ptr, beta_val, inv_b,
                     loss_ptr, rec_ptr, klm_ptr,
                     BETA_IS_PTR: tl.constexpr, ACC: tl.constexpr, BLOCK: tl.constexpr):
    """One program: rec = Σ partials / B, kl = Σ KL_b / B, loss = rec + β·kl (β read on the device)."""
    rec_acc = tl.zeros([BLOCK], dtype=ACC)
    for start in range(0, n_partials, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        rec_acc += tl.load(partial_ptr + offs, mask=offs < n_partials, other=0.0).to(ACC)
    kl_acc = tl.zeros([BLOCK], dtype=ACC)
    for start in range(0, B, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        kl_acc += tl.load(kl_ptr + offs.to(tl.int64) * stride_kl, mask=offs < B, other=0.0).to(ACC)
    rec = tl.sum(rec_acc, axis=0) * inv_b
    kl = tl.sum(kl_acc, axis=0) * inv_b
    if BETA_IS_PTR:
        beta = tl.load(beta_ptr).to(ACC)
    else:
        beta = beta_val
    tl.store(loss_ptr, rec + beta * kl)
    tl.store(rec_ptr, rec)
    tl.store(klm_ptr, kl)


def _fwd_impl(out: torch.Tensor, x: torch.Tensor, kl: torch.Tensor, beta_t: Optional[torch.Tensor],
              beta_f: float, sigmoid: bool, write_grad: bool
              ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    a, b = rows_view(out, x)
    B = a.shape[0]
    acc = acc_dtype(a, b)
    grad = grad_buffer_like(a) if write_grad else None
    # The gradient of mean_b(SSE_b) is 2·d/B: fold the 1/B in now so the backward is one multiply.
    partials = launch_sse(a, b, sigmoid=sigmoid, compute_loss=True, grad=grad, grad_alpha=2.0 / B)
    loss, rec, klm = (torch.empty((), dtype=acc, device=a.device) for _ in range(3))
    block = min(triton.next_power_of_2(max(partials.numel(), B)), 4096 if interpreting() else 1024)
    wrap_triton(_finalize_kernel)[(1,)](
        partials, partials.numel(), kl, kl.stride(0), B, kl if beta_t is None else beta_t, float(beta_f), 1.0 / B,
        loss, rec, klm, BETA_IS_PTR=beta_t is not None, ACC=acc_tl(acc),
        BLOCK=block, num_warps=4)
    return loss, rec, klm, (a.new_empty(0) if grad is None else grad)


def _fwd_fake(out, x, kl, beta_t, beta_f, sigmoid, write_grad):
    a, b = rows_view(out, x)
    acc = acc_dtype(a, b)
    scalars = [a.new_empty((), dtype=acc) for _ in range(3)]
    return (*scalars, grad_buffer_like(a) if write_grad else a.new_empty(0))


vae_loss_fwd = Launcher("vae_loss_fwd", _fwd_impl, _fwd_fake)


class VAELossFunction(torch.autograd.Function):
    """(out, x, kl, β tensor | None, β float, sigmoid, grad_in_forward) → (loss, rec, kl_mean), 0-dim each."""

    @staticmethod
    def forward(ctx, out, x, kl, beta_t, beta_f, sigmoid, grad_in_forward):
        needs_out, needs_x, _, needs_beta = ctx.needs_input_grad[:4]
        store = needs_out and stores_grad_in_forward(out.dtype, grad_in_forward)
        loss, rec, klm, grad = vae_loss_fwd(out, x, kl, beta_t, beta_f, sigmoid, store)
        keep_inputs = (needs_out and not store) or needs_x
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(grad if store else None, out if keep_inputs else None, x if keep_inputs else None,
                              beta_t, klm if needs_beta else None)
        ctx.beta_f, ctx.sigmoid, ctx.store, ctx.batch, ctx.kl_dtype = beta_f, sigmoid, store, out.shape[0], kl.dtype
        return loss, rec, klm

    @staticmethod
    def backward(ctx, g_loss, g_rec, g_kl):
        grad, out, x, beta_t, klm = ctx.saved_tensors
        B = ctx.batch
        # d loss/d SSE_b = d rec/d SSE_b = 1/B (already folded into the stored gradient).
        g_sse = g_loss if g_rec is None else (g_rec if g_loss is None else g_loss + g_rec)
        d_out = d_x = d_kl = d_beta = None
        if g_sse is not None and ctx.needs_input_grad[0]:
            d_out = grad * g_sse if ctx.store else sse_bwd(out, x, g_sse, ctx.sigmoid, 2.0 / B)
        if g_sse is not None and ctx.needs_input_grad[1]:
            d_x = target_grad(out, x, g_sse, ctx.sigmoid, 2.0 / B)
        if ctx.needs_input_grad[2] and (g_loss is not None or g_kl is not None):
            beta = ctx.beta_f if beta_t is None else beta_t
            d = None if g_loss is None else g_loss * beta
            d = g_kl if d is None else (d if g_kl is None else d + g_kl)
            # One value for every sample: an expanded (stride-0) view, which the reparam_kl
            # backward kernel reads as such instead of materialising B copies.
            d_kl = (d / B).to(ctx.kl_dtype).expand(B)
        if ctx.needs_input_grad[3] and g_loss is not None:
            d_beta = (g_loss * klm).to(beta_t.dtype)
        return d_out, d_x, d_kl, d_beta, None, None, None


def split_beta(beta: Union[float, torch.Tensor], device: torch.device) -> Tuple[Optional[torch.Tensor], float]:
    """(β tensor, 0.0) for a 1-element tensor, read by the kernel on the device; (None, β) for a number."""
    if isinstance(beta, torch.Tensor):
        if beta.numel() != 1:
            raise KernelConfigError(f"beta must be a number or a 1-element tensor, got shape {tuple(beta.shape)}")
        return beta.reshape(()).to(device=device, non_blocking=True), 0.0
    if isinstance(beta, bool) or not isinstance(beta, (int, float)):
        raise KernelConfigError(f"beta must be a number or a 1-element tensor, got {type(beta).__name__}")
    return None, float(beta)


def vae_loss_triton(out: torch.Tensor, x: torch.Tensor, kl: torch.Tensor, beta: Union[float, torch.Tensor],
                    logits: bool = True, grad_in_forward: bool = True) -> LossParts:
    """The fused path of :func:`kernels.vae_loss` (inputs already validated)."""
    beta_t, beta_f = split_beta(beta, out.device)
    if not torch.is_grad_enabled():
        return LossParts(*vae_loss_fwd(out, x, kl, beta_t, beta_f, bool(logits), False)[:3])
    return LossParts(*VAELossFunction.apply(out, x, kl, beta_t, beta_f, bool(logits), bool(grad_in_forward)))
