"""Blur, measured: how much high-frequency energy a reconstruction keeps of its input's.

An MSE-trained VAE averages over what it cannot encode, and averages are smooth: the fine detail
(hair strands, eyelashes, edges of glasses) is what goes. ``high_frequency_energy`` is the power
spectrum of an image summed above a radial frequency cut-off; ``sharpness_ratio`` = that energy of
the reconstructions over that of their inputs (1.0: as sharp as the input; 0.3: 70 % of the fine
detail lost; above 1: noise or artefacts the input does not have).

Definition, per image and channel: subtract the mean, multiply by a separable Hann window (so the
image's borders, which an FFT wraps around, add no false edges), take |FFT|², and sum the bins whose
radial frequency √(f_x² + f_y²) exceeds ``CUTOFF`` cycles per pixel (Nyquist = 0.5): detail with a
period under 4 pixels, i.e. under 1/16 of a 64-pixel face. Channels are summed.
"""
from __future__ import annotations

import torch

#: Radial frequency (cycles per pixel) above which energy counts as "high frequency".
CUTOFF = 0.25


def high_frequency_energy(x: torch.Tensor, cutoff: float = CUTOFF) -> torch.Tensor:
    """Spectral energy above ``cutoff`` per image ([B]) of B×C×H×W images (fp32, fp64 kept)."""
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    with torch.autocast(x.device.type, enabled=False):
        x = x.to(dtype)
        h, w = x.shape[-2:]
        window = (torch.hann_window(h, periodic=False, dtype=dtype, device=x.device)[:, None]
                  * torch.hann_window(w, periodic=False, dtype=dtype, device=x.device)[None, :])
        x = (x - x.mean(dim=(-2, -1), keepdim=True)) * window
        power = torch.fft.rfft2(x).abs().pow(2)  # B×C×H×(W/2+1)
        fy = torch.fft.fftfreq(h, device=x.device, dtype=dtype)[:, None]
        fx = torch.fft.rfftfreq(w, device=x.device, dtype=dtype)[None, :]
        high = (fy.pow(2) + fx.pow(2)).sqrt() > cutoff
        # rfft2 keeps half the columns; the ones with a mirror image count twice (not 0 and, for even W, Nyquist).
        col = torch.arange(fx.shape[1], device=x.device)
        once = (col == 0) | (col == (w // 2 if w % 2 == 0 else -1))
        twice = torch.where(once, 1.0, 2.0).to(dtype)[None, :]
        return (power * (high * twice)).flatten(1).sum(1)


def sharpness_ratio(reconstructions: torch.Tensor, inputs: torch.Tensor, cutoff: float = CUTOFF) -> torch.Tensor:
    """High-frequency energy of the reconstructions over that of the inputs, over the whole batch (0-dim)."""
    return high_frequency_energy(reconstructions, cutoff).sum() / high_frequency_energy(inputs, cutoff).sum().clamp_min(1e-12)
