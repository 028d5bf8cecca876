"""Schedules (learning rate, KL weight β), free bits, and the β panel of training_log.png: fast unit
tests (no data, no subprocess). Each value is checked against its formula computed independently."""
from __future__ import annotations

import math
import struct

import numpy as np
import pytest
import torch

from model.losses.kl import free_bits_kl, kl_floor_active, kl_per_dim
from model.training import observe as artifacts
from model.training.step import beta_at, lr_at

KW = dict(warmup_steps=0, total_steps=1, cycles=1, ratio=1.0)  # the arguments a schedule ignores


# ---------------------------------------------------------------- learning rate
def test_lr_warmup_then_cosine_to_floor():
    kw = dict(lr=1e-3, warmup_steps=10, total_steps=110, schedule="cosine", min_lr_ratio=0.1)
    assert lr_at(0, **kw) == pytest.approx(1e-4)
    assert lr_at(9, **kw) == pytest.approx(1e-3)
    assert lr_at(60, **kw) == pytest.approx(1e-3 * (0.1 + 0.9 * 0.5))
    assert lr_at(110, **kw) == pytest.approx(1e-4)
    assert lr_at(60, **{**kw, "schedule": "constant"}) == 1e-3


def test_lr_wsd_holds_then_decays_linearly_over_its_last_share():
    kw = dict(lr=1e-3, warmup_steps=10, total_steps=110, schedule="wsd", min_lr_ratio=0.0, decay_ratio=0.3)
    assert lr_at(0, **kw) == pytest.approx(1e-4) and lr_at(9, **kw) == pytest.approx(1e-3)
    assert lr_at(80, **kw) == pytest.approx(1e-3)  # 70 of the 100 steps after the warm-up: still stable
    assert lr_at(95, **kw) == pytest.approx(1e-3 * 0.5)  # halfway through the last 30
    assert lr_at(110, **kw) == pytest.approx(0.0)
    assert lr_at(110, **{**kw, "min_lr_ratio": 0.1}) == pytest.approx(1e-4)
    assert lr_at(10, **{**kw, "decay_ratio": 1.0}) == pytest.approx(1e-3)  # 1.0: a linear decay from the start
    assert lr_at(60, **{**kw, "decay_ratio": 1.0}) == pytest.approx(5e-4)


# ---------------------------------------------------------------- β: linear and constant
def test_kl_annealing_ramps_linearly_then_holds():
    kw = dict(beta=2.0, schedule="linear", warmup_steps=100, total_steps=1000, cycles=4, ratio=0.5)
    assert beta_at(0, **kw) == 0.0
    assert beta_at(50, **kw) == pytest.approx(1.0)
    assert beta_at(100, **kw) == beta_at(10_000, **kw) == 2.0
    for step in range(0, 300, 7):
        assert beta_at(step, **kw) == pytest.approx(2.0 * min(1.0, step / 100))


def test_linear_without_warmup_is_constant():
    for step in (0, 1, 5, 999, 10**6):
        assert beta_at(step, beta=0.7, schedule="linear", **{**KW, "warmup_steps": 0}) == 0.7


def test_constant_ignores_warmup_and_cycles():
    for step in range(0, 500, 13):
        assert beta_at(step, beta=1.5, schedule="constant", warmup_steps=100, total_steps=400, cycles=3,
                       ratio=0.25) == 1.5


def test_unknown_schedule_is_refused():
    with pytest.raises(ValueError, match="unknown KL schedule"):
        beta_at(0, beta=1.0, schedule="cosine", **KW)


# ---------------------------------------------------------------- β: cyclical (Fu et al. 2019)
CYCLES = [(1000, 4, 0.5), (1000, 4, 1.0), (100, 3, 0.5), (101, 7, 0.25), (10, 3, 1.0), (997, 5, 0.3), (64, 1, 0.5)]


def _starts(total: int, cycles: int) -> list[int]:
    """First step of each cycle, ⌊c·T/M⌋, by exact rational arithmetic."""
    return [math.floor(c * total / cycles) for c in range(cycles)]


@pytest.mark.parametrize("total, cycles, ratio", CYCLES)
def test_cyclical_matches_formula_at_every_step(total, cycles, ratio):
    L = total / cycles
    starts = _starts(total, cycles)
    for step in range(total):
        start = max(s for s in starts if s <= step)
        want = 2.0 * min(1.0, ((step - start) / L) / ratio)
        got = beta_at(step, beta=2.0, schedule="cyclical", warmup_steps=0, total_steps=total, cycles=cycles,
                      ratio=ratio)
        assert got == pytest.approx(want, rel=1e-12, abs=1e-12), step
        if total % cycles == 0:  # the formula as written: τ = (step mod L) / L
            assert got == pytest.approx(2.0 * min(1.0, (step % L) / L / ratio), abs=1e-12)


@pytest.mark.parametrize("total, cycles, ratio", CYCLES)
def test_cyclical_shape_of_each_cycle(total, cycles, ratio):
    L = total / cycles
    kw = dict(beta=3.0, schedule="cyclical", warmup_steps=0, total_steps=total, cycles=cycles, ratio=ratio)
    starts = _starts(total, cycles)
    for c, start in enumerate(starts):
        end = starts[c + 1] if c + 1 < cycles else total
        betas = [beta_at(s, **kw) for s in range(start, end)]
        assert betas[0] == 0.0  # every cycle begins at β = 0
        assert all(later >= earlier for earlier, later in zip(betas, betas[1:]))  # rises, never falls
        for k, b in enumerate(betas):
            if k >= ratio * L - 1e-9:  # from ratio·L on, β holds `beta` to the cycle's end
                assert b == pytest.approx(3.0, rel=1e-12)
            else:
                assert b < 3.0
    assert beta_at(total + 5, **kw) == pytest.approx(3.0)  # past the end: the last cycle holds `beta`


def test_cyclical_default_config_shape():
    """config.json's defaults (4 cycles, ratio 0.5) over 1000 steps: ramps of 125 steps, holds of 125."""
    kw = dict(beta=1.0, schedule="cyclical", warmup_steps=200, total_steps=1000, cycles=4, ratio=0.5)
    assert [beta_at(s, **kw) for s in (0, 250, 500, 750)] == [0.0] * 4
    assert beta_at(62, **kw) == pytest.approx(62 / 125)
    assert all(beta_at(s, **kw) == 1.0 for s in [*range(125, 250), *range(875, 1000)])


# ---------------------------------------------------------------- KL per dimension and free bits
def _latents(B=16, L=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    scale = torch.linspace(0.05, 2.0, L)  # dimensions from near the prior to far from it
    mu = torch.randn(B, L, generator=g, dtype=torch.float64) * scale
    logvar = torch.randn(B, L, generator=g, dtype=torch.float64) * 0.5 * scale
    return mu, logvar


def _np_kl(mu, logvar):
    m, lv = mu.detach().numpy().astype(np.float64), logvar.detach().numpy().astype(np.float64)
    return 0.5 * (m ** 2 + np.exp(lv) - 1.0 - lv)


def test_kl_per_dim_formula_and_fp32():
    mu, logvar = _latents()
    got = kl_per_dim(mu.to(torch.bfloat16), logvar.to(torch.bfloat16))
    assert got.dtype == torch.float32 and got.shape == mu.shape
    want = _np_kl(mu.to(torch.bfloat16).double(), logvar.to(torch.bfloat16).double())
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-6)


def test_free_bits_zero_is_the_usual_kl_term():
    from kernels.reference import reparam_kl_ref

    mu, logvar = (t.float() for t in _latents())
    _, kl = reparam_kl_ref(mu, logvar, torch.zeros_like(mu))  # the kernels' per-sample KL
    got = free_bits_kl(mu, logvar, 0.0)
    assert got.dim() == 0 and got.dtype == torch.float32
    assert got == kl_per_dim(mu, logvar).sum(1).mean()  # exactly
    torch.testing.assert_close(got, kl.float().mean(), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("lam", [0.0, 0.05, 0.3, 1.0, 100.0])
def test_free_bits_value_against_numpy(lam):
    mu, logvar = _latents(seed=1)
    want = np.maximum(lam, _np_kl(mu, logvar).mean(axis=0)).sum()
    assert free_bits_kl(mu, logvar, lam).item() == pytest.approx(want, rel=1e-6)


def test_free_bits_gradient_is_zero_under_the_floor_only():
    mu, logvar = _latents(B=32, L=8, seed=2)
    per_dim = _np_kl(mu, logvar).mean(axis=0)
    lam = float(np.median(per_dim))  # half the dimensions under the floor, half above
    under = per_dim < lam
    assert 0 < under.sum() < len(under) and not np.any(np.isclose(per_dim, lam))
    mu.requires_grad_(True)
    logvar.requires_grad_(True)
    g_mu, g_lv = torch.autograd.grad(free_bits_kl(mu, logvar, lam), (mu, logvar))
    for g in (g_mu, g_lv):
        assert torch.all(g[:, torch.from_numpy(under)] == 0)  # exactly zero: the floor is a constant
        assert torch.all(g[:, torch.from_numpy(~under)].abs().sum(0) > 0)
    # above the floor, the gradient is the plain KL's: d/dμ = μ/B, d/dlogvar = (exp(logvar) − 1)/(2B)
    B = mu.shape[0]
    above = torch.from_numpy(~under)
    torch.testing.assert_close(g_mu[:, above].float(), (mu / B).detach()[:, above].float())
    torch.testing.assert_close(g_lv[:, above].float(), ((logvar.exp() - 1) / (2 * B)).detach()[:, above].float())
    assert kl_floor_active(mu, logvar, lam).item() == int(under.sum())
    assert kl_floor_active(mu, logvar, 0.0).item() == 0


def test_free_bits_refuses_negative_floor():
    mu, logvar = _latents()
    with pytest.raises(ValueError):
        free_bits_kl(mu, logvar, -0.1)


# ---------------------------------------------------------------- training_log.png
def _records(schedule_steps=40):
    out = []
    for step in range(1, schedule_steps + 1):
        beta = beta_at(step - 1, beta=1.0, schedule="cyclical", warmup_steps=0, total_steps=schedule_steps, cycles=2,
                       ratio=0.5)
        out.append({"kind": "train", "step": step, "loss": 100.0 / step + beta, "rec": 100.0 / step, "kl": 5.0,
                    "beta": beta})
        if step % 20 == 0:
            out.append({"kind": "val", "step": step, "elbo_loss": 90.0 / step, "rec": 80.0 / step, "kl": 4.0})
    return out


def _png_size(path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


def test_training_log_has_a_beta_panel(tmp_path, monkeypatch):
    seen = []
    real = artifacts.save_figure

    def spy(fig, path):
        seen.append({"titles": [ax.get_title() for ax in fig.axes],
                     "beta": fig.axes[3].lines[0].get_ydata().tolist() if fig.axes[3].lines else []})
        if len(seen) == 1:
            return real(fig, path)  # one real PNG is enough to check the layout
        artifacts.pyplot().close(fig)
        return path

    monkeypatch.setattr(artifacts, "save_figure", spy)
    records = _records()
    out = artifacts.plot_training_log(records, tmp_path / "training_log.png", schedule="cyclical")
    assert len(seen[0]["titles"]) == 4
    assert seen[0]["titles"][3] == "β schedule (cyclical)"
    assert seen[0]["beta"] == [r["beta"] for r in records if r["kind"] == "train"]
    width, height = _png_size(out)
    assert 0.5 < height / width < 1.0  # a 2×2 grid, not a strip of four
    # existing callers (no schedule argument) keep working; a record may name the schedule
    artifacts.plot_training_log(records, tmp_path / "b.png")
    artifacts.plot_training_log(records + [{"kind": "meta", "kl_schedule": "linear"}], tmp_path / "c.png")
    assert [seen[1]["titles"][3], seen[2]["titles"][3]] == ["β schedule", "β schedule (linear)"]


def test_training_log_draws_the_whole_schedule_and_the_added_terms(tmp_path, monkeypatch):
    """With the config: β at every step from the schedule (logged steps marked on it), the total's title
    naming its actual terms, and a panel per term the objective added."""
    seen = {}

    def spy(fig, path):
        seen["axes"] = {ax.get_title(): ax for ax in fig.axes}
        seen["n"] = len(fig.axes)
        artifacts.pyplot().close(fig)
        return path

    monkeypatch.setattr(artifacts, "save_figure", spy)
    total = 40
    cfg = {"beta": 1.0, "kl_schedule": "cyclical", "kl_warmup_steps": 0, "kl_cycles": 2, "kl_ratio": 0.5,
           "recon": "gaussian_learned_sigma", "free_bits": 0.25, "perceptual_weight": 0.1, "ssim_weight": 0.0,
           "ssim_scales": 1}
    records = [r for r in _records(total) if r["kind"] == "val" or r["step"] % 10 == 0]  # logged every 10 steps
    for r in records:
        if r["kind"] == "train":
            r.update(sigma=0.5, rec_nll=-1000.0, kl_penalty=8.0, kl_dims_under_floor=3.0, perceptual=0.2)
    artifacts.plot_training_log(records, tmp_path / "t.png", config=cfg, total_steps=total)
    axes = seen["axes"]
    assert seen["n"] == 9  # 4 + sigma, rec_nll, kl_penalty, dims under the floor, perceptual
    assert "total loss (Gaussian NLL (learned σ) + β·Σ max(λ, KL_j) + 0.1·perceptual)" in axes
    beta = axes["β schedule (cyclical)"]
    curve, marks = beta.lines
    want = [beta_at(s, beta=1.0, schedule="cyclical", warmup_steps=0, total_steps=total, cycles=2, ratio=0.5)
            for s in range(total)]
    assert curve.get_xdata().tolist() == list(range(1, total + 1)) and curve.get_ydata().tolist() == want
    assert marks.get_xdata().tolist() == [10, 20, 30, 40]
    assert marks.get_ydata().tolist() == [want[s - 1] for s in (10, 20, 30, 40)]
    assert axes["latent dimensions under the free-bits floor"].lines[0].get_ydata().tolist() == [3.0] * 4
    assert "decoder σ (σ-VAE)" in axes and "perceptual term P (VGG features)" in axes
    # without the config, the records alone name the terms
    artifacts.plot_training_log(records, tmp_path / "u.png")
    assert "total loss (Gaussian NLL + β·Σ max(λ, KL_j) + w·perceptual)" in seen["axes"]
