"""The metrics on CUDA: the CPU's numbers, and no host sync while computing them.

Every function the evaluation calls per batch runs under ``torch.cuda.set_sync_debug_mode("error")``,
which raises on any operation that makes the host wait for the device (``.item()``, ``bool(t)``, a
blocking copy): the evaluation's "no host sync per image" is checked here, not assumed. Skipped
without CUDA (the CPU tests check the values against their references).
"""
from __future__ import annotations

import pytest
import torch

from model.metrics import (face_ellipse_mask, high_frequency_energy, iwae_log_weights, mse_per_image, psnr,
                           region_mse, sharpness_ratio, ssim)
from model.training.validate import WorstK

gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def _images(b: int = 6, size: int = 64):
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(b, 3, size, size, generator=gen)
    y = (x + 0.1 * torch.randn(x.shape, generator=gen)).clamp(0, 1)
    return x, y


def _metrics(x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor, decoder: torch.nn.Module,
             eps: torch.Tensor) -> dict[str, torch.Tensor]:
    small = x[:3, :, :16, :16]
    mu, logvar = small.flatten(1)[:, :4] - 0.5, small.flatten(1)[:, 4:8] - 1.0
    decode = lambda z: torch.sigmoid(decoder(z)).view(-1, 3, 16, 16)  # noqa: E731
    return {
        "mse": mse_per_image(y, x), "psnr": psnr(y, x), "ssim": ssim(y, x), "hf": high_frequency_energy(y),
        "sharpness": sharpness_ratio(y, x), "regions": torch.stack(region_mse(y, x, mask)),
        "iwae": iwae_log_weights(small, mu, logvar, decode, 5, eps=eps),
    }


@gpu
def test_metrics_match_the_cpu_without_host_syncs():
    x, y = _images()
    decoder = torch.nn.Linear(4, 3 * 16 * 16)
    eps = torch.randn(3, 5, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    want = _metrics(x, y, face_ellipse_mask(64, 64), decoder, eps)
    dev = torch.device("cuda")
    args = (x.to(dev), y.to(dev), face_ellipse_mask(64, 64, device=dev), decoder.to(dev), eps.to(dev))
    _metrics(*args)  # first launches (kernel loading, cuFFT plans) outside the checked block
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        got = _metrics(*args)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    tolerances = {"mse": 1e-5, "psnr": 1e-5, "ssim": 1e-5, "hf": 1e-4, "sharpness": 1e-4, "regions": 1e-5, "iwae": 1e-6}
    for name, rtol in tolerances.items():
        assert got[name].device.type == "cuda", name
        torch.testing.assert_close(got[name].cpu(), want[name], rtol=rtol, atol=1e-6, msg=name)


@gpu
def test_worst_k_pushes_without_host_syncs():
    x, y = _images(b=16)
    dev = torch.device("cuda")
    worst, cpu = WorstK(4), WorstK(4)
    keys = [f"{i:02d}" for i in range(16)]
    scores = mse_per_image(y, x)
    for part in (slice(0, 7), slice(7, 16)):
        cpu.push(scores[part], scores[part], keys[part], x[part], y[part])
    xs, ys = x.to(dev), y.to(dev)
    worst.push(scores[:1].to(dev), scores[:1].to(dev), keys[:1], xs[:1], ys[:1])  # warm-up (and a batch of one)
    worst = WorstK(4)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for part in (slice(0, 7), slice(7, 16)):
            s = mse_per_image(ys[part], xs[part])
            worst.push(s, s, keys[part], xs[part], ys[part])
    finally:
        torch.cuda.set_sync_debug_mode("default")
    got, want = worst.result(), cpu.result()
    assert [f.key for f in got] == [f.key for f in want]
    for a, b in zip(got, want):
        assert torch.equal(a.image, b.image) and a.score == pytest.approx(b.score, rel=1e-5)
