"""Upper bounds of train.py's count keys (config.py's schema gives their lower ones).

A count without an upper bound is a run that goes until killed: ``n_samples 100000`` draws a grid of a
hundred thousand faces at the end of training, ``eval_iwae_k 1000000`` decodes a million times per
test image. Each bound sits far above any sensible setting and says why it is where it is; the
refusal is one line naming the key, the bound and the value (pipeline/limits.py for the CLIs' own
options).
"""
from __future__ import annotations

from typing import Any

from pipeline.errors import ConfigError

#: key → (highest value, why): the counts that size work, memory or a picture.
BOUNDS: dict[str, tuple[int, str]] = {
    "synthetic_images": (999_999, "CelebA file names have six digits"),
    "seed": (2 ** 63 - 1, "torch's seed range"),
    "epochs": (100_000, "passes over the training split"),
    "batch_size": (65_536, "images per step on one process"),
    "eval_batch_size": (65_536, "images per evaluation batch"),
    "image_size": (1024, "pixels per side"),
    "latent_dim": (65_536, "latent units"),
    "res_blocks": (64, "residual blocks per stage"),
    "num_threads": (256, "loader threads"),
    "n_reconstructions": (256, "faces in reconstructions.png"),
    "n_samples": (1024, "faces in samples.png"),
    "n_interpolation": (256, "frames in interpolation.png"),
    "n_failures": (64, "faces in failures.png"),
    "eval_iwae_k": (10_000, "importance samples per test image"),
    "eval_iwae_images": (100_000_000, "test images"),
    "eval_samples": (100_000_000, "prior samples"),
}
#: Per-item bounds of list keys.
LIST_BOUNDS: dict[str, tuple[int, int, str]] = {"channels": (12, 4096, "stages, and widths per stage")}


def check_bounds(cfg: dict[str, Any]) -> None:
    """ConfigError for the first count key of the validated ``cfg`` above its bound."""
    if isinstance(cfg.get("synthetic_images"), int) and cfg["synthetic_images"] < 3:
        raise ConfigError(f"config key 'synthetic_images' must be at least 3 (one image per split), "
                          f"got {cfg['synthetic_images']}")
    for key, (high, why) in BOUNDS.items():
        value = cfg.get(key)
        if isinstance(value, int) and value > high:
            raise ConfigError(f"config key {key!r} must be at most {high:,} ({why}), got {value:,}")
    for key, (most, widest, why) in LIST_BOUNDS.items():
        value = cfg.get(key)
        if isinstance(value, list) and (len(value) > most or any(isinstance(v, int) and v > widest for v in value)):
            raise ConfigError(f"config key {key!r} takes at most {most} items of at most {widest:,} ({why}), "
                              f"got {value}")
