"""model.losses.objective and model.losses.structural: the total loss config builds, term by term.

Each added term is checked against its formula computed here from the same tensors; the default
config is the seed's fused loss itself; the learned σ trains, is checkpointed and reloads; the fused
Triton path (through the interpreter on CPU) gives the same loss and gradients as the reference when
the terms are combined in ways the seed's loss never uses (gradients through rec and kl separately).
"""
from __future__ import annotations

import math

import pytest
import torch

from model.losses.kl import free_bits_kl, kl_per_dim
from model.losses.objective import Objective
from model.losses.structural import max_scales, ms_ssim, ms_ssim_loss, ssim_loss
from model.metrics import ssim, ssim_terms
from model.training.config import load_config
from model.losses.objective import make_loss_fn
from model.vae import VAEOutput
from pipeline.errors import ConfigError
from tests.utils import DEVICES, needs_triton_path


def config(**over):
    return load_config([f"--{k}={','.join(map(str, v)) if isinstance(v, list) else v}" for k, v in over.items()])


def batch(b: int = 4, size: int = 32, latent: int = 6, seed: int = 0, device: str = "cpu"):
    gen = torch.Generator().manual_seed(seed)
    logits = (1.5 * torch.randn(b, 3, size, size, generator=gen)).to(device).requires_grad_()
    x = torch.rand(b, 3, size, size, generator=gen).to(device)
    mu = torch.randn(b, latent, generator=gen).to(device).requires_grad_()
    logvar = (0.3 * torch.randn(b, latent, generator=gen)).to(device).requires_grad_()
    kl = 0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar).sum(1)
    return VAEOutput(logits, mu, logvar, kl), x


BETA = torch.tensor(0.7)
# the checks read values out of tensors that are still part of a graph (the backward comes after)
pytestmark = pytest.mark.filterwarnings("ignore:Converting a tensor with requires_grad=True to a scalar")


def test_default_config_is_the_seeds_fused_loss():
    out, x = batch()
    obj = Objective(config(), impl="torch")
    terms = obj(out, x, BETA)
    ref = make_loss_fn("torch", False)(out, x, BETA)
    assert obj.plain and terms.extra == {}
    torch.testing.assert_close(torch.stack(terms[:3]), torch.stack(tuple(ref)))
    sse = (torch.sigmoid(out.logits) - x).pow(2).flatten(1).sum(1)
    assert float(terms.loss) == pytest.approx(float((sse + 0.7 * out.kl).mean()), rel=1e-5)


def test_learned_sigma_is_a_gaussian_nll_that_trains_and_reloads():
    out, x = batch()
    obj = Objective(config(recon="gaussian_learned_sigma"), impl="torch")
    assert float(obj.log_sigma.exp() ** 2) == pytest.approx(0.5)  # the seed's σ² at the start
    with torch.no_grad():
        obj.log_sigma.fill_(math.log(0.2))
    terms = obj(out, x, BETA)
    d = x[0].numel()
    sse = (torch.sigmoid(out.logits) - x).pow(2).flatten(1).sum(1).mean()
    nll = sse / (2 * 0.04) + d * math.log(0.2) + 0.5 * d * math.log(2 * math.pi)
    assert float(terms.loss) == pytest.approx(float(nll + 0.7 * out.kl.mean()), rel=1e-5)
    assert float(terms.extra["sigma"]) == pytest.approx(0.2) and float(terms.extra["rec_nll"]) == pytest.approx(float(nll), rel=1e-5)
    terms.loss.backward()
    # d/d log σ of SSE/(2σ²) + D log σ = −SSE/σ² + D
    assert float(obj.log_sigma.grad) == pytest.approx(float(-sse / 0.04 + d), rel=1e-4)
    assert obj.trainable() == [obj.log_sigma]
    other = Objective(config(recon="gaussian_learned_sigma"), impl="torch")
    other.load_state(obj.state())
    assert float(other.log_sigma) == pytest.approx(math.log(0.2))


def test_optimal_sigma_is_the_batch_mse():
    out, x = batch()
    terms = Objective(config(recon="gaussian_optimal_sigma"), impl="torch")(out, x, BETA)
    d = x[0].numel()
    mse = float((torch.sigmoid(out.logits) - x).pow(2).mean())
    assert float(terms.extra["sigma"]) ** 2 == pytest.approx(mse, rel=1e-5)
    expected = 0.5 * d * (1 + math.log(2 * math.pi * mse)) + 0.7 * float(out.kl.mean())
    assert float(terms.loss) == pytest.approx(expected, rel=1e-5)


def test_free_bits_replace_the_kl_term_only():
    out, x = batch()
    terms = Objective(config(free_bits=0.4), impl="torch")(out, x, BETA)
    plain = make_loss_fn("torch", False)(out, x, BETA)
    fb = free_bits_kl(out.mu, out.logvar, 0.4)
    assert float(terms.loss) == pytest.approx(float(plain.rec + 0.7 * fb), rel=1e-5)
    assert float(terms.kl) == pytest.approx(float(plain.kl)) and float(terms.extra["kl_penalty"]) == pytest.approx(float(fb))
    # logged beside it: how many dimensions sat under the floor (no KL gradient for them this step)
    under = int((kl_per_dim(out.mu, out.logvar).mean(0) < 0.4).sum())
    assert 0 < under < out.mu.shape[1] and float(terms.extra["kl_dims_under_floor"]) == under


@pytest.mark.parametrize("scales", [1, 2])
def test_ssim_term_is_weighted_one_minus_ssim(scales):
    out, x = batch(size=32)
    terms = Objective(config(ssim_weight=50, ssim_scales=scales), impl="torch")(out, x, BETA)
    plain = make_loss_fn("torch", False)(out, x, BETA)
    x_hat = torch.sigmoid(out.logits)
    s = (1 - (ssim(x_hat, x) if scales == 1 else ms_ssim(x_hat, x, scales))).mean()
    assert float(terms.extra["ssim_loss"]) == pytest.approx(float(s), rel=1e-5)
    assert float(terms.loss) == pytest.approx(float(plain.loss + 50 * s), rel=1e-5)


def test_too_many_ssim_scales_for_the_image_size_is_one_line():
    with pytest.raises(ConfigError, match="ssim_scales 4 needs larger images.*64×64 allows at most 3"):
        Objective(config(ssim_weight=1, ssim_scales=4), impl="torch")
    assert [max_scales(n) for n in (10, 11, 22, 64, 128, 176)] == [0, 1, 2, 3, 4, 5]


def test_perceptual_term_with_random_weights():
    out, x = batch(size=32)
    obj = Objective(config(perceptual_weight=0.5, perceptual_layers=["relu1_2", "relu2_2"]), impl="torch",
                    random_perceptual=True)
    terms = obj(out, x, BETA)
    plain = make_loss_fn("torch", False)(out, x, BETA)
    p = obj.perceptual(torch.sigmoid(out.logits), x).mean()
    assert float(terms.loss) == pytest.approx(float(plain.loss + 0.5 * p), rel=1e-5)
    assert "random weights" in obj.describe() and obj.trainable() == []
    terms.loss.backward()
    assert out.logits.grad is not None and all(q.grad is None for q in obj.perceptual.parameters())


def test_structural_losses():
    gen = torch.Generator().manual_seed(3)
    x = torch.rand(2, 3, 24, 24, generator=gen, dtype=torch.float64)
    y = (x + 0.1 * torch.randn(x.shape, generator=gen, dtype=torch.float64)).clamp(0, 1)
    torch.testing.assert_close(ssim_loss(y, x), 1 - ssim(y, x))
    torch.testing.assert_close(ms_ssim(y, x, 1), ssim(y, x))
    assert torch.allclose(ms_ssim(x, x, 2), torch.ones(2, dtype=torch.float64))
    with pytest.raises(ValueError, match="3 scales need images of at least 44"):
        ms_ssim(y, x, 3)
    a = torch.rand(1, 1, 22, 22, generator=gen, dtype=torch.float64).requires_grad_()
    b = torch.rand(1, 1, 22, 22, generator=gen, dtype=torch.float64)
    # fast mode: one random projection of the 484×1 Jacobian, a few evaluations instead of a thousand
    assert torch.autograd.gradcheck(lambda t: ms_ssim_loss(t, b, 2), (a,), fast_mode=True)


@pytest.mark.parametrize("size, scales", [(64, 3), (176, 5)])
def test_ms_ssim_value_against_its_formula(size, scales):
    """MS-SSIM = SSIM_M^w_M · Π_{j<M} CS_j^w_j per channel, the images halved by 2×2 means between scales,
    the paper's weights (renormalised over the M used), channels averaged: built here from ssim_terms."""
    gen = torch.Generator().manual_seed(size)
    x = torch.rand(1, 3, size, size, generator=gen, dtype=torch.float64)
    y = (x + 0.15 * torch.randn(x.shape, generator=gen, dtype=torch.float64)).clamp(0, 1)
    w = [0.0448, 0.2856, 0.3001, 0.2363, 0.1333][:scales]
    w = [v / sum(w) for v in w]
    per_channel = []
    for c in range(3):
        a, b, value = x[:, c:c + 1], y[:, c:c + 1], 1.0
        for j in range(scales):
            full, cs = (float(t) for t in ssim_terms(b, a))
            if j == scales - 1:
                value *= full ** w[j]
            else:
                value *= cs ** w[j]
                a, b = (t.reshape(1, 1, t.shape[-2] // 2, 2, t.shape[-1] // 2, 2).mean((3, 5)) for t in (a, b))
        per_channel.append(value)
    want = sum(per_channel) / 3
    assert 0.2 < want < 0.95  # far from both ends, so a wrong weight or scale shows
    assert float(ms_ssim(y, x, scales)) == pytest.approx(want, rel=1e-10)
    assert float(ms_ssim_loss(y, x, scales)) == pytest.approx(1 - want, rel=1e-9)


@needs_triton_path
@pytest.mark.parametrize("device", DEVICES)
def test_fused_path_gives_the_references_loss_and_gradients(device):
    cfg = config(recon="gaussian_learned_sigma", free_bits=0.3, ssim_weight=10)
    results = []
    for impl in ("torch", "triton"):
        out, x = batch(device=device)
        obj = Objective(cfg, impl=impl).to(device)
        terms = obj(out, x, BETA.to(device))
        terms.loss.backward()
        results.append((terms.loss.detach(), out.logits.grad, out.mu.grad, out.logvar.grad, obj.log_sigma.grad))
    for ref, fused in zip(*results):
        torch.testing.assert_close(fused.cpu(), ref.cpu(), rtol=1e-4, atol=1e-5)
