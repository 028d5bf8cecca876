"""Metrics that diagnose a VAE, each module with its definition and source.

    image.py      mse_per_image, psnr, ssim (Wang et al. 2004), ssim_terms (for MS-SSIM)
    likelihood.py log p(x|z) with the loss's σ² = ½, IWAE bound (Burda et al. 2016), bits/dim
    latent.py     active units (Burda et al. 2016) and KL per dimension, as summable statistics
    spectrum.py   high-frequency energy and the sharpness ratio (blur)
    regions.py    face ellipse vs the rest (backgrounds), per-attribute errors (hats, glasses)
    diversity.py  pairwise and to-the-mean-face distances ("average face")
    fid.py        FID through pytorch-fid, when installed

All take B×C×H×W tensors in [0, 1] on any device and return per-image tensors or 0-dim tensors
(no host sync per image). ``model.metrics`` imports only torch (and PIL for fid's PNG folders).
"""
from model.metrics.diversity import mean_distance_to, mean_pairwise_distance
from model.metrics.image import mse_per_image, psnr, ssim, ssim_terms
from model.metrics.latent import ACTIVE_THRESHOLD, LatentStats
from model.metrics.likelihood import bits_per_dim, elbo_nll, gaussian_log_likelihood, iwae_log_weights, iwae_nll
from model.metrics.regions import attribute_errors, face_ellipse_mask, region_mse
from model.metrics.spectrum import high_frequency_energy, sharpness_ratio

__all__ = ["ACTIVE_THRESHOLD", "LatentStats", "attribute_errors", "bits_per_dim", "elbo_nll", "face_ellipse_mask",
           "gaussian_log_likelihood", "high_frequency_energy", "iwae_log_weights", "iwae_nll", "mean_distance_to",
           "mean_pairwise_distance", "mse_per_image", "psnr", "region_mse", "sharpness_ratio", "ssim", "ssim_terms"]
