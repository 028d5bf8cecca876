"""The network, its config and checkpoints: fast unit tests (no data, no subprocess; schedules: test_schedules.py)."""
from __future__ import annotations

import pytest
import torch

from model.training.checkpoint import load_checkpoint, load_model_state, make_checkpoint, rng_state, save_atomic, set_rng_state
from model.training.config import DEFAULT_CONFIG, SCHEMA, read_config_file, validate
from model.vae import ConvVAE, VAEConfig, count_parameters
from pipeline.errors import ConfigError


def _expected_params(cfg: VAEConfig) -> int:
    """Parameter count from the architecture's formula, independent of the module code."""
    k, widths, s = cfg.kernel_size, list(cfg.channels), cfg.bottleneck
    res = lambda c: cfg.res_blocks * 2 * (9 * c * c + 2 * c)  # two bias-free 3×3 convs + two BatchNorms
    n, c_in = 0, 3
    for c in widths:  # encoder: bias-free conv + BatchNorm(γ, β)
        n += c_in * c * k * k + 2 * c + res(c)
        c_in = c
    flat = widths[-1] * s * s
    n += 2 * (flat * cfg.latent_dim + cfg.latent_dim)  # mu and logvar heads
    n += cfg.latent_dim * flat + flat  # decoder linear
    rev = widths[::-1]
    for c, c_next in zip(rev, rev[1:]):
        n += res(c) + c * c_next * k * k + 2 * c_next
    n += res(rev[-1]) + rev[-1] * 3 * k * k + 3  # last transposed conv keeps its bias
    return n


def test_default_parameter_count_is_exact():
    model = ConvVAE()
    assert count_parameters(model) == 2_957_955 == _expected_params(model.cfg)


@pytest.mark.parametrize("kernel_size,res_blocks,channels,latent", [
    (4, 0, (32, 64, 128, 256), 128), (3, 1, (16, 32, 64, 128), 32), (5, 0, (8, 16, 32), 16), (2, 2, (8, 16, 32, 64), 8),
])
def test_shapes_and_counts_for_configured_variants(kernel_size, res_blocks, channels, latent):
    cfg = VAEConfig(image_size=64, channels=channels, latent_dim=latent, kernel_size=kernel_size, res_blocks=res_blocks)
    model = ConvVAE(cfg)
    assert count_parameters(model) == _expected_params(cfg)
    x = torch.rand(3, 3, 64, 64)
    mu, logvar = model.encode(x)
    assert mu.shape == logvar.shape == (3, latent)
    logits = model.decode_logits(mu)
    assert logits.shape == x.shape
    images = model.decode(torch.randn(5, latent))
    assert images.shape == (5, 3, 64, 64) and images.min() >= 0 and images.max() <= 1


def test_forward_returns_logits_and_per_sample_kl():
    model = ConvVAE(VAEConfig(channels=(8, 16, 32, 64), latent_dim=16))
    out = model(torch.rand(4, 3, 64, 64))
    assert out.logits.shape == (4, 3, 64, 64)
    assert out.mu.shape == out.logvar.shape == (4, 16)
    assert out.kl.shape == (4,) and out.kl.dtype == torch.float32 and bool((out.kl >= 0).all())


def test_channels_last_bf16_autocast_matches_fp32_roughly():
    torch.manual_seed(0)
    model = ConvVAE(VAEConfig(channels=(8, 16, 32, 64), latent_dim=16)).eval()
    x = torch.rand(2, 3, 64, 64)
    ref = model.decode_logits(model.encode(x)[0])
    model_cl = model.to(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = model_cl.decode_logits(model_cl.encode(x.to(memory_format=torch.channels_last))[0])
    assert got.dtype == torch.bfloat16
    assert torch.allclose(got.float(), ref, atol=0.1, rtol=0.05)


def test_summary_cli_prints_table_and_exact_count(capsys, monkeypatch):
    from model.summary import main

    monkeypatch.setenv("COLUMNS", "120")
    assert main([]) == 0
    out = capsys.readouterr().out
    assert "2,957,955" in out and "ConvTranspose2d" in out and "256×4×4" in out


# ---------------------------------------------------------------- config
def test_config_json_holds_every_key_and_validates():
    raw = read_config_file(DEFAULT_CONFIG)
    assert set(raw) == set(SCHEMA)
    cfg = validate(raw)
    assert cfg["channels"] == [32, 64, 128, 256] and cfg["latent_dim"] == 128 and cfg["kernel_size"] == 4


@pytest.mark.parametrize("key,value,match", [
    ("beta", -1, "beta"), ("loss_impl", "cuda-magic", "loss_impl"), ("epochs", 0, "epochs"),
    ("channels", "32,x", "channels"), ("amp", "fp8", "amp"), ("compile", "maybe", "compile"),
    ("compile_mode", "turbo", "compile_mode"),
    ("image_size", 60, "multiple"), ("batch_size", None, "null"),
])
def test_bad_values_raise_config_error(key, value, match):
    raw = read_config_file(DEFAULT_CONFIG)
    raw[key] = value
    with pytest.raises(ConfigError, match=match):
        validate(raw)


def test_unknown_key_suggests_the_close_one():
    raw = read_config_file(DEFAULT_CONFIG)
    raw["latentdim"] = 3
    with pytest.raises(ConfigError, match="did you mean 'latent_dim'"):
        validate(raw)


def test_command_line_strings_are_coerced():
    raw = read_config_file(DEFAULT_CONFIG)
    cfg = validate({**raw, "beta": "2", "channels": "8,16,32,64", "compile": "false", "stop_at_step": "null",
                    "adam_betas": "0.5,0.9"})
    assert cfg["beta"] == 2.0 and cfg["channels"] == [8, 16, 32, 64] and cfg["compile"] is False
    assert cfg["stop_at_step"] is None and cfg["adam_betas"] == [0.5, 0.9]


# ---------------------------------------------------------------- checkpoints
def test_checkpoint_roundtrip_restores_model_optimizer_and_rng(tmp_path):
    torch.manual_seed(0)
    model = ConvVAE(VAEConfig(channels=(8, 16), latent_dim=4, image_size=16))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.rand(2, 3, 16, 16)).kl.sum().backward()
    opt.step()
    cfg = validate({**read_config_file(DEFAULT_CONFIG), "channels": [8, 16], "latent_dim": 4, "image_size": 16})
    state = make_checkpoint(model=model, optimizer=opt, scaler=None, step=7, epoch=1, batch_in_epoch=3,
                            best_val_elbo=-12.5, config=cfg)
    expected_next = torch.rand(3)
    path = save_atomic(state, tmp_path / "ck" / "last.pt")
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]  # no temp file left behind

    ck = load_checkpoint(path)
    fresh = ConvVAE(VAEConfig(channels=(8, 16), latent_dim=4, image_size=16))
    load_model_state(fresh, ck["model"], path)
    for a, b in zip(model.state_dict().values(), fresh.state_dict().values()):
        assert torch.equal(a, b)
    assert (ck["step"], ck["epoch"], ck["batch_in_epoch"], ck["best_val_elbo"]) == (7, 1, 3, -12.5)
    set_rng_state(ck["rng"])
    assert torch.equal(torch.rand(3), expected_next)


def test_checkpoint_from_other_model_is_a_config_error(tmp_path):
    small = ConvVAE(VAEConfig(channels=(8, 16), latent_dim=4, image_size=16))
    other = ConvVAE(VAEConfig(channels=(8, 16), latent_dim=6, image_size=16))
    with pytest.raises(ConfigError, match="different model"):
        load_model_state(other, small.state_dict(), tmp_path / "x.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match="cannot read checkpoint"):
        load_checkpoint(tmp_path / "junk.pt")
    with pytest.raises(ConfigError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")


def test_failed_save_keeps_previous_file(tmp_path):
    target = tmp_path / "last.pt"
    save_atomic({"v": 1}, target)

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        save_atomic({"v": Unpicklable()}, target)
    assert torch.load(target)["v"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_rng_state_covers_python_numpy_torch():
    import random

    import numpy as np

    state = rng_state()
    a = (random.random(), np.random.rand(), torch.rand(1).item())
    set_rng_state(state)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == a
