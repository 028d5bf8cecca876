"""How much an evaluation looks at: images, importance samples, prior samples, worst examples, FID.

Two presets: ``FULL`` for ``python -m model evaluate`` and ``LIGHT`` for the evaluation every
training run ends with (sized so that the default run grows by well under 10 %; docs/evaluation.md).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace

from pipeline.errors import ConfigError


@dataclass(frozen=True)
class EvalSettings:
    images: int = 0  # images of the split to evaluate (0: all of them)
    iwae_k: int = 64  # importance samples per image for the IWAE bound
    iwae_images: int = 512  # images the IWAE bound is estimated on (the first ones of the split)
    samples: int = 512  # prior samples, and as many test images, for diversity (and FID)
    worst: int = 8  # examples shown per failure mode
    batch_size: int = 256
    fid: bool = False  # FID through pytorch-fid (needs the package and its Inception weights)
    seed: int = 0
    # The decoder's learned log σ (a σ-VAE checkpoint): the likelihood the IWAE bound is taken under.
    # None: σ² = ½, the likelihood the seed's SSE loss implies (and the one scored for optimal-σ runs too).
    decoder_log_sigma: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    def check(self, split_count: int, *, explicit: frozenset[str] = frozenset()) -> "EvalSettings":
        """Checked against a split of ``split_count`` images: counts the user asked for (``explicit``)
        that the split cannot give are a ConfigError; the others are cut down to what it holds."""
        for name in ("iwae_k", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"evaluation: {name} must be >= 1, got {getattr(self, name)}")
        for name in ("images", "iwae_images", "samples", "worst"):
            if getattr(self, name) < 0:
                raise ConfigError(f"evaluation: {name} must be >= 0, got {getattr(self, name)}")
        n = self.images or split_count
        if self.images > split_count and "images" in explicit:
            raise ConfigError(f"evaluation: {self.images:,} images asked, but the split holds {split_count:,}")
        n = min(n, split_count)
        if n < 2:  # name what limited it: the count asked for, or the split
            limit = (f"{'--images' if 'images' in explicit else 'images'} {self.images} asked"
                     if 0 < self.images < split_count else f"the split holds {split_count}")
            raise ConfigError(f"evaluation needs at least 2 images; {limit}")
        if self.samples == 1:  # a cut-down count is never 1 (n >= 2): this was asked for
            raise ConfigError(f"evaluation: {'--samples' if 'samples' in explicit else 'samples'} 1 is too few: "
                              "the diversity ratio compares pairs of images; ask for 0 (none) or at least 2")
        fixes = {"images": 0 if n == split_count else n}
        for name in ("iwae_images", "samples"):
            asked = getattr(self, name)
            if asked > n:
                if name in explicit:
                    raise ConfigError(f"evaluation: {name.replace('_', '-')} {asked:,} is more than the {n:,} images "
                                      "evaluated; ask for fewer (or more --images)")
                fixes[name] = n
        return replace(self, **fixes)


FULL = EvalSettings()
LIGHT = EvalSettings(iwae_k=16, iwae_images=128, samples=256, worst=6)


def eval_settings(cfg: dict, split_count: int, decoder_log_sigma: float | None = None) -> EvalSettings:
    """The LIGHT evaluation a training run ends with, sized by the config's ``eval_*`` keys."""
    return replace(LIGHT, iwae_k=cfg["eval_iwae_k"], iwae_images=cfg["eval_iwae_images"], samples=cfg["eval_samples"],
                   worst=cfg["n_failures"], batch_size=cfg["eval_batch_size"], seed=cfg["seed"],
                   decoder_log_sigma=decoder_log_sigma).check(split_count)

