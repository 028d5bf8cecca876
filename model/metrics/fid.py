"""Fréchet Inception Distance through ``pytorch-fid``, when it is installed.

FID (Heusel et al. 2017) compares Inception-v3 pool features of two image sets. Its value depends on
the protocol, so ours is fixed and stated: N test images and N prior samples at the model's resolution
(64×64), written as PNG files, scored by ``pytorch_fid.fid_score.calculate_fid_given_paths`` with its
default 2048-d pool3 features (pytorch-fid resizes to 299×299 bilinearly inside its network). Scores
from 64×64 images on a few thousand images are biased upwards against published CelebA FIDs (50k
images, usually 64×64 upsampled the same way): compare runs with each other, not with papers.

``pytorch-fid`` downloads its Inception weights (``pt_inception-2015-12-05``) on first use into
torch.hub's cache; without network access, put that file there by hand. When the package or its
weights are missing the score is None with the reason, and the PNG folders are still written.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

PROTOCOL = ("pytorch-fid, 2048-d Inception pool3 features; {n} test images vs {n} prior samples (temperature 1), "
            "{size}×{size} PNG")


def write_png_folder(images: torch.Tensor, folder: Path, prefix: str = "") -> Path:
    """N×3×H×W images in [0, 1] → folder/PREFIX000000.png … (the folder is emptied of old PNGs first)."""
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob(f"{prefix}*.png"):
        old.unlink()
    arrays = images.clamp(0, 1).mul(255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    for i, a in enumerate(arrays):
        Image.fromarray(np.ascontiguousarray(a)).save(folder / f"{prefix}{i:06d}.png")
    return folder


def fid_available() -> str | None:
    """None when pytorch-fid can be imported, else why not."""
    try:
        import pytorch_fid.fid_score  # noqa: F401
    except Exception as err:  # ImportError, or a broken install (its torchvision import)
        return f"pytorch-fid is not importable ({type(err).__name__}: {str(err).splitlines()[0][:120]}); pip install pytorch-fid"
    return None


def fid_between(real: Path, fake: Path, device: torch.device, batch_size: int = 50) -> tuple[float | None, str | None]:
    """(FID, None), or (None, the reason) when pytorch-fid or its weights are unavailable."""
    reason = fid_available()
    if reason:
        return None, reason
    from pytorch_fid.fid_score import calculate_fid_given_paths

    n = min(len(list(real.glob("*.png"))), len(list(fake.glob("*.png"))))
    try:
        score = calculate_fid_given_paths([str(real), str(fake)], batch_size=min(batch_size, n), device=str(device),
                                          dims=2048, num_workers=0)
    except Exception as err:  # most often: no network for the Inception weights
        return None, f"pytorch-fid failed: {type(err).__name__}: {str(err).splitlines()[0][:160] if str(err) else ''}"
    return float(score), None
