"""Where the error is: inside the face, or in the hair, hats and background around it.

In aligned CelebA (178×218, eyes at y ≈ 111, mouth at y ≈ 152) cropped to its centre 148×148 and
resized, the face (brows to chin, cheek to cheek) sits in an ellipse centred at ``FACE_CENTER`` with
semi-axes ``FACE_AXES``, as fractions of the image's width and height. The seed's report says the VAE
spends its latent on the face and fails the rest; ``region_mse`` measures both sides of that line,
and ``attribute_errors`` the images with and without each attribute (a hat, glasses, a necklace).
"""
from __future__ import annotations

import torch

#: (x, y) of the face ellipse's centre and its (horizontal, vertical) semi-axes, as fractions of the image.
FACE_CENTER = (0.5, 0.56)
FACE_AXES = (0.30, 0.38)


def face_ellipse_mask(height: int, width: int, center: tuple[float, float] = FACE_CENTER,
                      axes: tuple[float, float] = FACE_AXES, device: torch.device | str = "cpu") -> torch.Tensor:
    """H×W bool mask, True inside the face ellipse (pixel centres tested)."""
    y = (torch.arange(height, device=device, dtype=torch.float32) + 0.5) / height
    x = (torch.arange(width, device=device, dtype=torch.float32) + 0.5) / width
    return ((x[None, :] - center[0]) / axes[0]) ** 2 + ((y[:, None] - center[1]) / axes[1]) ** 2 <= 1


def region_mse(x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(MSE per pixel inside ``mask``, outside it) per image, over channels too: two [B] tensors.

    A mask on the CPU is checked to have pixels on both sides; one already on the images' device is
    trusted (reading it would wait for the device at every batch), and an empty side gives NaN there.
    """
    if mask.device.type == "cpu" and (bool(mask.all()) or not bool(mask.any())):
        raise ValueError("the region mask must have pixels both inside and outside")
    err = (x.float() - y.float()).pow(2).mean(1)  # B×H×W
    inside = mask.to(err.device, err.dtype)
    n_in, n_out = inside.sum(), (1 - inside).sum()
    return (err * inside).flatten(1).sum(1) / n_in, (err * (1 - inside)).flatten(1).sum(1) / n_out


def attribute_errors(errors: torch.Tensor, attributes: torch.Tensor, names: list[str],
                     min_count: int = 1) -> list[dict]:
    """Mean error of the images with and without each attribute, ranked by their ratio (worst first).

    ``errors``: [N] per-image error (MSE/pixel); ``attributes``: N×A bool (or ±1) matrix in ``names``'
    order. An attribute with fewer than ``min_count`` images on either side gets ``ratio`` None and
    goes last (its counts are still reported).
    """
    errors = errors.double().cpu()
    present = attributes.cpu() > 0
    rows = []
    for j, name in enumerate(names):
        on = present[:, j]
        n_on, n_off = int(on.sum()), int((~on).sum())
        row = {"attribute": name, "count_with": n_on, "count_without": n_off, "mse_with": None,
               "mse_without": None, "ratio": None}
        if n_on:
            row["mse_with"] = float(errors[on].mean())
        if n_off:
            row["mse_without"] = float(errors[~on].mean())
        if n_on >= max(min_count, 1) and n_off >= max(min_count, 1) and row["mse_without"] > 0:
            row["ratio"] = row["mse_with"] / row["mse_without"]
        rows.append(row)
    return sorted(rows, key=lambda r: (r["ratio"] is None, -(r["ratio"] or 0.0)))
