"""The seed's convolutional VAE for faces (64×64 by default), with widths, latent size, kernel size and
residual blocks taken from config.

Encoder: ``len(channels)`` stride-2 convolutions (64→32→16→8→4 by default), each followed by
BatchNorm2d and LeakyReLU(0.2); two linear heads give ``mu`` and ``logvar``. Decoder: a linear
layer back to ``channels[-1]×4×4``, then stride-2 transposed convolutions mirroring the encoder
(BatchNorm2d + ReLU between them) down to 3 channels. The last layer returns *logits*: the loss
fuses the sigmoid (``kernels.vae_loss(..., logits=True)``) and :meth:`ConvVAE.reconstruct` applies it
for pictures. The reparameterisation lives in ``kernels.reparam_kl`` so that its fused kernel and
the KL term come from one place.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, NamedTuple

import torch
from torch import nn

#: Config keys that define the network; a checkpoint only loads into a model with the same values.
MODEL_KEYS = ("image_size", "channels", "latent_dim", "kernel_size", "res_blocks")


@dataclass(frozen=True)
class VAEConfig:
    """Shape of the network (the ``model`` keys of config.json)."""

    image_size: int = 64
    channels: tuple[int, ...] = (32, 64, 128, 256)
    latent_dim: int = 128
    kernel_size: int = 4
    res_blocks: int = 0
    in_channels: int = field(default=3, repr=False)

    @classmethod
    def from_dict(cls, cfg: dict[str, Any]) -> "VAEConfig":
        """Build from a (merged) config dict, ignoring keys that are not about the network."""
        return cls(**{k: (tuple(cfg[k]) if k == "channels" else cfg[k]) for k in MODEL_KEYS if k in cfg})

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["channels"] = list(self.channels)
        d.pop("in_channels")
        return d

    def validate(self) -> None:
        """Raise ValueError when the shapes cannot work (the config layer turns it into ConfigError)."""
        if not self.channels or any(int(c) < 1 for c in self.channels):
            raise ValueError(f"channels must be a non-empty list of positive widths, got {list(self.channels)}")
        if self.latent_dim < 1:
            raise ValueError(f"latent_dim must be >= 1, got {self.latent_dim}")
        if not 2 <= self.kernel_size <= 7:
            raise ValueError(f"kernel_size must be in 2..7, got {self.kernel_size}")
        if self.res_blocks < 0:
            raise ValueError(f"res_blocks must be >= 0, got {self.res_blocks}")
        down = 2 ** len(self.channels)
        if self.image_size < down or self.image_size % down:
            raise ValueError(f"image_size {self.image_size} must be a multiple of 2**len(channels) = {down}")

    @property
    def bottleneck(self) -> int:
        """Spatial size after the encoder (4 for 64×64 and four stages)."""
        return self.image_size // 2 ** len(self.channels)


def _padding(kernel_size: int) -> tuple[int, int]:
    """(padding, output_padding) so that every conv halves and every transposed conv doubles."""
    pad = (kernel_size - 1) // 2
    return pad, 2 + 2 * pad - kernel_size


class ResidualBlock(nn.Module):
    """Two 3×3 convolutions with BatchNorm and a skip connection; keeps shape."""

    def __init__(self, channels: int, act: type[nn.Module]):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels), _make_act(act),
            nn.Conv2d(channels, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels),
        )
        self.act = _make_act(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(x + self.body(x))


def _make_act(act: type[nn.Module]) -> nn.Module:
    return nn.LeakyReLU(0.2, inplace=True) if act is nn.LeakyReLU else nn.ReLU(inplace=True)


class VAEOutput(NamedTuple):
    logits: torch.Tensor  # B×3×H×W, pre-sigmoid
    mu: torch.Tensor  # B×latent
    logvar: torch.Tensor  # B×latent
    kl: torch.Tensor  # [B] fp32, KL(q(z|x) || N(0, I)) per sample


class ConvVAE(nn.Module):
    """The seed's Conv-VAE. ``forward(x)`` returns :class:`VAEOutput` (logits, mu, logvar, kl)."""

    def __init__(self, cfg: VAEConfig | None = None, *, loss_impl: str = "torch"):
        super().__init__()
        self.cfg = cfg = cfg or VAEConfig()
        cfg.validate()
        #: "triton" or "torch", already resolved by kernels.resolve_impl (the one place it is chosen).
        self.loss_impl = loss_impl
        pad, out_pad = _padding(cfg.kernel_size)
        k, widths = cfg.kernel_size, list(cfg.channels)

        enc: list[nn.Module] = []
        c_in = cfg.in_channels
        for c in widths:
            # bias=False: BatchNorm's shift makes a conv bias redundant.
            enc += [nn.Conv2d(c_in, c, k, stride=2, padding=pad, bias=False), nn.BatchNorm2d(c),
                    nn.LeakyReLU(0.2, inplace=True)]
            enc += [ResidualBlock(c, nn.LeakyReLU) for _ in range(cfg.res_blocks)]
            c_in = c
        self.encoder = nn.Sequential(*enc, nn.Flatten())
        flat = widths[-1] * cfg.bottleneck**2
        self.fc_mu = nn.Linear(flat, cfg.latent_dim)
        self.fc_logvar = nn.Linear(flat, cfg.latent_dim)

        self.fc_dec = nn.Linear(cfg.latent_dim, flat)
        dec: list[nn.Module] = [nn.Unflatten(1, (widths[-1], cfg.bottleneck, cfg.bottleneck))]
        rev = widths[::-1]
        for c, c_next in zip(rev, rev[1:]):
            dec += [ResidualBlock(c, nn.ReLU) for _ in range(cfg.res_blocks)]
            dec += [nn.ConvTranspose2d(c, c_next, k, stride=2, padding=pad, output_padding=out_pad, bias=False),
                    nn.BatchNorm2d(c_next), nn.ReLU(inplace=True)]
        dec += [ResidualBlock(rev[-1], nn.ReLU) for _ in range(cfg.res_blocks)]
        # Last layer: no BatchNorm, so it keeps its bias; its output are logits.
        dec.append(nn.ConvTranspose2d(rev[-1], cfg.in_channels, k, stride=2, padding=pad, output_padding=out_pad))
        self.decoder = nn.Sequential(*dec)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.encoder(x)
        return self.fc_mu(h), self.fc_logvar(h)

    def decode_logits(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.fc_dec(z))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1] from latents (the seed's Sigmoid output)."""
        return torch.sigmoid(self.decode_logits(z).float())

    def forward(self, x: torch.Tensor, eps: torch.Tensor | None = None) -> VAEOutput:
        """Encode, sample z = mu + sigma·eps (eps ~ N(0, I) unless given), decode to logits."""
        from kernels import reparam_kl

        mu, logvar = self.encode(x)
        z, kl = reparam_kl(mu, logvar, eps, impl=self.loss_impl)
        return VAEOutput(self.decode_logits(z), mu, logvar, kl)

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Deterministic reconstruction through the posterior mean, in [0, 1]."""
        mu, _ = self.encode(x)
        return self.decode(mu)


def count_parameters(model: nn.Module) -> int:
    """Trainable parameters (BatchNorm running statistics are buffers and not counted)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
