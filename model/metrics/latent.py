"""What the latent code is used for: active units and the KL each dimension carries.

Active units (Burda, Grosse and Salakhutdinov 2016, §5.2): dimension u is active when
A_u = Cov_x(E_{q(z|x)}[z_u]) > 0.01, i.e. the posterior mean moves with the input. A dimension whose
posterior is the prior for every x carries no information (its KL is 0) and is inactive; a strong β
or early posterior collapse shows here as few active units.

The statistics are sums (float64), so batches and ranks add up: ``update`` per batch, ``merge`` or an
all-reduce of ``state`` across ranks, then ``result``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

#: Burda et al.'s threshold on the variance of the posterior mean.
ACTIVE_THRESHOLD = 0.01


@dataclass
class LatentResult:
    active_units: int
    mean_variance: torch.Tensor  # [L] Cov_x(E_q[z_u]) per dimension
    kl_per_dim: torch.Tensor  # [L] mean KL(q(z_u|x) ‖ N(0, 1)) in nats
    count: int

    def sorted_kl(self) -> list[dict]:
        """The dimensions by mean KL, largest first: [{dim, kl, variance, active}]."""
        order = torch.argsort(self.kl_per_dim, descending=True).tolist()
        return [{"dim": d, "kl": float(self.kl_per_dim[d]), "variance": float(self.mean_variance[d]),
                 "active": bool(self.mean_variance[d] > ACTIVE_THRESHOLD)} for d in order]


class LatentStats:
    """Running sums of μ, μ² and the per-dimension KL over a data set."""

    def __init__(self, latent_dim: int, device: torch.device | str = "cpu"):
        # rows: Σμ, Σμ², ΣKL; the count sits in a last column of row 0 (one tensor to all-reduce)
        self.state = torch.zeros(3, latent_dim + 1, dtype=torch.float64, device=device)

    def update(self, mu: torch.Tensor, logvar: torch.Tensor) -> None:
        mu, logvar = mu.double(), logvar.double()
        self.state[0, :-1] += mu.sum(0)
        self.state[1, :-1] += mu.pow(2).sum(0)
        self.state[2, :-1] += (0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar)).sum(0)
        self.state[0, -1] += mu.shape[0]

    def merge(self, other: "LatentStats") -> None:
        self.state += other.state.to(self.state.device)

    def result(self, threshold: float = ACTIVE_THRESHOLD) -> LatentResult:
        s = self.state.cpu()
        n = float(s[0, -1])
        if n < 2:
            raise ValueError(f"active units need at least 2 images, got {int(n)}")
        mean = s[0, :-1] / n
        var = (s[1, :-1] - n * mean.pow(2)) / (n - 1)  # the unbiased covariance of E_q[z] over x
        return LatentResult(int((var > threshold).sum()), var.clamp_min(0), s[2, :-1] / n, int(n))
