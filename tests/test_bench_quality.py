"""bench.quality: every variant is a real train.py run whose evaluation lands in one table, JSON and picture."""
from __future__ import annotations

import json

import pytest

from bench.quality import VARIANTS, main

TINY = ["--stop_at_step", "2", "--channels", "8,16,32,64", "--latent_dim", "8", "--batch_size", "16",
        "--eval_batch_size", "32", "--eval_iwae_images", "4", "--eval_samples", "8", "--num_threads", "1",
        "--compile", "false", "--loss_impl", "torch"]


@pytest.mark.slow
def test_variants_train_evaluate_and_compare(shards_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "no_weights"))  # no VGG file: the random fallback is used
    assert main(["--shards", str(shards_dir), "--only", "baseline,perceptual", "--epochs", "1", "--out", str(tmp_path),
                 *TINY]) == 0
    doc = json.loads((tmp_path / "quality.json").read_text())
    rows = {r["variant"]: r for r in doc["results"]}
    assert list(rows) == ["baseline", "perceptual"]
    assert "RANDOM VGG" in rows["perceptual"]["what"] and rows["perceptual"]["overrides"]["perceptual_weights"] == "random"
    for r in rows.values():
        ev = r["evaluation"]
        assert ev["count"] > 0 and 0 < ev["ssim"] < 1 and ev["step"] == 2 and r["images_per_s"] > 0
    cfg = json.loads((tmp_path / "perceptual" / "config.json").read_text())
    assert cfg["perceptual_weight"] > 0 and cfg["perceptual_layers"] == ["relu1_2", "relu2_2"]
    metrics = [json.loads(line) for line in (tmp_path / "perceptual" / "metrics.jsonl").read_text().splitlines()]
    assert all("perceptual" in m for m in metrics if m["kind"] == "train")  # the added term is logged on its own
    from PIL import Image

    with Image.open(tmp_path / "quality.png") as img:  # test faces + one row per variant
        assert img.height > 3 * 64 * 2 and img.width > 16 * 64


def test_unknown_variant_is_one_line(capsys):
    assert main(["--only", "baseline,sharpest"]) == 2
    assert f"unknown variant(s) sharpest; choose from {', '.join(VARIANTS)}" in capsys.readouterr().err
