"""``python -m model`` on bad input: one ``error:`` line, exit code 2, nothing written.

Checkpoints that are missing, foreign, damaged or of another model; runs without a checkpoint;
files, keys and attribute names that do not exist; outputs that cannot be written; directions
files of other weights or damaged. Every command runs in-process on the session's fixture run
(tests/model_cli_fixtures.py).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from model_cli_fixtures import cli, model_main, ok, one_thread, run_dir  # noqa: F401 (fixtures)

from pipeline.shards import read_attributes, read_members, read_split


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


@pytest.fixture(scope="module")
def bad_checkpoints(run_dir, tmp_path_factory) -> dict[str, Path]:
    """Checkpoint files that are not of this trainer, damaged or of another model (made once; tests only read them)."""
    from model.training.checkpoint import FORMAT

    tmp = tmp_path_factory.mktemp("bad_checkpoints")
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
def test_bad_checkpoint(bad_checkpoints, tmp_path, capsys, case, expect):
    path = bad_checkpoints[case]
    rc, _, err = cli(capsys, "sample", "--checkpoint", path, "--out", tmp_path / "s.png")
    assert rc == 2 and err.startswith("error:") and expect.format(path=path) in err, err
    assert not (tmp_path / "s.png").exists()


def test_trusted_checkpoint_with_other_objects_loads(bad_checkpoints, tmp_path, capsys):
    path = bad_checkpoints["pickled_object"]
    ok(capsys, "sample", "--checkpoint", path, "--trust-checkpoint", "--n", 2, "--out", tmp_path / "s.png")
    assert (tmp_path / "s.png").is_file()


@pytest.mark.parametrize("case,expect", [
    ("state_dict", "is not a checkpoint of this trainer: it holds a bare state dict"),
    ("other_format", "has checkpoint format 'celeba-vae-ckpt/0'"),
    ("no_model", "is damaged: its 'model' entry is missing"),
    ("jpeg", "cannot read checkpoint"),
])
def test_trusted_checkpoint_is_checked_the_same(run_dir, bad_checkpoints, tmp_path, capsys, case, expect):
    """--trust-checkpoint unpickles everything, then checks format and entries as the default load does."""
    files = dict(bad_checkpoints)
    good = torch.load(run_dir / "checkpoints" / "best.pt", weights_only=False)
    files["no_model"] = tmp_path / "no_model.pt"
    torch.save({k: v for k, v in good.items() if k != "model"}, files["no_model"])
    rc, _, err = cli(capsys, "sample", "--checkpoint", files[case], "--trust-checkpoint", "--out", tmp_path / "s.png")
    assert rc == 2 and err.startswith("error:") and expect in err, err
    assert not (tmp_path / "s.png").exists()


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
    ("sample", ["--n", "0"], "--n must be in 1..1,024"),
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


def test_stale_directions_are_refused(run_dir, shards_dir, directions, tmp_path, capsys):
    ck = torch.load(run_dir / "checkpoints" / "best.pt", weights_only=False)
    ck["model"]["fc_mu.bias"] += 1
    changed = tmp_path / "changed" / "best.pt"
    changed.parent.mkdir()
    torch.save(ck, changed)
    key = read_attributes(shards_dir, "test").keys[0]
    rc, _, err = cli(capsys, "edit", "--checkpoint", changed, "--data", shards_dir, key, "--add", "Male",
                     "--directions", directions["good"], "--out", tmp_path / "e.png")
    assert rc == 2 and "holds directions of other weights" in err and not (tmp_path / "e.png").exists()


@pytest.fixture(scope="module")
def directions(run_dir, shards_dir, tmp_path_factory) -> dict[str, Path]:
    """The run's attribute directions ("good") and damaged copies of them (made once; tests only read them)."""
    tmp = tmp_path_factory.mktemp("directions")
    assert model_main([str(a) for a in ("attributes", "--run", run_dir, "--data", shards_dir, "--min-count", 10,
                                        "--out", tmp / "good.pt")]) == 0
    good = torch.load(tmp / "good.pt", weights_only=True)
    files = {"good": tmp / "good.pt", "garbage": tmp / "garbage.pt", "truncated": tmp / "truncated.pt"}
    files["garbage"].write_bytes(b"these are not directions")
    files["truncated"].write_bytes((tmp / "good.pt").read_bytes()[:3000])
    for name, doc in {"extra_field": {**good, "comment": "edited by hand"},
                      "missing_field": {k: v for k, v in good.items() if k != "vectors"},
                      "wrong_types": {**good, "vectors": [1, 2, 3]}}.items():
        files[name] = tmp / f"{name}.pt"
        torch.save(doc, files[name])
    return files


@pytest.mark.parametrize("case,expect", [
    ("garbage", "is not an attribute-directions file"), ("truncated", "is not an attribute-directions file"),
    ("extra_field", "is damaged"), ("missing_field", "is damaged"), ("wrong_types", "is damaged"),
])
def test_damaged_directions_are_refused(run_dir, shards_dir, directions, tmp_path, capsys, case, expect):
    path = directions[case]
    key = read_attributes(shards_dir, "test").keys[0]
    rc, _, err = cli(capsys, "edit", "--run", run_dir, "--data", shards_dir, key, "--add", "Male", "--directions", path,
                     "--out", tmp_path / "e.png")
    assert rc == 2 and err.startswith("error:") and expect in err and str(path) in err, err
    assert not (tmp_path / "e.png").exists()


@pytest.mark.parametrize("command", ["sample", "reconstruct", "edit"])
def test_each_under_a_file_is_refused_before_any_work(run_dir, shards_dir, tmp_path, capsys, command):
    a_file = tmp_path / "notes.txt"
    a_file.write_text("a file, not a folder")
    key = read_attributes(shards_dir, "test").keys[0]
    argv = {"sample": ["--n", 2], "reconstruct": ["--data", shards_dir, key],
            "edit": ["--data", shards_dir, key, "--add", "Male"]}[command]
    for each in (a_file, a_file / "faces", a_file / "faces" / "deeper"):
        rc, _, err = cli(capsys, command, "--run", run_dir, *argv, "--each", each, "--out", tmp_path / "grid.png")
        assert rc == 2 and err.startswith("error:") and f"--each {each}" in err and "is a file" in err, err
        assert not (tmp_path / "grid.png").exists()

