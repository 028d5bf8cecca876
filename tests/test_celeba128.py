"""configs/celeba128.json: a partial config layered over config.json, and train.py end to end at 128×128.

The end-to-end run keeps the configuration's network (five stride-2 stages 32…512, one residual block
per stage, latent 256) and shortens everything else: one epoch over the shared 192-image train split at
batch 32, the eager reference loss, no compile, a light evaluation.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from model.training.config import DEFAULT_CONFIG, SCHEMA, load_config, read_config_file, validate
from pipeline.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
CELEBA128 = ROOT / "configs" / "celeba128.json"
ARTIFACTS = ("config.json", "metrics.jsonl", "training_log.png", "reconstructions.png", "samples.png",
             "interpolation.png", "failures.png", "summary.json", "checkpoints/last.pt", "checkpoints/best.pt",
             "evaluation.json", "evaluation.png", "failure_modes.png")


# ---------------------------------------------------------------- config layering
def test_partial_config_file_is_layered_over_the_defaults(tmp_path):
    part = tmp_path / "part.json"
    part.write_text(json.dumps({"latent_dim": 64, "name": "part"}))
    defaults = read_config_file()
    raw = read_config_file(part)
    assert set(raw) == set(SCHEMA) == set(defaults)
    assert raw["latent_dim"] == 64 and raw["name"] == "part"
    assert {k: v for k, v in raw.items() if k not in ("latent_dim", "name")} == \
           {k: v for k, v in defaults.items() if k not in ("latent_dim", "name")}
    cfg = load_config(["--config", str(part), "--beta", "2"])  # the command line still wins over both
    assert cfg["latent_dim"] == 64 and cfg["beta"] == 2.0 and cfg["channels"] == [32, 64, 128, 256]
    assert read_config_file(DEFAULT_CONFIG) == defaults


def test_unknown_key_in_a_config_file_is_refused_with_a_suggestion(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"latentdim": 64}))
    with pytest.raises(ConfigError, match=r"bad\.json.*unknown config key 'latentdim'.*did you mean 'latent_dim'"):
        read_config_file(bad)
    bad.write_text("[1, 2]")
    with pytest.raises(ConfigError, match="JSON object"):
        read_config_file(bad)


def test_celeba128_config_holds_only_what_differs():
    layer = {k: v for k, v in json.loads(CELEBA128.read_text()).items() if not k.startswith("#")}  # comments
    defaults = read_config_file()
    assert all(layer[k] != defaults[k] for k in layer), "configs/celeba128.json repeats a default"
    cfg = validate(read_config_file(CELEBA128))
    assert cfg["image_size"] == 128 and len(cfg["channels"]) == 5 and cfg["res_blocks"] >= 1
    assert cfg["image_size"] // 2 ** len(cfg["channels"]) == 4  # the bottleneck stays 4×4


# ---------------------------------------------------------------- train.py end to end at 128×128
@pytest.mark.slow
def test_celeba128_trains_end_to_end(shards_dir, tmp_path):
    out = tmp_path / "c128"
    args = ["--config", CELEBA128, "--data", shards_dir, "--out", out, "--epochs", 1, "--batch_size", 32,
            "--eval_batch_size", 24, "--num_threads", 1, "--loss_impl", "torch", "--compile", "false",
            "--log_interval", 3, "--eval_iwae_images", 4, "--eval_iwae_k", 4, "--eval_samples", 8,
            "--n_samples", 8, "--n_interpolation", 4, "--n_failures", 4, "--n_reconstructions", 4]
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, timeout=300, env={**os.environ, "COLUMNS": "120"})
    assert proc.returncode == 0, f"train.py failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    for name in ARTIFACTS:
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name

    cfg = json.loads((out / "config.json").read_text())  # the merged config: the layer, the defaults, the CLI
    assert cfg["image_size"] == 128 and cfg["channels"] == [32, 64, 128, 256, 512] and cfg["name"] == "celeba128"
    assert cfg["kl_schedule"] == read_config_file()["kl_schedule"] and cfg["batch_size"] == 32
    summary = json.loads((out / "summary.json").read_text())
    test = summary["test"]
    assert test["count"] > 0 and test["mse_per_pixel"] == pytest.approx(test["rec"] / (3 * 128 * 128))
    evaluation = json.loads((out / "evaluation.json").read_text())
    assert evaluation["count"] > 0 and 0 < evaluation["ssim"] < 1 and evaluation["nll_iwae"] > 0

    from model.use.loading import load_trained
    from model.vae import ResidualBlock, count_parameters

    trained = load_trained(out / "checkpoints" / "best.pt", device="cpu")
    model = trained.model
    assert model.cfg.image_size == 128 and summary["parameters"] == count_parameters(model)
    assert sum(isinstance(m, ResidualBlock) for m in model.modules()) == 2 * len(cfg["channels"]) * cfg["res_blocks"]
    with torch.no_grad():
        assert model.decode(torch.zeros(2, cfg["latent_dim"])).shape == (2, 3, 128, 128)
        assert model.reconstruct(torch.rand(2, 3, 128, 128)).shape == (2, 3, 128, 128)
