"""Input validation and memory-layout handling shared by the Triton launchers and the references.

Bad shapes or dtypes raise :class:`KernelInputError` (a ``ValueError``) with one readable line,
before any kernel sees them. Layouts the kernels cannot address directly are copied once with
``.contiguous()`` -- see :func:`rows_view` for which ones.
"""
from __future__ import annotations

import torch

from .errors import KernelInputError

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def check_float(name: str, t: torch.Tensor) -> None:
    if not isinstance(t, torch.Tensor):
        raise KernelInputError(f"{name} must be a tensor, got {type(t).__name__}")
    if t.dtype not in FLOAT_DTYPES:
        raise KernelInputError(f"{name} must be float16, bfloat16, float32 or float64, got {t.dtype}")


def check_latents(mu: torch.Tensor, logvar: torch.Tensor, eps: torch.Tensor | None) -> None:
    """mu, logvar (and eps): B×D float tensors on one device, B ≥ 1, D ≥ 1."""
    check_float("mu", mu)
    check_float("logvar", logvar)
    if mu.dim() != 2:
        raise KernelInputError(f"mu must be B×D (2-D), got shape {tuple(mu.shape)}")
    if mu.shape[0] == 0 or mu.shape[1] == 0:
        raise KernelInputError(f"mu must be non-empty, got shape {tuple(mu.shape)}")
    if logvar.shape != mu.shape:
        raise KernelInputError(f"logvar shape {tuple(logvar.shape)} differs from mu shape {tuple(mu.shape)}")
    if logvar.device != mu.device:
        raise KernelInputError(f"mu is on {mu.device} but logvar is on {logvar.device}")
    if eps is not None:
        check_float("eps", eps)
        if eps.shape != mu.shape:
            raise KernelInputError(f"eps shape {tuple(eps.shape)} differs from mu shape {tuple(mu.shape)}")
        if eps.device != mu.device:
            raise KernelInputError(f"mu is on {mu.device} but eps is on {eps.device}")


def check_pair(a_name: str, a: torch.Tensor, b_name: str, b: torch.Tensor) -> None:
    """Prediction and target: same shape B×… (≥ 2-D, non-empty), float, same device."""
    check_float(a_name, a)
    check_float(b_name, b)
    if a.dim() < 2:
        raise KernelInputError(f"{a_name} must be B×… with at least 2 dims, got shape {tuple(a.shape)}")
    if a.shape != b.shape:
        raise KernelInputError(f"{a_name} shape {tuple(a.shape)} differs from {b_name} shape {tuple(b.shape)}")
    if a.numel() == 0:
        raise KernelInputError(f"{a_name} must be non-empty, got shape {tuple(a.shape)}")
    if a.device != b.device:
        raise KernelInputError(f"{a_name} is on {a.device} but {b_name} is on {b.device}")


def check_kl(kl: torch.Tensor, batch: int, device: torch.device) -> None:
    check_float("kl", kl)
    if kl.shape != (batch,):
        raise KernelInputError(f"kl must be per-sample with shape ({batch},), got {tuple(kl.shape)}")
    if kl.device != device:
        raise KernelInputError(f"kl is on {kl.device} but the images are on {device}")


def acc_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """fp32 accumulation, or fp64 when any input is fp64 (so float64 gradcheck is meaningful)."""
    return torch.float64 if any(t is not None and t.dtype == torch.float64 for t in tensors) else torch.float32


def inner_contiguous(t: torch.Tensor) -> torch.Tensor:
    """A B×D tensor whose rows are dense (stride(1) == 1); any row stride is fine.

    ``mu, logvar = h.chunk(2, dim=1)`` gives exactly that (row stride 2·D), so the common case is
    read in place; anything else (a transposed view) is copied once.
    """
    return t if t.stride(1) == 1 or t.shape[1] == 1 else t.contiguous()


def _dense_per_sample(t: torch.Tensor) -> bool:
    """True when each sample t[i] fills exactly prod(t.shape[1:]) consecutive elements."""
    dims = sorted((s, n) for s, n in zip(t.stride()[1:], t.shape[1:]) if n != 1)
    expected = 1
    for stride, size in dims:
        if stride != expected:
            return False
        expected *= size
    return True


def rows_view(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Make a and b addressable as rows: sample i is N dense elements at i·stride(0), in the same
    element order in both tensors.

    Contiguous and channels_last pairs (what a conv decoder and the loader produce) pass through
    untouched: a per-sample sum does not care about the order of elements inside a sample, only
    that both tensors use the same one. Other layouts are copied once (one extra read+write of the
    tensor, far cheaper than a strided gather inside every kernel).
    """
    if not _dense_per_sample(a):
        a = a.contiguous()
    if not _dense_per_sample(b) or b.stride()[1:] != a.stride()[1:]:
        channels_last = (a.dim() == 4 and not a.is_contiguous()
                         and a.is_contiguous(memory_format=torch.channels_last))
        if not channels_last:
            a = a.contiguous()
        b = b.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    return a, b
