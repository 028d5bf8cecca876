"""The "average face", measured: do samples differ from each other as much as real faces do?

A too-strong KL (or a decoder that ignores z) maps every latent to nearly the same blurry face.
Distances are root-mean-square over pixels, ‖a − b‖₂ / √D, so they read on the [0, 1] pixel scale.

- ``mean_pairwise_distance``: mean over all pairs i < j of a set. ``diversity_ratio`` in the
  evaluation = that of prior samples over that of test images (< 1: samples collapse towards one face).
- ``mean_distance_to``: mean distance of each image to one reference, the mean test face. If
  reconstructions sit much closer to the mean face than their inputs do, the model regresses to it.
"""
from __future__ import annotations

import torch


def mean_pairwise_distance(x: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
    """Mean RMS distance over all unordered pairs of the N images in ``x`` (0-dim, fp64)."""
    n = x.shape[0]
    if n < 2:
        raise ValueError(f"pairwise distances need at least 2 images, got {n}")
    flat = x.flatten(1).double()
    total = torch.zeros((), dtype=torch.float64, device=x.device)
    for i in range(0, n, chunk):
        d = torch.cdist(flat[i:i + chunk], flat)  # rows i.., all columns
        rows = torch.arange(i, min(i + chunk, n), device=x.device)[:, None]
        total += d.masked_fill(torch.arange(n, device=x.device)[None, :] <= rows, 0).sum()
    return total / (n * (n - 1) / 2) / flat.shape[1] ** 0.5


def mean_distance_to(x: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Mean RMS distance of each image in ``x`` to ``reference`` (one image, broadcast), 0-dim fp64."""
    return (x.double() - reference.double()).pow(2).flatten(1).mean(1).sqrt().mean()
