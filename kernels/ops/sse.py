"""Per-sample sum of squared errors over C·H·W, plain (x̂ − x)² or with the sigmoid fused in.

``sigmoid_sse(logits, x)`` = Σ (sigmoid(logits) − x)²: the decoder ends in logits and the sigmoid
happens in registers, so neither sigmoid(logits) nor its saved activation is ever written.

Where the gradient is computed is the ``grad_in_forward`` argument of the public ops -- a
measured-by-bytes default (no GPU was available to time it; ``python -m bench.loss`` times both
variants, rows "fused" and "fused (recompute bwd)"):

* in the forward (``grad_in_forward=True``, the default): the loss is the last op, so the forward
  already holds a, b and d = p − x in registers; it also writes grad = 2·d·p·(1 − p) (the stored
  gradient, in the input dtype) and the backward is a single broadcast multiply by the upstream
  gradient.
  Bytes per element with bf16 logits and fp32 targets (the AMP case): fwd 2+4 read + 2 write,
  bwd 2 read + 2 write = 12 B.
* recomputed in the backward (``grad_in_forward=False``): fwd 2+4 read, bwd 2+4 read + 2 write = 14 B.

With all-fp32 inputs both move 20 B/element; storing still wins on launches (the backward is one
torch multiply, no second Triton launch). The exception is fp16: a stored, not-yet-loss-scaled
gradient can underflow fp16 (GradScaler's scale only arrives with the upstream gradient), so fp16
inputs recompute in the backward, where the upstream gradient is multiplied in fp32 before the
one rounding to fp16.

The reduction is two-level and deterministic: a grid of (row tiles × column chunks) writes fp32
partial sums [B, chunks]; a per-sample sum (or, in ``vae_loss``, the finalize kernel) adds them
up. No atomics, so results are bit-reproducible run to run.
"""
from typing import Optional, Tuple

import torch
import triton
import triton.language as tl

from ..checks import acc_dtype, rows_view
from ..errors import KernelInputError
from ..impl import interpreting
from .utils import Launcher, acc_tl, wrap_triton

_MAX_GRID_Y = 65535


@triton.jit
def _sse_kernel(a_ptr, b_ptr, partial_ptr, grad_ptr, scale_ptr,
                B, N, n_chunks, stride_a, stride_b, stride_g, stride_scale, grad_alpha,
                SIGMOID: tl.constexpr, COMPUTE_LOSS: tl.constexpr, WRITE_GRAD: tl.constexpr,
                HAS_SCALE: tl.constexpr, ACC: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_N: tl.constexpr):
    """One (BLOCK_R rows × BLOCK_N columns) tile: partial Σ d² per row and/or grad_alpha·∂(d²)/∂a·scale."""
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    chunk = tl.program_id(1)
    cols = chunk * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < B
    mask = row_ok[:, None] & (cols < N)[None, :]
    rows64 = rows.to(tl.int64)
    a = tl.load(a_ptr + rows64[:, None] * stride_a + cols[None, :], mask=mask, other=0.0).to(ACC)
    b = tl.load(b_ptr + rows64[:, None] * stride_b + cols[None, :], mask=mask, other=0.0).to(ACC)
    if SIGMOID:
        p = 1.0 / (1.0 + tl.exp(-a))
    else:
        p = a
    # Masked lanes would hold sigmoid(0) − 0 = ½: zero them before they reach the sum.
    d = tl.where(mask, p - b, 0.0)
    if COMPUTE_LOSS:
        tl.store(partial_ptr + rows64 * n_chunks + chunk, tl.sum(d * d, axis=1), mask=row_ok)
    if WRITE_GRAD:
        g = grad_alpha * d
        if SIGMOID:
            g = g * p * (1.0 - p)
        if HAS_SCALE:
            # stride_scale is 0 when one upstream value is broadcast over the batch.
            s = tl.load(scale_ptr + rows64 * stride_scale, mask=row_ok, other=0.0).to(ACC)
            g = g * s[:, None]
        tl.store(grad_ptr + rows64[:, None] * stride_g + cols[None, :], g.to(grad_ptr.dtype.element_ty), mask=mask)


def _tiles(B: int, N: int) -> Tuple[int, int, int]:
    """(BLOCK_R, BLOCK_N, num_warps): 4096-element tiles on GPU (16 fp32 per thread at 8 warps);
    several rows per tile when a sample is small. The interpreter gets big tiles (fewer programs)."""
    block_n = min(triton.next_power_of_2(N), 4096)
    tile = 32768 if interpreting() else 4096
    block_r = max(1, min(triton.next_power_of_2(B), tile // block_n))
    return block_r, block_n, 8 if block_r * block_n >= 4096 else 4


def grad_buffer_like(a: torch.Tensor) -> torch.Tensor:
    """Uninitialised tensor shaped like ``a``, samples packed (stride(0) = N), same element order."""
    n = a[0].numel()
    return torch.empty_strided(a.shape, (n,) + tuple(a.stride()[1:]), dtype=a.dtype, device=a.device)


def launch_sse(a: torch.Tensor, b: torch.Tensor, *, sigmoid: bool, compute_loss: bool,
               grad: Optional[torch.Tensor], grad_alpha: float,
               scale: Optional[torch.Tensor] = None) -> Optional[torch.Tensor]:
    """Run the SSE kernel on row views (see ``checks.rows_view``). Returns the [B, chunks] partial
    sums when ``compute_loss``; writes ``grad`` (same element order as ``a``) when given."""
    B, N = a.shape[0], a[0].numel()
    block_r, block_n, warps = _tiles(B, N)
    n_chunks = triton.cdiv(N, block_n)
    if n_chunks > _MAX_GRID_Y:
        raise KernelInputError(f"samples of {N} elements are too large for the SSE kernel "
                               f"(at most {_MAX_GRID_Y * block_n})")
    acc = acc_dtype(a, b)
    partials = torch.empty((B, n_chunks), dtype=acc, device=a.device) if compute_loss else None
    wrap_triton(_sse_kernel)[(triton.cdiv(B, block_r), n_chunks)](
        a, b, a if partials is None else partials, a if grad is None else grad, a if scale is None else scale,
        B, N, n_chunks, a.stride(0), b.stride(0), 0 if grad is None else grad.stride(0),
        0 if scale is None or scale.dim() == 0 else scale.stride(0), grad_alpha,
        SIGMOID=sigmoid, COMPUTE_LOSS=compute_loss, WRITE_GRAD=grad is not None, HAS_SCALE=scale is not None,
        ACC=acc_tl(acc), BLOCK_R=block_r, BLOCK_N=block_n, num_warps=warps)
    return partials


def _fwd_impl(a: torch.Tensor, b: torch.Tensor, sigmoid: bool,
              write_grad: bool) -> Tuple[torch.Tensor, torch.Tensor]:
    a, b = rows_view(a, b)
    grad = grad_buffer_like(a) if write_grad else None
    partials = launch_sse(a, b, sigmoid=sigmoid, compute_loss=True, grad=grad, grad_alpha=2.0)
    sse = partials.sum(dim=1) if partials.shape[1] > 1 else partials.view(-1)
    return sse, (a.new_empty(0) if grad is None else grad)


def _fwd_fake(a, b, sigmoid, write_grad):
    a, b = rows_view(a, b)
    return (a.new_empty((a.shape[0],), dtype=acc_dtype(a, b)),
            grad_buffer_like(a) if write_grad else a.new_empty(0))


def _bwd_impl(a: torch.Tensor, b: torch.Tensor, scale: torch.Tensor, sigmoid: bool,
              grad_alpha: float) -> torch.Tensor:
    a, b = rows_view(a, b)
    grad = grad_buffer_like(a)
    launch_sse(a, b, sigmoid=sigmoid, compute_loss=False, grad=grad, grad_alpha=grad_alpha, scale=scale)
    return grad


def _bwd_fake(a, b, scale, sigmoid, grad_alpha):
    a, b = rows_view(a, b)
    return grad_buffer_like(a)


sse_fwd = Launcher("sse_fwd", _fwd_impl, _fwd_fake)
#: Recompute-in-backward: grad_alpha·∂(d²)/∂a·scale[row] (scale: [B], or 0-dim broadcast).
sse_bwd = Launcher("sse_bwd", _bwd_impl, _bwd_fake)


def stores_grad_in_forward(dtype: torch.dtype, grad_in_forward: bool) -> bool:
    """Whether the fused ops write the gradient in the forward pass for inputs of ``dtype``: as
    asked, except for fp16, which always recomputes (see the module docstring)."""
    return grad_in_forward and dtype != torch.float16


def per_row(g: torch.Tensor, ndim: int) -> torch.Tensor:
    """[B] (or 0-dim) upstream gradient shaped to broadcast over a B×… tensor."""
    return g.reshape((-1,) + (1,) * (ndim - 1)) if g.dim() else g


def target_grad(a: torch.Tensor, b: torch.Tensor, g: torch.Tensor, sigmoid: bool, grad_alpha: float) -> torch.Tensor:
    """∂/∂b of grad_alpha/2·Σ(p − b)²·g = −grad_alpha·(p − b)·g, in torch: targets rarely need a
    gradient, so this path is not worth a kernel."""
    acc = acc_dtype(a, b)
    p = torch.sigmoid(a.to(acc)) if sigmoid else a.to(acc)
    return (-grad_alpha * (p - b.to(acc)) * per_row(g.to(acc), a.dim())).to(b.dtype)


class SSEFunction(torch.autograd.Function):
    """(a, b, sigmoid, grad_in_forward) → per-sample Σ(p − b)², p = sigmoid(a) or a; gradients for a and b."""

    @staticmethod
    def forward(ctx, a, b, sigmoid, grad_in_forward):
        needs_a, needs_b = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        store = needs_a and stores_grad_in_forward(a.dtype, grad_in_forward)
        sse, grad = sse_fwd(a, b, sigmoid, store)
        keep_inputs = (needs_a and not store) or needs_b
        ctx.save_for_backward(grad if store else None, a if keep_inputs else None, b if keep_inputs else None)
        ctx.sigmoid, ctx.store = sigmoid, store
        return sse

    @staticmethod
    def backward(ctx, g):
        grad, a, b = ctx.saved_tensors
        da = db = None
        if ctx.needs_input_grad[0]:
            if ctx.store:
                da = grad * per_row(g, grad.dim())
            else:
                da = sse_bwd(a, b, g, ctx.sigmoid, 2.0)
        if ctx.needs_input_grad[1]:
            db = target_grad(a, b, g, ctx.sigmoid, 2.0)
        return da, db, None, None


def sse_triton(x_hat: torch.Tensor, x: torch.Tensor, grad_in_forward: bool = True) -> torch.Tensor:
    """The fused path of :func:`kernels.sse` (inputs already validated)."""
    if not torch.is_grad_enabled():
        return sse_fwd(x_hat, x, False, False)[0]
    return SSEFunction.apply(x_hat, x, False, bool(grad_in_forward))


def sigmoid_sse_triton(logits: torch.Tensor, x: torch.Tensor, grad_in_forward: bool = True) -> torch.Tensor:
    """The fused path of :func:`kernels.sigmoid_sse` (inputs already validated)."""
    if not torch.is_grad_enabled():
        return sse_fwd(logits, x, True, False)[0]
    return SSEFunction.apply(logits, x, True, bool(grad_in_forward))
