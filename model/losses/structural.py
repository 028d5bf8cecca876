"""Structural similarity as a loss: 1 − SSIM, or 1 − MS-SSIM, per image.

SSIM is ``model.metrics.ssim`` (Wang et al. 2004), the very function the evaluation reports, so the
number a run optimises is the number it is judged by. MS-SSIM is Wang, Simoncelli and Bovik (2003),
"Multiscale structural similarity for image quality assessment" (Asilomar): at scales j = 1..M,
each a 2×2 average-pool of the one before, MS-SSIM = SSIM_M^{w_M} · Π_{j<M} CS_j^{w_j}, with the
paper's weights w = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333) for M = 5; fewer scales take the
first M weights renormalised to sum 1. As in the reference implementations, each channel is scored
on its own and the channels averaged, and CS and SSIM are floored at a small positive value before the
fractional powers (a negative correlation would make them undefined).

Every scale must hold the 11×11 window: 64×64 images allow 3 scales (64, 32, 16), 128×128 allow 4;
the paper's 5 need 176 pixels. Computed in fp32 (fp64 stays fp64) whatever the autocast.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from model.metrics.image import SSIM_RADIUS, ssim, ssim_terms
from pipeline.errors import ConfigError

MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
#: CS and SSIM below this are raised to it before the fractional powers of MS-SSIM.
FLOOR = 1e-4


def max_scales(size: int) -> int:
    """How many scales an image of ``size`` pixels (its shorter side) allows: each must hold the window."""
    window, scales = 2 * SSIM_RADIUS + 1, 0
    while size >= window and scales < len(MS_SSIM_WEIGHTS):
        scales += 1
        size //= 2
    return scales


def check_scales(scales: int, image_size: int) -> None:
    """One-line ConfigError when ``scales`` of (MS-)SSIM do not fit ``image_size``×``image_size`` images."""
    if scales > (allowed := max_scales(image_size)):
        raise ConfigError(f"ssim_scales {scales} needs larger images: every scale must hold the 11×11 window, "
                          f"and {image_size}×{image_size} allows at most {allowed}")


def ssim_loss(x_hat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """1 − SSIM per image ([B])."""
    return 1 - ssim(x_hat, x)


def ms_ssim(x_hat: torch.Tensor, x: torch.Tensor, scales: int = 5) -> torch.Tensor:
    """Multi-scale SSIM per image ([B]); ``scales`` = 1 is SSIM itself."""
    if not 1 <= scales <= len(MS_SSIM_WEIGHTS):
        raise ValueError(f"ms_ssim: scales must be in 1..{len(MS_SSIM_WEIGHTS)}, got {scales}")
    if scales == 1:
        return ssim(x_hat, x)
    allowed = max_scales(min(x.shape[-2:]))
    if scales > allowed:
        raise ValueError(f"ms_ssim: {scales} scales need images of at least {(2 * SSIM_RADIUS + 1) * 2 ** (scales - 1)} "
                         f"pixels; {x.shape[-2]}×{x.shape[-1]} allows {allowed}")
    weights = torch.tensor(MS_SSIM_WEIGHTS[:scales], dtype=torch.float64)
    weights = (weights / weights.sum()).tolist()
    b, c = x.shape[:2]
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    with torch.autocast(x.device.type, enabled=False):
        # channels scored on their own: B·C one-channel images
        a, t = x_hat.to(dtype).reshape(b * c, 1, *x.shape[-2:]), x.to(dtype).reshape(b * c, 1, *x.shape[-2:])
        out = torch.ones(b * c, dtype=dtype, device=x.device)
        for j, w in enumerate(weights):
            full, cs = ssim_terms(a, t)
            last = j == scales - 1
            out = out * (full if last else cs).clamp_min(FLOOR).pow(w)
            if not last:
                a, t = F.avg_pool2d(a, 2), F.avg_pool2d(t, 2)
        return out.reshape(b, c).mean(1)


def ms_ssim_loss(x_hat: torch.Tensor, x: torch.Tensor, scales: int = 5) -> torch.Tensor:
    """1 − MS-SSIM per image ([B])."""
    return 1 - ms_ssim(x_hat, x, scales)
