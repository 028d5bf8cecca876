"""Fused reparameterization + per-sample KL: forward and backward each one pass over mu, logvar.

Forward:  z = mu + eps·σ with σ = exp(½·logvar);  KL_b = −½·Σ_d (1 + logvar − mu² − σ²)
Backward: dmu = dz + dKL_b·mu;  dlogvar = ½·dz·eps·σ + ½·dKL_b·(σ² − 1)

The noise is either a given ``eps`` tensor or generated in the kernel with Philox
(``tl.randn(seed, b·D + d)``): the backward regenerates the same numbers from the saved seed
instead of storing a B×D eps tensor (one write and one read saved, and no eps buffer kept alive
between forward and backward). The seed is a 1-element int64 tensor on the device, drawn from
torch's generator when not given, so ``torch.manual_seed`` makes runs reproducible without a
host sync.
"""
from typing import Optional, Tuple

import torch
import triton
import triton.language as tl

from ..checks import acc_dtype, inner_contiguous
from ..errors import KernelInputError
from ..impl import interpreting
from .utils import Launcher, acc_tl, wrap_triton

# Philox offsets are int32 element indices b·D + d.
MAX_ELEMENTS = 2**31 - 1


@triton.jit
def _load_or_draw_eps(eps_ptr, seed_ptr, rows, rows64, cols, D, stride_eps, mask,
                      HAS_EPS: tl.constexpr, ACC: tl.constexpr):
    """The noise tile: given ``eps``, or Philox ``randn(seed, b·D + d)``. Forward and backward both
    call this, so the backward regenerates exactly the forward's numbers."""
    if HAS_EPS:
        eps = tl.load(eps_ptr + rows64[:, None] * stride_eps + cols[None, :], mask=mask, other=0.0).to(ACC)
    else:
        eps = tl.randn(tl.load(seed_ptr), rows[:, None] * D + cols[None, :]).to(ACC)
    return eps


@triton.jit
def _reparam_kl_fwd_kernel(mu_ptr, lv_ptr, eps_ptr, seed_ptr, z_ptr, kl_ptr,
                           B, D, stride_mu, stride_lv, stride_eps,
                           HAS_EPS: tl.constexpr, ACC: tl.constexpr,
                           BLOCK_B: tl.constexpr, BLOCK_D: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    row_ok = rows < B
    rows64 = rows.to(tl.int64)
    kl_acc = tl.zeros([BLOCK_B], dtype=ACC)
    for d0 in range(0, D, BLOCK_D):
        cols = d0 + tl.arange(0, BLOCK_D)
        mask = row_ok[:, None] & (cols < D)[None, :]
        mu = tl.load(mu_ptr + rows64[:, None] * stride_mu + cols[None, :], mask=mask, other=0.0).to(ACC)
        lv = tl.load(lv_ptr + rows64[:, None] * stride_lv + cols[None, :], mask=mask, other=0.0).to(ACC)
        eps = _load_or_draw_eps(eps_ptr, seed_ptr, rows, rows64, cols, D, stride_eps, mask, HAS_EPS, ACC)
        std = tl.exp(0.5 * lv)
        z = mu + eps * std
        tl.store(z_ptr + rows64[:, None] * D + cols[None, :], z.to(z_ptr.dtype.element_ty), mask=mask)
        # σ² instead of a second exp(logvar): same value up to one rounding, one transcendental less.
        term = 1.0 + lv - mu * mu - std * std
        kl_acc += tl.sum(tl.where(mask, term, 0.0), axis=1)
    tl.store(kl_ptr + rows, -0.5 * kl_acc, mask=row_ok)


@triton.jit
def _reparam_kl_bwd_kernel(dz_ptr, dkl_ptr, mu_ptr, lv_ptr, eps_ptr, seed_ptr, dmu_ptr, dlv_ptr,
                           B, D, stride_dz, stride_dkl, stride_mu, stride_lv, stride_eps,
                           HAS_DZ: tl.constexpr, HAS_DKL: tl.constexpr, HAS_EPS: tl.constexpr,
                           ACC: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_D: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    row_ok = rows < B
    rows64 = rows.to(tl.int64)
    if HAS_DKL:
        # stride_dkl is 0 when the upstream KL gradient is one value broadcast over the batch.
        dkl = tl.load(dkl_ptr + rows64 * stride_dkl, mask=row_ok, other=0.0).to(ACC)[:, None]
    for d0 in range(0, D, BLOCK_D):
        cols = d0 + tl.arange(0, BLOCK_D)
        mask = row_ok[:, None] & (cols < D)[None, :]
        mu = tl.load(mu_ptr + rows64[:, None] * stride_mu + cols[None, :], mask=mask, other=0.0).to(ACC)
        lv = tl.load(lv_ptr + rows64[:, None] * stride_lv + cols[None, :], mask=mask, other=0.0).to(ACC)
        std = tl.exp(0.5 * lv)
        dmu = tl.zeros([BLOCK_B, BLOCK_D], dtype=ACC)
        dlv = tl.zeros([BLOCK_B, BLOCK_D], dtype=ACC)
        if HAS_DZ:
            dz = tl.load(dz_ptr + rows64[:, None] * stride_dz + cols[None, :], mask=mask, other=0.0).to(ACC)
            eps = _load_or_draw_eps(eps_ptr, seed_ptr, rows, rows64, cols, D, stride_eps, mask, HAS_EPS, ACC)
            dmu += dz
            dlv += 0.5 * dz * eps * std
        if HAS_DKL:
            dmu += dkl * mu
            dlv += 0.5 * dkl * (std * std - 1.0)
        tl.store(dmu_ptr + rows64[:, None] * D + cols[None, :], dmu.to(dmu_ptr.dtype.element_ty), mask=mask)
        tl.store(dlv_ptr + rows64[:, None] * D + cols[None, :], dlv.to(dlv_ptr.dtype.element_ty), mask=mask)


def _tiles(B: int, D: int) -> tuple[int, int, int]:
    """(BLOCK_B, BLOCK_D, num_warps). Several rows per program: at D=128 one row is only 256-512 B.

    The interpreter runs programs one after another in Python, so it gets bigger tiles.
    """
    block_d = min(triton.next_power_of_2(D), 1024)
    tile = 16384 if interpreting() else 2048
    block_b = max(1, min(triton.next_power_of_2(B), tile // block_d))
    return block_b, block_d, 4 if block_b * block_d <= 2048 else 8


def _check_size(B: int, D: int) -> None:
    if B * D > MAX_ELEMENTS:
        raise KernelInputError(f"reparam_kl supports at most 2^31-1 latent elements, got {B}×{D}")


def _fwd_impl(mu: torch.Tensor, logvar: torch.Tensor, eps: Optional[torch.Tensor],
              seed: Optional[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
    B, D = mu.shape
    _check_size(B, D)
    acc = acc_dtype(mu, logvar, eps)
    mu, logvar = inner_contiguous(mu), inner_contiguous(logvar)
    eps = None if eps is None else inner_contiguous(eps)
    z = torch.empty((B, D), dtype=torch.promote_types(mu.dtype, logvar.dtype), device=mu.device)
    kl = torch.empty((B,), dtype=acc, device=mu.device)
    block_b, block_d, warps = _tiles(B, D)
    wrap_triton(_reparam_kl_fwd_kernel)[(triton.cdiv(B, block_b),)](
        mu, logvar, mu if eps is None else eps, mu if seed is None else seed, z, kl,
        B, D, mu.stride(0), logvar.stride(0), 0 if eps is None else eps.stride(0),
        HAS_EPS=eps is not None, ACC=acc_tl(acc), BLOCK_B=block_b, BLOCK_D=block_d, num_warps=warps)
    return z, kl


def _fwd_fake(mu, logvar, eps, seed):
    B, D = mu.shape
    return (mu.new_empty((B, D), dtype=torch.promote_types(mu.dtype, logvar.dtype)),
            mu.new_empty((B,), dtype=acc_dtype(mu, logvar, eps)))


def _bwd_impl(dz: Optional[torch.Tensor], dkl: Optional[torch.Tensor], mu: torch.Tensor, logvar: torch.Tensor,
              eps: Optional[torch.Tensor], seed: Optional[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
    B, D = mu.shape
    acc = acc_dtype(mu, logvar, eps)
    dz = None if dz is None else inner_contiguous(dz)
    dmu = torch.empty((B, D), dtype=mu.dtype, device=mu.device)
    dlv = torch.empty((B, D), dtype=logvar.dtype, device=mu.device)
    block_b, block_d, warps = _tiles(B, D)
    wrap_triton(_reparam_kl_bwd_kernel)[(triton.cdiv(B, block_b),)](
        mu if dz is None else dz, mu if dkl is None else dkl, mu, logvar,
        mu if eps is None else eps, mu if seed is None else seed, dmu, dlv,
        B, D, 0 if dz is None else dz.stride(0), 0 if dkl is None else dkl.stride(0),
        mu.stride(0), logvar.stride(0), 0 if eps is None else eps.stride(0),
        HAS_DZ=dz is not None, HAS_DKL=dkl is not None, HAS_EPS=eps is not None,
        ACC=acc_tl(acc), BLOCK_B=block_b, BLOCK_D=block_d, num_warps=warps)
    return dmu, dlv


def _bwd_fake(dz, dkl, mu, logvar, eps, seed):
    return torch.empty_like(mu, memory_format=torch.contiguous_format), \
        torch.empty_like(logvar, memory_format=torch.contiguous_format)


reparam_kl_fwd = Launcher("reparam_kl_fwd", _fwd_impl, _fwd_fake)
reparam_kl_bwd = Launcher("reparam_kl_bwd", _bwd_impl, _bwd_fake)


class ReparamKLFunction(torch.autograd.Function):
    """(mu, logvar, eps | None, seed | None) → (z, kl); gradients for mu, logvar (and a given eps)."""

    @staticmethod
    def forward(ctx, mu, logvar, eps, seed):
        z, kl = reparam_kl_fwd(mu, logvar, eps, seed)
        # Unused outputs arrive as None instead of materialized zeros: no zero-fill launches,
        # and the kernel skips the term.
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(mu, logvar, eps, seed)
        return z, kl

    @staticmethod
    def backward(ctx, dz, dkl):
        mu, logvar, eps, seed = ctx.saved_tensors
        if dz is None and dkl is None:
            return None, None, None, None
        dmu, dlogvar = reparam_kl_bwd(dz, dkl, mu, logvar, eps, seed)
        deps = None
        if eps is not None and ctx.needs_input_grad[2] and dz is not None:
            acc = acc_dtype(mu, logvar, eps)
            deps = (dz.to(acc) * torch.exp(0.5 * logvar.to(acc))).to(eps.dtype)
        return dmu, dlogvar, deps, None


def draw_seed(device: torch.device) -> torch.Tensor:
    """A Philox seed from torch's generator for ``device``, kept on the device (no host sync)."""
    return torch.randint(0, 2**31 - 1, (1,), device=device, dtype=torch.int64)


def seed_tensor(seed: "int | torch.Tensor", device: torch.device) -> torch.Tensor:
    """A user seed as a 1-element int64 device tensor (a tensor seed avoids recompiles under compile)."""
    if isinstance(seed, torch.Tensor):
        if seed.numel() != 1 or seed.dtype.is_floating_point or seed.dtype.is_complex:
            raise KernelInputError(f"seed must be an int or a 1-element integer tensor, got {seed.dtype} "
                                   f"with {seed.numel()} elements")
        return seed.reshape(1).to(device=device, dtype=torch.int64)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise KernelInputError(f"seed must be an int or a 1-element integer tensor, got {type(seed).__name__}")
    return torch.full((1,), seed, dtype=torch.int64, device=device)


def reparam_kl_triton(mu: torch.Tensor, logvar: torch.Tensor, eps: Optional[torch.Tensor] = None, *,
                      seed: "int | torch.Tensor | None" = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """The fused path of :func:`kernels.reparam_kl` (inputs already validated)."""
    seed_t = None
    if eps is None:
        seed_t = draw_seed(mu.device) if seed is None else seed_tensor(seed, mu.device)
    return ReparamKLFunction.apply(mu, logvar, eps, seed_t)
