"""FLOPs of one training step, and the device's measured matmul peak: the MFU-style line.

FLOPs are counted, not estimated: ``torch.utils.flop_counter.FlopCounterMode`` adds up the
convolution, transposed-convolution and linear work of one forward + backward. The peak is
measured (a large bf16/fp32 matmul), not read from a spec sheet, so the ratio is honest on any
device — including this project's CPU machines.
"""
from __future__ import annotations

import time
from typing import Callable

import torch


def count_step_flops(step: Callable[[], torch.Tensor]) -> int:
    """FLOPs of ``step()``, which must run one forward and the backward of its returned loss."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        loss = step()
        if loss is not None and loss.requires_grad:
            loss.backward()
    return int(counter.get_total_flops())


def vae_flops_per_image(vae_cfg) -> int:
    """Counted forward+backward FLOPs per image of ``ConvVAE(vae_cfg)`` with its loss.

    Counted on a fresh CPU model with the reference loss (FLOPs depend on shapes, not weights or
    device), inside ``fork_rng``: the caller's RNG stream does not move, so a run that shows the
    MFU line stays bit-identical to one that doesn't (resume equivalence depends on it)."""
    from kernels import vae_loss
    from model.vae import ConvVAE

    with torch.random.fork_rng(devices=[]):
        probe = ConvVAE(vae_cfg, loss_impl="torch")
        x = torch.rand(2, 3, vae_cfg.image_size, vae_cfg.image_size)

        def step():
            out = probe(x)
            return vae_loss(out.logits, x, out.kl, 1.0, logits=True, impl="torch").loss

        return count_step_flops(step) // 2


def measure_matmul_peak(device: str | torch.device, dtype: torch.dtype = torch.bfloat16,
                        n: int | None = None, seconds: float = 0.5, windows: int = 4) -> float:
    """Achieved FLOP/s of a square matmul on ``device``: the denominator of MFU.

    The best of ``windows`` timed windows, not their mean: a peak is what the device can do, and
    a window slowed by other load would understate it (and push MFU past 100 %)."""
    device = torch.device(device)
    n = n or (8192 if device.type == "cuda" else 1024)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(3):
        a @ b
    sync()
    best = 0.0
    for _ in range(windows):
        iters, t0 = 0, time.perf_counter()
        while True:
            a @ b
            iters += 1
            if iters % 4 == 0:
                sync()
                if time.perf_counter() - t0 >= seconds / windows:
                    break
        best = max(best, 2.0 * n**3 * iters / (time.perf_counter() - t0))
    return best
