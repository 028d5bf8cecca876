"""bench.recipe: recipes trained at one train_seconds budget, ranked by test PSNR in one table and JSON."""
from __future__ import annotations

import json

import pytest

from bench.recipe import RECIPES, main, table_rows

TINY = ["--channels", "8,16,32,64", "--latent_dim", "8", "--eval_batch_size", "32", "--eval_iwae_images", "4",
        "--eval_samples", "8", "--num_threads", "1", "--compile", "false", "--loss_impl", "torch", "--amp", "off"]


@pytest.mark.slow
def test_recipes_train_to_the_same_budget_and_rank_by_psnr(shards_dir, tmp_path):
    assert main(["--shards", str(shards_dir), "--only", "default", "--seconds", "8", "--out", str(tmp_path),
                 "--batch_size", "16", *TINY]) == 0
    doc = json.loads((tmp_path / "recipe.json").read_text())
    (r,) = doc["results"]
    cfg = json.loads((tmp_path / "default-0" / "config.json").read_text())
    assert doc["settings"]["seconds"] == 8 and cfg["train_seconds"] == 8 and r["steps"] == cfg["steps"] >= 1
    assert r["psnr_db"] == json.loads((tmp_path / "default-0" / "evaluation.json").read_text())["psnr_db"]
    assert r["outside_over_face"] > 0 and r["batch_size"] == 16


def test_the_table_ranks_by_psnr_and_marks_repeats():
    results = [{"recipe": name, "repeat": rep, "psnr_db": psnr, "mse_per_pixel": 0.01, "steps": 10, "batch_size": 32,
                "images_per_s": 100.0, "wall_s": 1.0, "outside_over_face": 1.5}
               for name, rep, psnr in (("seed", 0, 19.0), ("default", 0, 21.0), ("default", 1, 20.5))]
    assert [row[0] for row in table_rows(results)] == ["default", "default #1", "seed"]


@pytest.mark.parametrize("argv, line", [
    (["--only", "default,fastest"], f"unknown recipe(s) fastest; choose from {', '.join(RECIPES)}"),
    (["--seconds", "0"], "--seconds must be in (0, 86400], got 0"),
    (["--repeats", "0"], "--repeats"),
])
def test_bad_arguments_are_one_line(argv, line, capsys):
    assert main(argv) == 2
    assert line in capsys.readouterr().err
