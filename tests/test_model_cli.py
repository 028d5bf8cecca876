"""``python -m model``: every command on a checkpoint trained by the module's fixture, and every bad input.

One short training run (the narrow network of tests/test_train.py, on the shared 240 synthetic
faces) feeds all the commands; they run in-process through ``model.use.cli.main`` (the same code
as ``python -m model``, which one subprocess test checks) so the file stays fast.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from model.use.cli import main as model_main
from model.use.loading import load_trained
from pipeline.images import read_image_file
from pipeline.shards import read_attributes, read_members, read_split

ROOT = Path(__file__).resolve().parent.parent
#: The narrow network of test_train.py, trained longer (a minute on two cores) so that its codes
#: carry the attributes the synthetic faces show; one thread, so a busy machine does not thrash.
TRAIN_ARGS = ["--channels", "16,32,64,128", "--latent_dim", "32", "--loss_impl", "torch", "--compile", "false",
              "--batch_size", "16", "--eval_batch_size", "64", "--log_interval", "12", "--kl_warmup_steps", "50",
              "--warmup_steps", "10", "--lr", "0.002", "--n_samples", "16", "--num_threads", "1", "--epochs", "30"]
ENV = {**os.environ, "COLUMNS": "200", "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny tensors (probes, single faces) gain nothing from threads, and on a busy machine the
    spinning of a second thread makes them 40× slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def run_dir(shards_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("model_cli") / "run"
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), "--data", str(shards_dir), "--out", str(out),
                           *TRAIN_ARGS], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return out


def cli(capsys, *argv) -> tuple[int, str, str]:
    """``python -m model ARGV`` in-process: (exit code, stdout, stderr as one line)."""
    rc = model_main([str(a) for a in argv])
    captured = capsys.readouterr()
    return rc, captured.out, " ".join(captured.err.split())


def ok(capsys, *argv) -> str:
    rc, out, err = cli(capsys, *argv)
    assert rc == 0, f"{argv}: {err}\n{out}"
    return out


def png(path: Path) -> np.ndarray:
    """A PNG written by a command, as the uint8 H×W×3 array it holds."""
    from PIL import Image

    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"))


def probe(x: torch.Tensor, y: torch.Tensor, l2: float = 1e-2):
    """A class-balanced logistic regression on standardised features; returns the logit function."""
    mean, std = x.mean(0), x.std(0) + 1e-6
    w = torch.zeros(x.shape[1], requires_grad=True)
    b = torch.zeros((), requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=100, line_search_fn="strong_wolfe")
    pos_weight = (1 - y).sum() / y.sum()

    def closure():
        opt.zero_grad()
        logits = (x - mean) / std @ w + b
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, y, pos_weight=pos_weight)
        (loss + l2 * w.pow(2).sum()).backward()
        return loss

    opt.step(closure)
    return lambda q: ((q - mean) / std @ w + b).detach()


def balanced_accuracy(logits: torch.Tensor, y: torch.Tensor) -> float:
    pos = y.bool()
    return 0.5 * (float((logits[pos] > 0).float().mean()) + float((logits[~pos] <= 0).float().mean()))


def test_summary_describes_the_checkpoint(run_dir, capsys):
    from model.vae import ConvVAE, VAEConfig, count_parameters

    n = count_parameters(ConvVAE(VAEConfig(channels=(16, 32, 64, 128), latent_dim=32)))
    out = ok(capsys, "summary", "--run", run_dir)
    assert "best.pt" in out and f"total trainable" in out and f"{n:,}" in out
    assert "last.pt" in ok(capsys, "summary", "--run", run_dir, "--last", "--device", "cpu")


def test_sample_is_deterministic_for_a_seed(run_dir, tmp_path, capsys):
    def sample(name: str, *extra: str) -> list[np.ndarray]:
        ok(capsys, "sample", "--run", run_dir, "--n", 6, "--out", tmp_path / f"{name}.png", "--each", tmp_path / name,
           *extra)
        files = sorted((tmp_path / name).glob("*.png"))
        assert [f.name for f in files] == [f"sample-{i:04d}.png" for i in range(6)]
        return [png(f) for f in files]

    a, b, c = sample("a", "--seed", "3"), sample("b", "--seed", "3"), sample("c", "--seed", "4")
    assert all(x.shape == (64, 64, 3) for x in a)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert np.array_equal(png(tmp_path / "a.png"), png(tmp_path / "b.png"))
    assert not any(np.array_equal(x, y) for x, y in zip(a, c))
    # The temperature scales the prior's spread: near 0 every sample is decode(0).
    cold = sample("cold", "--temperature", "0.01")
    spread = lambda imgs: np.stack(imgs).astype(float).std(axis=0).mean()
    assert spread(cold) < 0.5 < spread(a)


def _test_faces(shards_dir: Path, n: int) -> dict[str, bytes]:
    """The first ``n`` test samples' JPEG bytes, by key."""
    members = read_members(read_split(shards_dir, "test"), "jpg")
    return dict(list(members.items())[:n])


def _mse_column(out: str) -> dict[str, float]:
    """face → MSE from reconstruct's printed table."""
    rows = [line.split("│") for line in out.splitlines() if line.count("│") == 4]
    return {r[1].strip(): float(r[2]) for r in rows if r[2].strip().replace(".", "").isdigit()}


def test_reconstruct_files_matches_the_same_faces_from_the_shards(run_dir, shards_dir, tmp_path, capsys):
    from PIL import Image

    faces = _test_faces(shards_dir, 4)
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

    a, b = list(_test_faces(shards_dir, 2))
    file_b = tmp_path / f"{b}.jpg"
    file_b.write_bytes(_test_faces(shards_dir, 2)[b])
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
    key = next(iter(_test_faces(shards_dir, 1)))
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


def test_edit_computes_missing_directions_first(run_dir, shards_dir, tmp_path, capsys):
    ckpt = tmp_path / "copy" / "best.pt"
    ckpt.parent.mkdir()
    ckpt.write_bytes((run_dir / "checkpoints" / "best.pt").read_bytes())
    key = next(iter(_test_faces(shards_dir, 1)))
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


# ---------------------------------------------------------------- bad input: one line, exit 2, nothing written
@pytest.fixture(scope="module")
def bare_shards(tmp_path_factory) -> Path:
    """Shards of a CelebA folder without list_attr_celeba.txt: no attributes."""
    from pipeline.preshard import preshard
    from pipeline.synthetic import write_synthetic_celeba

    tree = write_synthetic_celeba(tmp_path_factory.mktemp("bare_celeba"), n=30, seed=5, workers=1)
    (tree / "list_attr_celeba.txt").unlink()
    out = tmp_path_factory.mktemp("bare_shards")
    preshard(tree, out, progress=False, workers=1)
    return out


def _bad_checkpoints(run_dir: Path, tmp: Path) -> dict[str, Path]:
    from model.training.checkpoint import FORMAT

    good = torch.load(run_dir / "checkpoints" / "best.pt", weights_only=False)
    files = {"missing": tmp / "nope.pt", "folder": run_dir}
    files["jpeg"] = tmp / "photo.pt"
    files["jpeg"].write_bytes(b"\xff\xd8\xff\xe0 not a checkpoint")
    files["truncated"] = tmp / "truncated.pt"
    files["truncated"].write_bytes((run_dir / "checkpoints" / "best.pt").read_bytes()[:5000])
    for name, obj in {"state_dict": good["model"], "other_format": {**good, "format": "celeba-vae-ckpt/0"},
                      "pickled_object": {**good, "origin": Path("/somewhere")},
                      "other_model": {**good, "config": {**good["config"], "latent_dim": 16}}}.items():
        files[name] = tmp / f"{name}.pt"
        torch.save(obj, files[name])
    assert good["format"] == FORMAT
    return files


@pytest.mark.parametrize("case,expect", [
    ("missing", "checkpoint {path} does not exist"),
    ("folder", "is a folder; for a run directory use --run"),
    ("jpeg", "is not a PyTorch checkpoint"),
    ("truncated", "cannot read checkpoint"),
    ("state_dict", "is not a checkpoint of this trainer: it holds a bare state dict"),
    ("other_format", "has checkpoint format 'celeba-vae-ckpt/0'"),
    ("pickled_object", "pass --trust-checkpoint"),
    ("other_model", "was made for a different model"),
])
def test_bad_checkpoint(run_dir, tmp_path, capsys, case, expect):
    path = _bad_checkpoints(run_dir, tmp_path)[case]
    rc, _, err = cli(capsys, "sample", "--checkpoint", path, "--out", tmp_path / "s.png")
    assert rc == 2 and err.startswith("error:") and expect.format(path=path) in err, err
    assert not (tmp_path / "s.png").exists()


def test_trusted_checkpoint_with_other_objects_loads(run_dir, tmp_path, capsys):
    path = _bad_checkpoints(run_dir, tmp_path)["pickled_object"]
    ok(capsys, "sample", "--checkpoint", path, "--trust-checkpoint", "--n", 2, "--out", tmp_path / "s.png")
    assert (tmp_path / "s.png").is_file()


def _bad_runs(run_dir: Path, tmp: Path) -> dict[str, list]:
    empty_run = tmp / "unfinished"
    (empty_run / "checkpoints").mkdir(parents=True)
    return {"no run": ["--run", tmp / "nothing"], "no best.pt": ["--run", empty_run],
            "last with a file": ["--checkpoint", run_dir / "checkpoints" / "best.pt", "--last"]}


@pytest.mark.parametrize("case,expect", [("no run", "does not exist"), ("no best.pt", "has no checkpoints/best.pt"),
                                         ("last with a file", "--last picks a checkpoint of a run directory")])
def test_bad_run(run_dir, tmp_path, capsys, case, expect):
    rc, _, err = cli(capsys, "summary", *_bad_runs(run_dir, tmp_path)[case])
    assert rc == 2 and err.startswith("error:") and expect in err, err


@pytest.mark.parametrize("command,args,expect", [
    ("reconstruct", ["{text}"], "cannot decode image file"),
    ("reconstruct", ["{tmp}/nope.png"], "image file {tmp}/nope.png does not exist"),
    ("reconstruct", ["999999"], "sample key '999999' is not in split 'test'"),
    ("interpolate", ["{test_key}", "{train_key}"], "is not in split 'test' of {shards} (24 samples"),
    ("reconstruct", ["{test_key}", "--n", "3"], "either faces (files or keys) or --n"),
    ("edit", ["{test_key}", "--add", "Smilng=1"], "unknown attribute 'Smilng' (did you mean 'Smiling'?)"),
    ("edit", ["{test_key}", "--sweep", "Glasses"], "(did you mean 'Eyeglasses'?)"),
    ("edit", ["{test_key}", "--add", "Smiling=lots"], "'lots' is not a number"),
    ("edit", ["{test_key}", "--add", "Bald=1", "--min-count", "10"], "attribute 'Bald' has no direction"),
    ("edit", ["{test_key}"], "give --add NAME=AMOUNT (one or more) or --sweep NAME"),
    ("attributes", ["--min-count", "1000"], "no attribute has 1000 faces with and without it"),
    ("sample", ["--n", "0"], "--n must be >= 1"),
    ("encode", [], "this command writes a .npz file; name one ending in .npz"),
    ("sample", ["--bogus"], "unrecognized arguments: --bogus"),
    ("interpolate", ["{test_key}"], "the following arguments are required"),
])
def test_bad_input(run_dir, shards_dir, tmp_path, capsys, command, args, expect):
    text = tmp_path / "notes.jpg"
    text.write_text("this is not a picture")
    keys = read_attributes(shards_dir, "test").keys
    fill = dict(text=text, tmp=tmp_path, test_key=keys[0], train_key=read_attributes(shards_dir, "train").keys[0],
                shards=shards_dir)
    argv = [a.format(**fill) for a in args]
    out = tmp_path / "out" / ("result.pt" if command == "attributes" else "result.png")
    data = [] if command == "sample" else ["--data", shards_dir]
    if command in ("edit", "attributes"):  # directions of their own, never the shared run's
        ckpt = tmp_path / "ckpt" / "best.pt"
        ckpt.parent.mkdir()
        ckpt.write_bytes((run_dir / "checkpoints" / "best.pt").read_bytes())
        which = ["--checkpoint", ckpt]
    else:
        which = ["--run", run_dir]
    rc, _, err = cli(capsys, command, *which, *data, *argv, "--out", out)
    assert rc == 2 and err.startswith("error:") and expect.format(**fill) in err, err
    assert not out.parent.exists()


@pytest.mark.parametrize("command", ["attributes", "edit"])
def test_shards_without_attributes(run_dir, bare_shards, tmp_path, capsys, command):
    ckpt = tmp_path / "best.pt"
    ckpt.write_bytes((run_dir / "checkpoints" / "best.pt").read_bytes())
    key = list(read_members(read_split(bare_shards, "test"), "jpg"))[0]
    argv = [key, "--add", "Smiling=1"] if command == "edit" else []
    out = tmp_path / ("o.pt" if command == "attributes" else "o.png")
    rc, _, err = cli(capsys, command, "--checkpoint", ckpt, "--data", bare_shards, *argv, "--out", out)
    assert rc == 2 and "carry no attributes" in err and "list_attr_celeba.txt" in err, err
    assert not out.exists() and not (tmp_path / "attributes.pt").exists()
    # encode still works there, without attributes
    ok(capsys, "encode", "--checkpoint", ckpt, "--data", bare_shards, "--out", tmp_path / "z.npz")
    assert "attributes" not in np.load(tmp_path / "z.npz").files


def test_stale_directions_are_refused(run_dir, shards_dir, tmp_path, capsys):
    ck = torch.load(run_dir / "checkpoints" / "best.pt", weights_only=False)
    ck["model"]["fc_mu.bias"] += 1
    changed = tmp_path / "changed" / "best.pt"
    changed.parent.mkdir()
    torch.save(ck, changed)
    ok(capsys, "attributes", "--run", run_dir, "--data", shards_dir, "--min-count", 10)
    key = read_attributes(shards_dir, "test").keys[0]
    rc, _, err = cli(capsys, "edit", "--checkpoint", changed, "--data", shards_dir, key, "--add", "Male",
                     "--directions", run_dir / "checkpoints" / "attributes.pt", "--out", tmp_path / "e.png")
    assert rc == 2 and "holds directions of other weights" in err and not (tmp_path / "e.png").exists()


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


# ---------------------------------------------------------------- attribute directions mean something
#: Attributes the synthetic faces draw boldly enough for the fixture's one-minute run to encode them.
#: Smiling is not among them: the smile is one or two pixels at 64×64, and a run this short does not
#: encode it linearly (held-out probe accuracy 0.50–0.55 in every short run we tried; the README has
#: the default run's numbers).
LEARNED = ("Male", "Black_Hair", "Brown_Hair", "Wearing_Lipstick")
#: Edited along their directions, these faces must move the probe's score.
EDITED = ("Male", "Eyeglasses", "Blond_Hair")


@pytest.fixture(scope="module")
def probe_shards(tmp_path_factory) -> Path:
    """1,200 synthetic faces the fixture's model never saw (another seed): the probe's data."""
    from pipeline.preshard import preshard
    from pipeline.synthetic import write_synthetic_celeba

    tree = write_synthetic_celeba(tmp_path_factory.mktemp("probe_celeba"), n=1200, seed=1)
    out = tmp_path_factory.mktemp("probe_shards")
    preshard(tree, out, progress=False)
    return out


def cross_validated_accuracy(mu: torch.Tensor, y: torch.Tensor, folds: int = 5) -> tuple[float, float]:
    """(balanced accuracy of the probe on held-out folds, its standard error under chance)."""
    fold = torch.arange(len(mu)) % folds
    logits = torch.empty(len(mu))
    for f in range(folds):
        train = fold != f
        logits[~train] = probe(mu[train], y[train])(mu[~train])
    n_pos = float(y.sum())
    chance_se = 0.5 * (0.25 / n_pos + 0.25 / (len(y) - n_pos)) ** 0.5
    return balanced_accuracy(logits, y), chance_se


def test_attribute_directions_mean_something(run_dir, shards_dir, probe_shards, tmp_path, capsys):
    ok(capsys, "encode", "--run", run_dir, "--data", probe_shards, "--split", "train", "--out", tmp_path / "z.npz")
    z = np.load(tmp_path / "z.npz")
    mu, table, names = torch.from_numpy(z["mu"]), torch.from_numpy(z["attributes"]).float(), list(z["attribute_names"])
    # "Well represented": at least 15 % of the faces on each side of the attribute.
    well = [n for j, n in enumerate(names) if min(table[:, j].mean(), 1 - table[:, j].mean()) >= 0.15]
    scores = {n: cross_validated_accuracy(mu, table[:, names.index(n)]) for n in well}
    above = {n for n, (acc, se) in scores.items() if acc > 0.5 + 3 * se}
    assert set(LEARNED) <= above and len(above) >= len(well) / 2, scores

    # Edit unseen faces along directions learnt from the training faces: the command's own PNGs,
    # re-encoded, score higher for the attribute (and lower when moved the other way).
    ok(capsys, "attributes", "--run", run_dir, "--data", shards_dir, "--min-count", 10)
    model = load_trained(run_dir / "checkpoints" / "best.pt", "cpu").model
    for name in EDITED:
        y = table[:, names.index(name)].bool()
        without, with_ = list(z["keys"][~y][:30]), list(z["keys"][y][:15])
        ok(capsys, "edit", "--run", run_dir, "--data", probe_shards, "--split", "train", *without, *with_,
           "--add", f"{name}=2", "--add", f"{name}=-2", "--each", tmp_path / name, "--out", tmp_path / f"{name}.png")
        score = probe(mu, y.float())
        before, after = (_probe_score(model, score, tmp_path / name, without, e) for e in ("reconstruction", f"{name}+2"))
        assert after > before + 0.08, (name, before, after)
        before, after = (_probe_score(model, score, tmp_path / name, with_, e) for e in ("reconstruction", f"{name}-2"))
        assert after < before - 0.08, (name, before, after)


def _probe_score(model, score, folder: Path, keys: list[str], edit: str) -> float:
    """Mean probe probability of the edited faces ``folder/KEY_EDIT.png``, re-encoded."""
    images = np.stack([read_image_file(folder / f"{key}_{edit}.png", crop=None) for key in keys])
    with torch.no_grad():
        codes = model.encode(torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255)[0]
    return torch.sigmoid(score(codes)).mean().item()
