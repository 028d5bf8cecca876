"""The device's achieved matmul FLOP/s in the AMP dtype: the denominator of the MFU line.

Measured (a large bf16/fp32 matmul), not read from a spec sheet, so the ratio is honest on any
device, including this project's CPU machines. The numerator is :mod:`model.flops`.
"""
from __future__ import annotations

import time

import torch


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
