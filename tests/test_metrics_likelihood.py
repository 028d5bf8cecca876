"""model.metrics.likelihood: the decoder's log-likelihood, the ELBO and IWAE bounds, bits/dim.

The IWAE bound is checked on a model whose log p(x) is known in closed form: a linear Gaussian
decoder p(x|z) = N(Wz + b, ½I) with p(z) = N(0, I) has the marginal N(b, WWᵀ + ½I) and the
posterior N(Σ·2Wᵀ(x − b), Σ), Σ = (I + 2WᵀW)⁻¹. W's columns are orthogonal, so Σ is diagonal and
the encoder's (mu, logvar) can be the exact posterior.
"""
from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import MultivariateNormal, Normal

from model.metrics import bits_per_dim, elbo_nll, gaussian_log_likelihood, iwae_log_weights, iwae_nll
from tests.utils import single_thread  # noqa: F401 (the fixture)

pytestmark = pytest.mark.usefixtures("single_thread")

F64 = torch.float64


def test_gaussian_log_likelihood_is_normal_with_variance_one_half():
    gen = torch.Generator().manual_seed(0)
    mean = torch.rand(4, 3, 5, 7, generator=gen)
    x = torch.rand(4, 3, 5, 7, generator=gen)
    got = gaussian_log_likelihood(mean, x)
    want = Normal(mean.double(), math.sqrt(0.5)).log_prob(x.double()).flatten(1).sum(1)
    assert got.dtype == F64 and got.shape == (4,)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-10)
    # a perfect mean leaves only the normaliser, −(D/2)·log π
    normaliser = -0.5 * 105 * math.log(math.pi)
    torch.testing.assert_close(gaussian_log_likelihood(x, x), torch.full((4,), normaliser, dtype=F64))


@pytest.mark.parametrize("sigma", [0.05, math.sqrt(0.5), 2.0])
def test_gaussian_log_likelihood_with_a_learned_sigma(sigma):
    gen = torch.Generator().manual_seed(1)
    mean, x = torch.rand(3, 3, 4, 4, generator=gen), torch.rand(3, 3, 4, 4, generator=gen)
    got = gaussian_log_likelihood(mean, x, math.log(sigma))
    want = Normal(mean.double(), sigma).log_prob(x.double()).flatten(1).sum(1)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-9)


# --- IWAE on a small non-linear decoder ------------------------------------------------------------

def _sigmoid_model(n: int = 32, seed: int = 0):
    """A random linear + sigmoid decoder on 1×4×4 images, noisy decodes as data, a narrow posterior."""
    gen = torch.Generator().manual_seed(seed)
    w = 2 * torch.randn(16, 2, generator=gen, dtype=F64)
    b = torch.randn(16, generator=gen, dtype=F64)

    def decode(z):
        return torch.sigmoid(z @ w.T + b).view(-1, 1, 4, 4)

    z = torch.randn(n, 2, generator=gen, dtype=F64)
    x = (decode(z) + 0.1 * torch.randn(n, 1, 4, 4, generator=gen, dtype=F64)).clamp(0, 1)
    mu = z + 0.3 * torch.randn(n, 2, generator=gen, dtype=F64)
    logvar = torch.full((n, 2), 2 * math.log(0.3), dtype=F64)
    return x, mu, logvar, decode


def test_iwae_is_never_above_the_elbo_of_the_same_samples():
    x, mu, logvar, decode = _sigmoid_model()
    log_w = iwae_log_weights(x, mu, logvar, decode, 50, generator=torch.Generator().manual_seed(1))
    assert log_w.shape == (32, 50) and log_w.dtype == F64
    iwae, elbo = iwae_nll(log_w), elbo_nll(log_w)
    assert (iwae <= elbo).all()
    assert (elbo - iwae).min() > 0  # strictly: the weights differ
    # both against their formulas
    torch.testing.assert_close(iwae, -(log_w.exp().mean(1).log()), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(elbo, -log_w.sum(1) / 50, rtol=1e-12, atol=1e-12)


def test_iwae_with_one_sample_is_the_elbo():
    x, mu, logvar, decode = _sigmoid_model()
    log_w = iwae_log_weights(x, mu, logvar, decode, 1, generator=torch.Generator().manual_seed(2))
    assert torch.equal(iwae_nll(log_w), elbo_nll(log_w))
    assert torch.equal(iwae_nll(log_w), -log_w[:, 0])


def test_iwae_log_weights_are_decoder_plus_prior_minus_posterior():
    """log w_k = log p(x|z_k) + log N(z_k; 0, I) − log q(z_k|x), z_k = mu + σ·eps from the generator."""
    x, mu, logvar, decode = _sigmoid_model(n=3)
    k = 5
    log_w = iwae_log_weights(x, mu, logvar, decode, k, generator=torch.Generator().manual_seed(3))
    eps = torch.randn(3, k, 2, generator=torch.Generator().manual_seed(3), dtype=F64)
    z = mu[:, None] + (0.5 * logvar).exp()[:, None] * eps
    log_px = gaussian_log_likelihood(decode(z.reshape(-1, 2)), x.repeat_interleave(k, 0)).view(3, k)
    std = (0.5 * logvar).exp()[:, None]
    want = log_px + Normal(0.0, 1.0).log_prob(z).sum(-1) - Normal(mu[:, None], std).log_prob(z).sum(-1)
    torch.testing.assert_close(log_w, want, rtol=1e-12, atol=1e-10)


def test_iwae_bound_tightens_as_k_grows():
    """E[IWAE_K] falls with K. Every K sees the same 2000 samples per image (2000/K repeats of K),
    so the means compare K, not the luck of the draw."""
    x, mu, logvar, decode = _sigmoid_model()
    gen = torch.Generator().manual_seed(4)
    means = []
    for k in (1, 10, 100, 1000):
        r = 2000 // k
        log_w = iwae_log_weights(x.repeat(r, 1, 1, 1), mu.repeat(r, 1), logvar.repeat(r, 1), decode, k, generator=gen)
        means.append(iwae_nll(log_w).mean().item())
        if k == 1:
            torch.testing.assert_close(iwae_nll(log_w), elbo_nll(log_w))
    assert means[0] > means[1] > means[2] > means[3], means
    assert means[0] - means[3] > 0.5  # a real gap, not rounding


# --- the closed-form model --------------------------------------------------------------------------

def _linear_gaussian(n: int = 8, seed: int = 0, sigma2: float = 0.5):
    """x ∈ [0,1]^{1×2×3}, the decoder, exact log p(x) and the exact posterior's (mu, logvar), for a decoder
    noise of variance ``sigma2``."""
    gen = torch.Generator().manual_seed(seed)
    d, latent = 6, 2
    q, _ = torch.linalg.qr(torch.randn(d, latent, generator=gen, dtype=F64))
    w = q * torch.tensor([1.5, 0.8], dtype=F64)  # orthogonal columns: WᵀW diagonal
    b = 0.5 + 0.2 * torch.randn(d, generator=gen, dtype=F64)

    def decode(z):
        return (z @ w.T + b).view(-1, 1, 2, 3)

    x = torch.rand(n, 1, 2, 3, generator=gen, dtype=F64)
    log_px = MultivariateNormal(b, w @ w.T + sigma2 * torch.eye(d, dtype=F64)).log_prob(x.flatten(1))
    cov = torch.linalg.inv(torch.eye(latent, dtype=F64) + w.T @ w / sigma2)
    assert cov[0, 1].abs() < 1e-12  # the exact posterior is a diagonal Gaussian
    mu = (x.flatten(1) - b) @ w @ cov / sigma2  # (Σ·Wᵀ(x − b)/σ²)ᵀ, Σ symmetric
    logvar = cov.diagonal().log().expand(n, latent)
    return x, decode, log_px, mu, logvar


@pytest.mark.parametrize("k", [1, 3, 100])
def test_exact_posterior_gives_the_exact_log_likelihood(k):
    """With q = p(z|x) every weight is p(x): IWAE and ELBO both equal log p(x) at any K."""
    x, decode, log_px, mu, logvar = _linear_gaussian()
    log_w = iwae_log_weights(x, mu, logvar, decode, k, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(log_w, log_px[:, None].expand(-1, k), rtol=0, atol=1e-6)
    torch.testing.assert_close(-iwae_nll(log_w), log_px, rtol=0, atol=1e-6)
    torch.testing.assert_close(-elbo_nll(log_w), log_px, rtol=0, atol=1e-6)


@pytest.mark.parametrize("sigma2", [0.05, 2.0])
def test_exact_posterior_gives_the_exact_log_likelihood_under_a_learned_sigma(sigma2):
    """The same with the σ-VAE's decoder noise: the bound is taken under the σ the model learned."""
    x, decode, log_px, mu, logvar = _linear_gaussian(sigma2=sigma2)
    log_w = iwae_log_weights(x, mu, logvar, decode, 7, generator=torch.Generator().manual_seed(5),
                             log_sigma=0.5 * math.log(sigma2))
    torch.testing.assert_close(-iwae_nll(log_w), log_px, rtol=0, atol=1e-6)
    # scored under the SSE loss's σ² = ½ instead, the same model gets another (wrong) log-likelihood
    wrong = iwae_log_weights(x, mu, logvar, decode, 7, generator=torch.Generator().manual_seed(5))
    assert (-iwae_nll(wrong) - log_px).abs().min() > 0.1


def test_wrong_posterior_gap_closes_with_k():
    """q = N(μ + 0.5, 2Σ): the K = 1 gap is KL(q ‖ p(z|x)) (the same for every x here), and IWAE
    approaches log p(x) as K grows."""
    x, decode, log_px, mu, logvar = _linear_gaussian()
    shift, ratio = 0.5, 2.0
    wrong_mu, wrong_logvar = mu + shift, logvar + math.log(ratio)
    gen = torch.Generator().manual_seed(6)
    gaps = {}
    for k in (1, 10, 100):
        r = 2000 // k  # the same 2000 samples per image for every K
        log_w = iwae_log_weights(x.repeat(r, 1, 1, 1), wrong_mu.repeat(r, 1), wrong_logvar.repeat(r, 1), decode, k,
                                 generator=gen)
        gaps[k] = (iwae_nll(log_w).view(r, -1) + log_px).mean().item()
    var = logvar[0].exp()
    kl = (0.5 * (ratio + shift**2 / var - 1 - math.log(ratio))).sum().item()
    assert abs(gaps[1] - kl) < 0.06, (gaps[1], kl)
    assert gaps[1] > 1.0 and gaps[1] > gaps[10] > gaps[100] and gaps[10] < 0.2, gaps  # K = 1 clearly worst

    r = 4
    log_w = iwae_log_weights(x.repeat(r, 1, 1, 1), wrong_mu.repeat(r, 1), wrong_logvar.repeat(r, 1), decode, 5000,
                             generator=gen)
    gap_5000 = iwae_nll(log_w).view(r, -1).mean(0) + log_px  # per image
    assert gap_5000.abs().max() < 0.05, gap_5000


# --- bits per dimension and the sampler ----------------------------------------------------------

def test_bits_per_dim_formula():
    dims = 3 * 64 * 64
    nll = torch.tensor([0.0, 1000.0, 12345.6], dtype=F64)
    want = (nll + dims * math.log(256)) / (dims * math.log(2))
    torch.testing.assert_close(bits_per_dim(nll, dims), want, rtol=1e-15, atol=0)
    assert bits_per_dim(1000.0, dims) == pytest.approx(8 + 1000 / (dims * math.log(2)), rel=1e-14)
    # one nat per dimension more is 1/ln 2 bits per dimension more
    assert bits_per_dim(float(dims), dims) - bits_per_dim(0.0, dims) == pytest.approx(1 / math.log(2), rel=1e-12)


@pytest.mark.parametrize("dims", [1, 6, 12288])
def test_uniform_density_is_eight_bits_per_dim(dims):
    """p(x) = 1 on [0, 1]^D: every one of the 256^D bins has mass 256^−D, i.e. 8 bits per dimension."""
    assert bits_per_dim(0.0, dims) == 8.0
    assert torch.equal(bits_per_dim(torch.zeros(2, dtype=F64), dims), torch.full((2,), 8.0, dtype=F64))


def test_iwae_chunking_does_not_change_the_weights():
    x, mu, logvar, decode = _sigmoid_model(n=5)
    calls = []

    def counting_decode(z):
        calls.append(z.shape[0])
        return decode(z)

    small = iwae_log_weights(x, mu, logvar, counting_decode, 9, generator=torch.Generator().manual_seed(7), chunk=7)
    assert max(calls) == 7 and sum(calls) == 45
    calls.clear()
    whole = iwae_log_weights(x, mu, logvar, counting_decode, 9, generator=torch.Generator().manual_seed(7), chunk=4096)
    assert calls == [45]
    torch.testing.assert_close(small, whole, rtol=1e-14, atol=1e-12)
    other = iwae_log_weights(x, mu, logvar, decode, 9, generator=torch.Generator().manual_seed(8))
    assert not torch.allclose(other, whole)  # the generator really drives the samples


def test_iwae_needs_a_sample():
    x, mu, logvar, decode = _sigmoid_model(n=2)
    with pytest.raises(ValueError):
        iwae_log_weights(x, mu, logvar, decode, 0)
    with pytest.raises(ValueError):
        iwae_log_weights(x, mu, logvar, decode, -3)
