"""``python -m model``: every command on a checkpoint of the session's fixture run.

One checkpointed run (the narrow network of tests/test_train.py after a pass over the shared 240
synthetic faces; tests/model_cli_fixtures.py) feeds the commands, and a real 30-epoch train.py run
what needs a trained decoder (slow); they run in-process through
``model.use.cli.main`` (the same code as ``python -m model``, which one subprocess test checks) so
the file stays fast. Bad input is in test_model_cli_errors.py, the meaning of the attribute
directions in test_model_attributes.py.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from model_cli_fixtures import (ENV, ROOT, cli, first_test_faces, ok, one_thread, png, run_dir,  # noqa: F401
                                trained_run_dir)  # noqa: F401 (fixtures)

from model.use.loading import load_trained
from pipeline.shards import read_attributes, read_split


def test_summary_describes_the_checkpoint(run_dir, capsys):
    from model.vae import ConvVAE, VAEConfig, count_parameters

    n = count_parameters(ConvVAE(VAEConfig(channels=(16, 32, 64, 128), latent_dim=32)))
    out = ok(capsys, "summary", "--run", run_dir)
    assert "best.pt" in out and f"total trainable" in out and f"{n:,}" in out
    assert "last.pt" in ok(capsys, "summary", "--run", run_dir, "--last", "--device", "cpu")


def _sample(capsys, run: Path, folder: Path, name: str, *extra: str) -> list[np.ndarray]:
    ok(capsys, "sample", "--run", run, "--n", 6, "--out", folder / f"{name}.png", "--each", folder / name, *extra)
    files = sorted((folder / name).glob("*.png"))
    assert [f.name for f in files] == [f"sample-{i:04d}.png" for i in range(6)]
    return [png(f) for f in files]


def test_sample_is_deterministic_for_a_seed(run_dir, tmp_path, capsys):
    a, b, c = (_sample(capsys, run_dir, tmp_path, name, "--seed", seed)
               for name, seed in (("a", 3), ("b", 3), ("c", 4)))
    assert all(x.shape == (64, 64, 3) for x in a)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert np.array_equal(png(tmp_path / "a.png"), png(tmp_path / "b.png"))
    assert not any(np.array_equal(x, y) for x, y in zip(a, c))


@pytest.mark.slow  # needs a trained decoder
def test_temperature_scales_the_priors_spread(trained_run_dir, tmp_path, capsys):
    """At 0.01 the faces are all nearly decode(0) (their spread, in 8-bit levels, about a hundredth of T = 1's,
    with rounding on top)."""
    warm = _sample(capsys, trained_run_dir, tmp_path, "warm", "--seed", "3")
    cold = _sample(capsys, trained_run_dir, tmp_path, "cold", "--seed", "3", "--temperature", "0.01")
    spread = lambda imgs: np.stack(imgs).astype(float).std(axis=0).mean()
    assert spread(warm) > 10 and spread(cold) < spread(warm) / 20, (spread(cold), spread(warm))


def _mse_column(out: str) -> dict[str, float]:
    """face → MSE from reconstruct's printed table."""
    rows = [line.split("│") for line in out.splitlines() if line.count("│") == 4]
    return {r[1].strip(): float(r[2]) for r in rows if r[2].strip().replace(".", "").isdigit()}


def test_reconstruct_files_matches_the_same_faces_from_the_shards(run_dir, shards_dir, tmp_path, capsys):
    from PIL import Image

    faces = first_test_faces(shards_dir, 4)
    files = []
    for i, (key, data) in enumerate(faces.items()):
        path = tmp_path / "photos" / f"{key}.jpg"
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(data)
        if i == 1:  # one as PNG: same pixels, another decoder
            with Image.open(path) as img:
                img.save(path.with_suffix(".png"))
            path = path.with_suffix(".png")
        files.append(path)
    from_files = ok(capsys, "reconstruct", "--run", run_dir, *files, "--out", tmp_path / "files.png",
                    "--each", tmp_path / "files")
    from_shards = ok(capsys, "reconstruct", "--run", run_dir, "--data", shards_dir, "--split", "test", "--n", 4,
                     "--out", tmp_path / "shards.png", "--each", tmp_path / "shards")
    for key in faces:
        a = png(tmp_path / "files" / f"{key}-recon.png").astype(float)
        b = png(tmp_path / "shards" / f"{key}-recon.png").astype(float)
        assert a.shape == b.shape == (64, 64, 3)
        assert np.abs(a - b).mean() <= 1.0, key  # ≤ 1/255 per pixel, mean
    mse_files, mse_shards = _mse_column(from_files), _mse_column(from_shards)
    assert set(mse_files) == set(mse_shards) == {*faces, "mean"}
    for key in faces:
        assert mse_files[key] == pytest.approx(mse_shards[key], abs=2e-3)
    assert png(tmp_path / "files.png").shape[1] > 4 * 64


def test_interpolate_writes_a_strip_and_a_gif(run_dir, shards_dir, tmp_path, capsys):
    from PIL import Image

    a, b = list(first_test_faces(shards_dir, 2))
    file_b = tmp_path / f"{b}.jpg"
    file_b.write_bytes(first_test_faces(shards_dir, 2)[b])
    ok(capsys, "interpolate", "--run", run_dir, "--data", shards_dir, a, file_b, "--steps", 5, "--gif",
       "--out", tmp_path / "walk.png")
    ok(capsys, "interpolate", "--run", run_dir, "--data", shards_dir, a, b, "--steps", 5, "--mode", "linear",
       "--out", tmp_path / "line.png")
    ok(capsys, "reconstruct", "--run", run_dir, "--data", shards_dir, a, b, "--out", tmp_path / "r.png",
       "--each", tmp_path / "r")
    strip = png(tmp_path / "walk.png")
    assert strip.shape[1] > 6 * strip.shape[0] // 2  # a wide strip of 7 faces
    assert (tmp_path / "line.png").is_file() and not (tmp_path / "line.gif").exists()
    with Image.open(tmp_path / "walk.gif") as gif:
        frames = []
        for i in range(gif.n_frames):
            gif.seek(i)
            frames.append(np.asarray(gif.convert("RGB"))[::4, ::4].astype(float))
    assert len(frames) == 5 + 3 and frames[0].shape == (64, 64, 3)  # forward, then back without repeating the ends
    # The walk starts and ends at the reconstructions of A and B (GIF palettes cost a few levels).
    assert np.abs(frames[0] - png(tmp_path / "r" / f"{a}-recon.png")).mean() < 4
    assert np.abs(frames[4] - png(tmp_path / "r" / f"{b}-recon.png")).mean() < 4


def test_encode_writes_every_sample_of_the_split(run_dir, shards_dir, tmp_path, capsys):
    from pipeline import make_loader

    ok(capsys, "encode", "--run", run_dir, "--data", shards_dir, "--split", "test", "--batch-size", 10,
       "--out", tmp_path / "latents.npz")
    z = np.load(tmp_path / "latents.npz")
    attrs = read_attributes(shards_dir, "test")
    assert list(z["keys"]) == list(attrs.keys) and z["mu"].shape == z["logvar"].shape == (len(attrs.keys), 32)
    assert list(z["attribute_names"]) == list(attrs.names)
    assert np.array_equal(z["attributes"], attrs.table())
    model = load_trained(run_dir / "checkpoints" / "best.pt", "cpu").model
    loader = make_loader(shards_dir, "test", 64, device="cpu", with_keys=True, num_threads=1)
    images, keys = next(iter(loader))
    loader.close()
    with torch.no_grad():
        mu, logvar = model.encode(images)
    assert list(keys) == list(z["keys"])
    torch.testing.assert_close(torch.from_numpy(z["mu"]), mu, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(torch.from_numpy(z["logvar"]), logvar, rtol=1e-4, atol=1e-4)


def test_attributes_are_mean_differences_saved_beside_the_checkpoint(run_dir, shards_dir, tmp_path, capsys):
    out = ok(capsys, "attributes", "--run", run_dir, "--data", shards_dir, "--min-count", 10)
    saved = torch.load(run_dir / "checkpoints" / "attributes.pt", weights_only=True)
    ok(capsys, "encode", "--run", run_dir, "--data", shards_dir, "--split", "train", "--out", tmp_path / "train.npz")
    z = np.load(tmp_path / "train.npz")
    mu, table = torch.from_numpy(z["mu"]), torch.from_numpy(z["attributes"])
    positives = table.sum(0).tolist()
    assert saved["count"] == len(mu) and saved["source"]["split"] == "train"
    assert saved["positives"] == dict(zip(z["attribute_names"], positives))
    enough = {n for n, p in zip(z["attribute_names"], positives) if min(p, len(mu) - p) >= 10}
    assert set(saved["vectors"]) == enough and {"Male", "Smiling", "Eyeglasses"} <= enough
    for j, name in enumerate(z["attribute_names"]):
        if name in enough:
            has = table[:, j]
            torch.testing.assert_close(saved["vectors"][name], mu[has].mean(0) - mu[~has].mean(0), rtol=1e-4, atol=1e-5)
    skipped = sorted(set(z["attribute_names"]) - enough)
    assert skipped and all(name in out for name in skipped) and "skipped" in out


def test_edit_adds_and_sweeps_along_directions(run_dir, shards_dir, tmp_path, capsys):
    key = next(iter(first_test_faces(shards_dir, 1)))
    ok(capsys, "attributes", "--run", run_dir, "--data", shards_dir, "--min-count", 10)
    ok(capsys, "edit", "--run", run_dir, "--data", shards_dir, key, "--add", "Smiling=1.5", "--add", "eyeglasses=-1",
       "--out", tmp_path / "add.png", "--each", tmp_path / "add")
    names = sorted(p.name for p in (tmp_path / "add").glob("*.png"))
    assert names == sorted(f"{key}_{e}.png" for e in ("reconstruction", "Smiling+1.5", "Eyeglasses-1", "all"))
    ok(capsys, "edit", "--run", run_dir, "--data", shards_dir, key, "--sweep", "Male", "--steps", 5,
       "--out", tmp_path / "sweep.png", "--each", tmp_path / "sweep")
    sweep = sorted(p.name for p in (tmp_path / "sweep").glob("*.png"))
    assert sweep == sorted(f"{key}_Male{a}.png" for a in ("-2", "-1", "+0", "+1", "+2"))
    recon = png(tmp_path / "add" / f"{key}_reconstruction.png")
    assert np.array_equal(png(tmp_path / "sweep" / f"{key}_Male+0.png"), recon)  # amount 0 is the reconstruction
    assert not np.array_equal(png(tmp_path / "sweep" / f"{key}_Male+2.png"), recon)
    for name in ("add.png", "sweep.png"):
        assert png(tmp_path / name).shape[1] > 4 * 64


def test_edit_of_a_file_is_deterministic(run_dir, shards_dir, tmp_path, capsys):
    key, data = next(iter(first_test_faces(shards_dir, 1).items()))
    photo = tmp_path / "face.jpg"
    photo.write_bytes(data)
    ok(capsys, "attributes", "--run", run_dir, "--data", shards_dir, "--min-count", 10)
    runs = []
    for name in ("a", "b"):
        ok(capsys, "edit", "--run", run_dir, "--data", shards_dir, photo, "--add", "Male=1.5", "--add", "Smiling=2",
           "--out", tmp_path / f"{name}.png", "--each", tmp_path / name)
        runs.append({p.name: png(p) for p in sorted((tmp_path / name).glob("*.png"))})
    assert sorted(runs[0]) == [f"face_{e}.png" for e in ("Male+1.5", "Smiling+2", "all", "reconstruction")]
    assert all(np.array_equal(runs[0][n], runs[1][n]) for n in runs[0])
    assert np.array_equal(png(tmp_path / "a.png"), png(tmp_path / "b.png"))


def test_reconstruct_without_faces_takes_the_first_16(run_dir, shards_dir, tmp_path, capsys):
    out = ok(capsys, "reconstruct", "--run", run_dir, "--data", shards_dir, "--split", "test",
             "--out", tmp_path / "r.png", "--each", tmp_path / "r")
    keys = read_attributes(shards_dir, "test").keys[:16]
    assert sorted(p.name for p in (tmp_path / "r").glob("*.png")) == sorted(f"{k}-recon.png" for k in keys)
    assert set(_mse_column(out)) == {*keys, "mean"}


@pytest.mark.parametrize("argv0,prog", [("/venv/bin/vae-model", "vae-model"),
                                        ("/repo/model/__main__.py", "python -m model")])
def test_usage_names_the_program_as_started(monkeypatch, argv0, prog):
    from model.use.cli import build_parser

    monkeypatch.setattr(sys, "argv", [argv0, "--help"])
    parser = build_parser()
    assert parser.format_usage().startswith(f"usage: {prog} ")
    sub = next(a for a in parser._actions if a.dest == "command").choices
    assert sub["sample"].format_usage().startswith(f"usage: {prog} sample ")


def test_help_names_every_command_with_an_example():
    import model.__main__
    from model.use.cli import COMMANDS, build_parser, main

    assert model.__main__.main is main  # python -m model is this CLI
    parser = build_parser()
    for name in COMMANDS:
        assert name in parser.description and f"python -m model {name} " in parser.epilog, name


def test_help_states_where_each_output_goes():
    from model.use.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command").choices
    squash = lambda name: " ".join(sub[name].format_help().split())
    assert "RUN/checkpoints/attributes.pt" in squash("attributes") and "RUN/inference" not in squash("attributes")
    for name in ("sample", "reconstruct", "interpolate", "encode", "edit"):
        assert "RUN/inference/NAME" in squash(name), name


def test_edit_computes_missing_directions_first(run_dir, shards_dir, tmp_path, capsys):
    ckpt = tmp_path / "copy" / "best.pt"
    ckpt.parent.mkdir()
    ckpt.write_bytes((run_dir / "checkpoints" / "best.pt").read_bytes())
    key = next(iter(first_test_faces(shards_dir, 1)))
    out = ok(capsys, "edit", "--checkpoint", ckpt, "--data", shards_dir, key, "--add", "Male", "--min-count", 10,
             "--out", tmp_path / "e.png")
    assert "computing them" in out and (ckpt.parent / "attributes.pt").is_file() and (tmp_path / "e.png").is_file()
    assert "computing" not in ok(capsys, "edit", "--checkpoint", ckpt, "--data", shards_dir, key, "--add", "Male",
                                 "--out", tmp_path / "e2.png")


def test_a_photo_of_another_size_is_noted_and_out_may_be_a_folder(run_dir, tmp_path, capsys):
    from PIL import Image

    photo = tmp_path / "portrait.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (400, 300, 3), dtype=np.uint8)).save(photo)
    out = ok(capsys, "reconstruct", "--run", run_dir, photo, "--out", tmp_path)
    assert "note:" in out and "300×400" in out and "--crop" in out and (tmp_path / "reconstructions.png").is_file()
    out = ok(capsys, "reconstruct", "--run", run_dir, photo, "--crop", "none", "--out", tmp_path / "whole.png")
    assert "note:" not in out and (tmp_path / "whole.png").is_file()


def test_read_attributes_matches_the_attribute_list(celeba_tree, shards_dir):
    lines = (celeba_tree / "list_attr_celeba.txt").read_text().splitlines()
    rows = {line.split()[0].split(".")[0]: [v == "1" for v in line.split()[1:]] for line in lines[2:]}
    for split in ("train", "val", "test"):
        attrs = read_attributes(shards_dir, split)
        assert attrs.names == tuple(lines[1].split()) and len(attrs.keys) == read_split(shards_dir, split).count
        assert all(list(row) == rows[key] for key, row in zip(attrs.keys, attrs.table()))


def test_walks_between_two_codes():
    from model.use.latent import sweep_amounts, walk

    a, b = torch.tensor([3.0, 0.0, 0.0]), torch.tensor([0.0, 1.0, 0.0])
    line = walk(a, b, 5, "linear")
    torch.testing.assert_close(line[2], (a + b) / 2)
    arc = walk(a, b, 5, "slerp")
    torch.testing.assert_close(arc[[0, -1]], torch.stack([a, b]))
    torch.testing.assert_close(arc.norm(dim=1), torch.linspace(3, 1, 5))  # the length moves linearly
    angles = torch.rad2deg(torch.atan2(arc[:, 1], arc[:, 0]))
    torch.testing.assert_close(angles, torch.linspace(0, 90, 5))  # at a constant angular speed
    assert sweep_amounts(2, 5) == [-2, -1, 0, 1, 2]


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_cuda_asked_for_where_there_is_none(run_dir, capsys):
    rc, _, err = cli(capsys, "summary", "--run", run_dir, "--device", "cuda")
    assert rc == 2 and err.startswith("error:") and "CUDA is not available" in err


@pytest.mark.slow  # two interpreters started
def test_python_dash_m_model_runs_and_fails_in_one_line(run_dir, tmp_path):
    def run(*argv) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "model", *map(str, argv)], cwd=ROOT, env=ENV,
                              capture_output=True, text=True, timeout=300)

    good = run("sample", "--run", run_dir, "--n", 4, "--out", tmp_path / "s.png")
    assert good.returncode == 0 and "wrote" in good.stdout and (tmp_path / "s.png").is_file(), good.stderr
    bad = run("reconstruct", "--run", run_dir, tmp_path / "missing.jpg", "--out", tmp_path / "r.png")
    lines = bad.stderr.strip().splitlines()
    assert bad.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: image file"), bad.stderr
    assert not (tmp_path / "r.png").exists()


#: Saves a checkpoint as a GPU run does: from CUDA tensors where there is a GPU; elsewhere every
#: storage is tagged "cuda:0" (what torch.save records for a GPU tensor) by a tagger of its own.
WRITE_AS_GPU = """
import sys, torch
ck = torch.load(sys.argv[1], weights_only=False)
if torch.cuda.is_available():
    ck["model"] = {k: v.cuda() for k, v in ck["model"].items()}
else:
    torch.serialization.register_package(0, lambda storage: "cuda:0", lambda obj, location: None)
torch.save(ck, sys.argv[2])
"""


@pytest.mark.slow  # an interpreter started to write it
def test_checkpoint_written_on_a_gpu_loads_on_a_cpu(run_dir, tmp_path, capsys):
    gpu = tmp_path / "gpu.pt"
    subprocess.run([sys.executable, "-c", WRITE_AS_GPU, str(run_dir / "checkpoints" / "best.pt"), str(gpu)],
                   check=True, env=ENV, timeout=120)
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA"):  # it really is a GPU checkpoint
            torch.load(gpu, weights_only=False)
    for name, which in (("gpu", ["--checkpoint", gpu]), ("cpu", ["--run", run_dir])):
        ok(capsys, "sample", *which, "--device", "cpu", "--n", 3, "--out", tmp_path / f"{name}.png",
           "--each", tmp_path / name)
    for i in range(3):
        assert np.array_equal(png(tmp_path / "gpu" / f"sample-{i:04d}.png"), png(tmp_path / "cpu" / f"sample-{i:04d}.png"))
