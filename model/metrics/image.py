"""Per-image reconstruction quality: MSE, PSNR and SSIM, batched, on any device, without host syncs.

Images are B×C×H×W floats in [0, ``data_range``]; every function returns one value per image ([B]).

SSIM is Wang, Bovik, Sheikh and Simoncelli (2004), "Image quality assessment: from error visibility to
structural similarity", IEEE TIP 13(4), with the paper's settings: an 11×11 Gaussian window of σ = 1.5,
K1 = 0.01, K2 = 0.03, local (co)variances normalised by the window weights (not N − 1), the SSIM map
averaged over the positions where the window fits wholly inside the image and then over channels.
That is scikit-image's ``structural_similarity(gaussian_weights=True, sigma=1.5,
use_sample_covariance=False, data_range=1, channel_axis=...)``, which the tests compare against.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

#: Gaussian window of the SSIM paper: σ = 1.5, truncated at 3.5 σ (radius 5, i.e. 11 taps, as scipy cuts it).
SSIM_SIGMA = 1.5
SSIM_RADIUS = 5
SSIM_K1, SSIM_K2 = 0.01, 0.03
#: PSNR of a perfect reconstruction would be infinite; the per-image MSE is floored here (→ 100 dB at range 1).
MSE_FLOOR = 1e-10


def mse_per_image(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean squared error over C·H·W, per image, in fp32 (fp64 stays fp64)."""
    d = x.to(_work_dtype(x)) - y.to(_work_dtype(x))
    return d.pow(2).flatten(1).mean(1)


def psnr(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB, per image: 10·log10(range² / MSE), MSE floored at ``MSE_FLOOR``."""
    return 10 * torch.log10(data_range**2 / mse_per_image(x, y).clamp_min(MSE_FLOOR))


def ssim(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Structural similarity per image (mean over the valid positions and the channels), in [-1, 1]."""
    return ssim_terms(x, y, data_range)[0]


def ssim_terms(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(SSIM, contrast-structure term) per image, both averaged over positions and channels.

    The second is SSIM without its luminance factor: multi-scale SSIM (Wang et al. 2003) multiplies it
    across scales. Differentiable; computed in fp32 (fp64 inputs stay fp64) whatever the autocast.
    """
    if x.shape != y.shape or x.dim() != 4:
        raise ValueError(f"ssim needs two B×C×H×W tensors of one shape, got {tuple(x.shape)} and {tuple(y.shape)}")
    size = 2 * SSIM_RADIUS + 1
    if min(x.shape[-2:]) < size:
        raise ValueError(f"ssim needs images of at least {size}×{size} pixels, got {tuple(x.shape[-2:])}")
    dtype = _work_dtype(x)
    with torch.autocast(x.device.type, enabled=False):
        b, c, h, w = x.shape
        x = x.to(dtype).reshape(b * c, 1, h, w)
        y = y.to(dtype).reshape(b * c, 1, h, w)
        # One pass of the separable window over the five maps stacked as channels.
        maps = _gaussian_blur(torch.cat([x, y, x * x, y * y, x * y], 1))
        mx, my, mxx, myy, mxy = maps.unbind(1)
        vx, vy, cxy = mxx - mx * mx, myy - my * my, mxy - mx * my
        c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
        cs = (2 * cxy + c2) / (vx + vy + c2)
        lum = (2 * mx * my + c1) / (mx * mx + my * my + c1)
        per = lambda m: m.reshape(b, c, -1).mean(2).mean(1)  # noqa: E731
        return per(lum * cs), per(cs)


def _gaussian_blur(maps: torch.Tensor) -> torch.Tensor:
    """'valid' convolution of every channel with the normalised 11×11 Gaussian (two 1-D passes)."""
    # Built on the maps' device: a copy from the host would wait for the device (a sync per call on CUDA).
    taps = torch.arange(-SSIM_RADIUS, SSIM_RADIUS + 1, dtype=torch.float64, device=maps.device)
    g = torch.exp(-0.5 * (taps / SSIM_SIGMA) ** 2)
    g = (g / g.sum()).to(maps.dtype)
    n = maps.shape[1]
    out = F.conv2d(maps, g.view(1, 1, -1, 1).expand(n, 1, -1, 1), groups=n)
    return F.conv2d(out, g.view(1, 1, 1, -1).expand(n, 1, 1, -1), groups=n)


def _work_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def psnr_from_mse(mse: float, data_range: float = 1.0) -> float:
    """PSNR in dB of a mean squared error (for a table line; the metric itself is per image)."""
    return 10 * math.log10(data_range**2 / max(mse, MSE_FLOOR))
