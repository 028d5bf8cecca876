"""What the kernel tests share: the devices with a Triton path, tolerances, input builders, a grad helper.

The builders draw on CPU from a seeded generator and then move the tensors, so a test sees the
same numbers on every device.
"""
from __future__ import annotations

from typing import Callable, Sequence

import pytest
import torch

from kernels.impl import interpreting

#: Where the fused path can run: CPU through Triton's interpreter (conftest sets TRITON_INTERPRET=1
#: when there is no GPU), and CUDA.
DEVICES = (["cpu"] if interpreting() else []) + (["cuda"] if torch.cuda.is_available() else [])
needs_triton_path = pytest.mark.skipif(not DEVICES, reason="no CUDA and TRITON_INTERPRET unset: no Triton path")

#: Kernel against reference, per input dtype. Both accumulate in fp32 (fp64 for fp64) but round and
#: sum in different places: fp32 differs by summation order, while z and the gradients of bf16 and
#: fp16 inputs are stored with 8 and 11 significand bits, where one rounding is up to 4e-3 and 5e-4.
#: Named entries are for comparisons whose error is not just the dtype's:
#:   "loss_grads": fp32 VAE-loss values and gradients. The gradients are derivatives of a batch mean,
#:       many below 1e-5, which fp32's atol would let through wrong; the rtol stays fp32's.
#:   "recovered_eps": the reference fed the noise recovered from the kernel's z as (z − mu)/σ: that eps
#:       is off by about an ulp of z over σ, absolutely however small eps is, and the gradients multiply
#:       it by upstream terms and σ, past fp32's 1e-5.
TOL = {torch.float32: dict(rtol=1e-5, atol=1e-5), torch.bfloat16: dict(rtol=2e-2, atol=2e-2),
       torch.float16: dict(rtol=2e-2, atol=2e-2), torch.float64: dict(rtol=1e-10, atol=1e-10),
       "loss_grads": dict(rtol=1e-5, atol=1e-6), "recovered_eps": dict(rtol=1e-4, atol=1e-4)}


def _generator(seed: int | torch.Generator) -> torch.Generator:
    return seed if isinstance(seed, torch.Generator) else torch.Generator().manual_seed(seed)


def normal(shape: Sequence[int], device: str, dtype: torch.dtype = torch.float32,
           seed: int | torch.Generator = 0) -> torch.Tensor:
    """N(0, 1) draws: an encoder's input, features, noise."""
    return torch.randn(tuple(shape), generator=_generator(seed)).to(device=device, dtype=dtype)


def uniform(shape: Sequence[int], device: str, dtype: torch.dtype = torch.float32,
            seed: int | torch.Generator = 0) -> torch.Tensor:
    """U[0, 1) draws: images as the loader gives them."""
    return torch.rand(tuple(shape), generator=_generator(seed)).to(device=device, dtype=dtype)


def image_pair(shape: Sequence[int], dtype: torch.dtype, device: str, target_dtype: torch.dtype | None = None,
               seed: int | torch.Generator = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A prediction (2·N(0, 1): logits well into both sigmoid tails) and a target in [0, 1)."""
    gen = _generator(seed)
    pred = (2 * torch.randn(shape, generator=gen)).to(device=device, dtype=dtype)
    target = uniform(shape, device, target_dtype or dtype, gen)
    return pred, target


def loss_batch(B: int, shape: Sequence[int], dtype: torch.dtype, device: str,
               seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Decoder output B×shape in ``dtype``, fp32 images (as the loader gives them), per-sample KL [B]."""
    gen = torch.Generator().manual_seed(seed)
    out, x = image_pair((B, *shape), dtype, device, target_dtype=torch.float32, seed=gen)
    kl = (10 * torch.rand(B, generator=gen)).to(device)
    return out, x, kl


def latents(B: int, D: int, dtype: torch.dtype, device: str,
            seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """mu, logvar (σ around 1) and eps, each B×D."""
    gen = torch.Generator().manual_seed(seed)
    mu = torch.randn(B, D, generator=gen).to(device=device, dtype=dtype)
    logvar = (0.5 * torch.randn(B, D, generator=gen)).to(device=device, dtype=dtype)
    eps = torch.randn(B, D, generator=gen).to(device=device, dtype=dtype)
    return mu, logvar, eps


def outputs_and_grads(fn: Callable[..., object], args: Sequence[object], wrt: Sequence[int],
                      upstream: Sequence[torch.Tensor] | torch.Tensor) -> tuple[torch.Tensor, ...]:
    """``(*outputs, *gradients)`` of ``fn(*args)``: the args at positions ``wrt`` are replaced by fresh
    leaves, so kernel and reference each get their own graph, and ``upstream`` weights the outputs."""
    args = list(args)
    for i in wrt:
        args[i] = args[i].detach().clone().requires_grad_(True)
    out = fn(*args)
    outs = tuple(out) if isinstance(out, (tuple, list)) else (out,)
    return (*outs, *torch.autograd.grad(outs, [args[i] for i in wrt], upstream))


@pytest.fixture
def single_thread():
    """One intra-op torch thread for the test: tests of many tiny ops (gradcheck, sampling loops) wait
    on the other thread at every op when the 2-core machine is busy (a 1 s gradcheck took 75 s)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
