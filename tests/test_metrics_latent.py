"""model.metrics.latent: active units and KL per dimension from an encoder that ignores half its latent."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from model.metrics import ACTIVE_THRESHOLD, LatentStats
from tests.utils import single_thread  # noqa: F401 (the fixture)

pytestmark = pytest.mark.usefixtures("single_thread")

IN, LATENT, USED = 10, 8, (0, 2, 5, 7)  # the encoder's mu depends on x only in the USED dims


class HalfEncoder(nn.Module):
    """mu = A x and logvar = B x + c, with A's and B's rows and c zero outside ``USED``: those
    dimensions have the prior as posterior (mu = 0, logvar = 0) for every x."""

    def __init__(self, seed: int = 0):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.mu = nn.Linear(IN, LATENT, bias=False, dtype=torch.float64)
        self.logvar = nn.Linear(IN, LATENT, dtype=torch.float64)
        keep = torch.zeros(LATENT, 1, dtype=torch.float64)
        keep[list(USED)] = 1
        with torch.no_grad():
            self.mu.weight.copy_(torch.randn(LATENT, IN, generator=gen, dtype=torch.float64) * keep)
            self.logvar.weight.copy_(0.2 * torch.randn(LATENT, IN, generator=gen, dtype=torch.float64) * keep)
            self.logvar.bias.copy_(-torch.rand(LATENT, generator=gen, dtype=torch.float64) * keep[:, 0])

    @torch.no_grad()
    def forward(self, x):
        return self.mu(x), self.logvar(x)


def _data(n: int = 200, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.randn(n, IN, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return HalfEncoder()(x)


def _stats(*batches) -> LatentStats:
    stats = LatentStats(LATENT)
    for mu, logvar in batches:
        stats.update(mu, logvar)
    return stats


def test_active_units_variance_and_kl_match_numpy():
    mu, logvar = _data()
    res = _stats((mu, logvar)).result()
    m, lv = mu.numpy(), logvar.numpy()
    unused = [d for d in range(LATENT) if d not in USED]
    assert (m[:, unused] == 0).all() and (lv[:, unused] == 0).all()

    assert res.active_units == len(USED) == LATENT // 2 and res.count == 200
    np.testing.assert_allclose(res.mean_variance.numpy(), m.var(0, ddof=1), rtol=1e-10, atol=1e-15)
    assert (res.mean_variance[list(USED)] > ACTIVE_THRESHOLD).all()
    assert (res.mean_variance[unused] == 0).all()

    kl = (0.5 * (m**2 + np.exp(lv) - 1 - lv)).mean(0)
    np.testing.assert_allclose(res.kl_per_dim.numpy(), kl, rtol=1e-12, atol=0)
    assert (res.kl_per_dim[unused] == 0).all() and (res.kl_per_dim[list(USED)] > 0).all()


def test_threshold_decides_activity():
    """A dimension whose posterior mean varies just above/below the threshold is active/inactive."""
    n = 1000
    base = torch.randn(n, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    base = (base - base.mean(0)) / base.std(0)  # sample variance exactly 1
    mu = base * torch.tensor([0.11, 0.09], dtype=torch.float64)  # variances 0.0121 and 0.0081
    stats = LatentStats(2)
    stats.update(mu, torch.zeros_like(mu))
    res = stats.result()
    assert res.active_units == 1
    torch.testing.assert_close(res.mean_variance, torch.tensor([0.0121, 0.0081], dtype=torch.float64))
    assert stats.result(threshold=0.005).active_units == 2 and stats.result(threshold=0.02).active_units == 0


def test_batches_add_up_to_one_batch():
    mu, logvar = _data()
    whole = _stats((mu, logvar)).result()
    cuts = [0, 1, 37, 38, 150, 200]
    parts = _stats(*[(mu[a:b], logvar[a:b]) for a, b in zip(cuts, cuts[1:])]).result()
    assert parts.active_units == whole.active_units and parts.count == whole.count
    torch.testing.assert_close(parts.mean_variance, whole.mean_variance, rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(parts.kl_per_dim, whole.kl_per_dim, rtol=1e-12, atol=1e-14)


def test_merge_of_two_halves_is_the_whole():
    mu, logvar = _data()
    whole = _stats((mu, logvar))
    first, second = _stats((mu[:120], logvar[:120])), _stats((mu[120:], logvar[120:]))
    first.merge(second)
    torch.testing.assert_close(first.state, whole.state, rtol=1e-12, atol=1e-12)
    a, b = first.result(), whole.result()
    assert a.active_units == b.active_units == len(USED) and a.count == 200
    torch.testing.assert_close(a.mean_variance, b.mean_variance, rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(a.kl_per_dim, b.kl_per_dim, rtol=1e-12, atol=1e-14)
    # the other half was only read
    torch.testing.assert_close(second.state[0, -1], torch.tensor(80.0, dtype=torch.float64))


def test_fewer_than_two_images_raise():
    mu, logvar = _data(n=1)
    with pytest.raises(ValueError):
        LatentStats(LATENT).result()
    with pytest.raises(ValueError):
        _stats((mu, logvar)).result()
    _stats((mu, logvar), (mu, logvar)).result()  # two are enough


def test_float32_inputs_are_summed_in_float64():
    mu, logvar = _data()
    res32 = _stats((mu.float(), logvar.float())).result()
    res64 = _stats((mu.float().double(), logvar.float().double())).result()
    assert res32.mean_variance.dtype == torch.float64
    torch.testing.assert_close(res32.kl_per_dim, res64.kl_per_dim, rtol=0, atol=0)


def test_sorted_kl_is_descending_and_complete():
    mu, logvar = _data()
    res = _stats((mu, logvar)).result()
    rows = res.sorted_kl()
    kls = [r["kl"] for r in rows]
    assert kls == sorted(kls, reverse=True) and kls[0] > kls[-1]
    assert sorted(r["dim"] for r in rows) == list(range(LATENT))
    assert {r["dim"] for r in rows[:len(USED)]} == set(USED)  # the used dims carry all the KL
    for r in rows:
        d = r["dim"]
        assert r["kl"] == pytest.approx(float(res.kl_per_dim[d]))
        assert r["variance"] == pytest.approx(float(res.mean_variance[d]))
        assert r["active"] == (d in USED)
