"""Hostile input at the command line (#27): one ``error:`` line and exit code 2, never lost work or a traceback.

One section per class of the issue: work lost or mixed (folders a command did not make, used run folders,
inputs as outputs), unbounded counts, OS errors on the paths given, files that are not what they claim,
two writers on one output, and messages that must point at a real option. Every CLI runs in-process on
small data: a few faces, a tiny checkpoint, the session's shards.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from model.use.cli import main as model_main
from pipeline.errors import os_error_message, writing_to
from pipeline.lock import lock_name, one_writer
from pipeline.preshard import main as preshard_main
from pipeline.synthetic import main as synthetic_main
from pipeline.synthetic import write_synthetic_celeba


def _train_main(argv):
    import train

    return train.main(argv)


def _bench_main(argv):
    from bench.__main__ import main

    return main(argv)


CLIS = {"synthetic": synthetic_main, "preshard": preshard_main, "model": model_main, "train": _train_main,
        "bench": _bench_main}


def run(capsys, cli: str, *argv) -> tuple[int, str, str]:
    """(exit code, the one ``error:`` line or "", stdout) of a CLI run in-process."""
    rc = CLIS[cli]([str(a) for a in argv])
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err, captured.err
    errors = [line for line in captured.err.splitlines() if line.startswith("error:")]
    assert len(errors) <= 1, captured.err
    return rc, (errors[0] if errors else ""), captured.out


def refused(capsys, cli: str, *argv) -> str:
    rc, err, out = run(capsys, cli, *argv)
    assert rc == 2 and err, f"{cli} {argv}: exit {rc}\n{out}"
    return err


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` by relative path → sha256: what "nothing changed" compares."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def photo(path: Path, size: tuple[int, int] = (178, 218), seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)
    return path


def real_celeba(folder: Path, n: int = 4) -> Path:
    """A CelebA-layout folder of somebody's own photos: the generator's very file names, no record."""
    for i in range(1, n + 1):
        photo(folder / "img_align_celeba" / f"{i:06d}.jpg", seed=i)
    (folder / "list_eval_partition.txt").write_text("".join(f"{i:06d}.jpg {min(i - 1, 2)}\n" for i in range(1, n + 1)))
    (folder / "list_attr_celeba.txt").write_text(f"{n}\nSmiling \n" + "".join(f"{i:06d}.jpg  1\n" for i in range(1, n + 1)))
    return folder


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A run folder holding a tiny model's best.pt and last.pt (16×16 faces, 4 latents): loads in milliseconds."""
    from model.training.checkpoint import make_checkpoint, save_atomic
    from model.training.config import read_config_file, validate
    from model.vae import ConvVAE, VAEConfig

    cfg = validate({**read_config_file(), "channels": [8, 16], "latent_dim": 4, "image_size": 16, "crop": None})
    torch.manual_seed(0)
    model = ConvVAE(VAEConfig.from_dict(cfg), loss_impl="torch")
    state = make_checkpoint(model=model, optimizer=torch.optim.AdamW(model.parameters()), scaler=None, step=3,
                            epoch=1, batch_in_epoch=0, best_val_elbo=-1.0, config=cfg)
    run = tmp_path_factory.mktemp("refusals") / "run"
    for name in ("best.pt", "last.pt"):
        save_atomic(state, run / "checkpoints" / name)
    (run / "config.json").write_text(json.dumps(cfg))
    return run


# --------------------------------------------------------------------------- 1. work lost or mixed


@pytest.mark.parametrize("case", ["celeba photos", "other files", "shards"])
def test_synthetic_refuses_a_folder_it_did_not_make(tmp_path, capsys, case, shards_dir):
    folder = tmp_path / "data"
    if case == "celeba photos":
        real_celeba(folder)
    elif case == "other files":
        photo(folder / "holiday" / "beach.png")
        (folder / "notes.txt").write_text("mine")
    else:
        import shutil

        shutil.copytree(shards_dir, folder)
    before = snapshot(folder)
    err = refused(capsys, "synthetic", "--out", folder, "--n", 10, "--workers", 1)
    assert f"{folder} holds files the synthetic generator did not write" in err and "pick another --out" in err, err
    assert snapshot(folder) == before


@pytest.mark.parametrize("case", ["photos", "a train folder of somebody's", "the source itself"])
def test_preshard_refuses_an_out_it_did_not_make(tmp_path, capsys, small_celeba, case):
    out = tmp_path / "out"
    if case == "photos":
        photo(out / "me.jpg")
    elif case == "a train folder of somebody's":
        photo(out / "train" / "cat.jpg")
    else:
        import shutil

        out = shutil.copytree(small_celeba, tmp_path / "celeba")
    before = snapshot(out)
    err = refused(capsys, "preshard", "--celeba", small_celeba if case != "the source itself" else out, "--out", out,
                  "--workers", 1)
    assert f"{out} already holds files preshard did not write" in err and "pick another --out" in err, err
    assert snapshot(out) == before


def test_a_tree_redrawn_in_the_other_layout_keeps_nothing_of_the_first(tmp_path, capsys):
    out = tmp_path / "tree"
    for argv in (["--n", 8], ["--n", 5, "--zip"], ["--n", 4]):
        rc, err, _ = run(capsys, "synthetic", "--out", out, *argv, "--workers", 1)
        assert rc == 0, err
        if "--zip" in argv:
            assert not (out / "img_align_celeba").exists()
    assert not (out / "img_align_celeba.zip").exists()
    assert sorted(p.name for p in (out / "img_align_celeba").iterdir()) == [f"{i:06d}.jpg" for i in range(1, 5)]


def test_synthetic_writes_new_empty_and_its_own_folders(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    for folder in (tmp_path / "new", tmp_path / "empty", tmp_path / "new"):  # the last: its own, rerun
        rc, err, _ = run(capsys, "synthetic", "--out", folder, "--n", 3, "--workers", 1)
        assert rc == 0, err
    assert sorted(p.name for p in (tmp_path / "new" / "img_align_celeba").iterdir()) == [
        "000001.jpg", "000002.jpg", "000003.jpg"]
    assert not (tmp_path / "new" / lock_name("synthetic")).exists()  # the lock goes with the run


def _used_run(tmp_path: Path, run_dir: Path, case: str) -> Path:
    run = tmp_path / "used"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.json").write_text("{}")
    if case in ("last.pt only", "finished run"):
        (run / "checkpoints" / "last.pt").write_bytes((run_dir / "checkpoints" / "last.pt").read_bytes())
    if case == "finished run":
        (run / "checkpoints" / "best.pt").write_bytes(b"old weights")
        (run / "samples.png").write_bytes(b"old picture")
    if case == "evaluation only":
        (run / "evaluation").mkdir()
        (run / "evaluation" / "evaluation.json").write_text("{}")
    if case == "somebody's folder":
        (run / "thesis.tex").write_text("years of work")
    return run


@pytest.mark.parametrize("case,names", [("last.pt only", "continue it with --resume"),
                                        ("finished run", "continue it with --resume"),
                                        ("evaluation only", "evaluation of an earlier run"),
                                        ("somebody's folder", "files train.py does not write (thesis.tex)")])
def test_train_refuses_a_fresh_run_into_a_used_run_folder(tmp_path, capsys, run_dir, case, names):
    run = _used_run(tmp_path, run_dir, case)
    before = snapshot(run)
    err = refused(capsys, "train", "--out", run)
    assert names in err and "pick another --out" in err and "--overwrite" in err, err
    assert snapshot(run) == before


def test_overwrite_removes_the_earlier_run_and_nothing_else(tmp_path, capsys, run_dir):
    run = _used_run(tmp_path, run_dir, "finished run")
    (run / "thesis.tex").write_text("years of work")
    (run / "inference").mkdir()
    (run / "inference" / "samples.png").write_bytes(b"served by the old weights")
    rc = _train_main(["--out", str(run), "--overwrite", "--data", str(tmp_path / "no-shards")])
    err = capsys.readouterr().err
    assert rc == 2 and "shards folder" in err and "does not exist" in err, err  # the new run's own failure
    assert "removed the earlier run's checkpoints, config.json, inference, samples.png" in err, err
    assert sorted(p.name for p in run.iterdir()) == ["thesis.tex"]


def test_resume_and_overwrite_contradict(tmp_path):
    from model.training.checkpoint import check_fresh_run
    from pipeline.errors import ConfigError

    with pytest.raises(ConfigError, match="--resume continues the run in .* and --overwrite replaces it: pick one"):
        check_fresh_run(tmp_path, resume=True, overwrite=True)
    assert check_fresh_run(tmp_path / "new", resume=False, overwrite=False) == []


def test_model_outputs_never_replace_an_input_or_a_foreign_file(tmp_path, capsys, run_dir):
    face = photo(tmp_path / "face.png", (64, 64))
    ckpt = run_dir / "checkpoints" / "last.pt"
    foreign = tmp_path / "mine.npz"
    np.savez(foreign, weights=np.ones(3))
    beside = tmp_path / "theirs"  # somebody's own attributes.pt where the directions would go by default
    beside.mkdir()
    (beside / "best.pt").write_bytes(ckpt.read_bytes())
    (beside / "attributes.pt").write_bytes(b"their own file")
    before = snapshot(run_dir) | snapshot(tmp_path)
    cases = [("attributes", "--checkpoint", ckpt, "--out", ckpt),
             ("attributes", "--checkpoint", beside / "best.pt"),
             ("reconstruct", face, "--run", run_dir, "--out", face),
             ("encode", "--run", run_dir, "--out", foreign)]
    for argv in cases:
        err = refused(capsys, "model", *argv)
        assert "is one of this command's inputs" in err or "does not hold" in err, err
    assert snapshot(run_dir) | snapshot(tmp_path) == before


# --------------------------------------------------------------------------- 2. unbounded work

BOUNDED = [
    ("model", ["sample", "--checkpoint", "x.pt", "--n", "100000"], "--n must be in 1..1,024"),
    ("model", ["sample", "--checkpoint", "x.pt", "--temperature", "inf"], "--temperature must be a number in 0..100"),
    ("model", ["interpolate", "a", "b", "--checkpoint", "x.pt", "--steps", "100000"], "--steps must be at most 256"),
    ("model", ["reconstruct", *[f"f{i}.png" for i in range(300)], "--checkpoint", "x.pt"], "300 FACE given"),
    ("model", ["edit", "a", "--sweep", "Smiling", "--steps", "1000", "--checkpoint", "x.pt"],
     "--steps must be at most 64"),
    ("model", ["encode", "--checkpoint", "x.pt", "--batch-size", "0"], "--batch-size must be in 1..4,096"),
    ("model", ["evaluate", "--checkpoint", "x.pt", "--k", "1000000"], "--k must be at most 10,000"),
    ("model", ["evaluate", "--checkpoint", "x.pt", "--worst", "100000"], "--worst must be at most 64"),
    ("preshard", ["--celeba", "c", "--out", "o", "--workers", "100000"], "--workers must be in 1.."),
    ("preshard", ["--celeba", "c", "--out", "o", "--max-samples", "1000000000"], "--max-samples must be in 1..1,000,000"),
    ("preshard", ["--celeba", "c", "--out", "o", "--shard-mb", "inf"], "--shard-mb must be a number in"),
    ("synthetic", ["--out", "o", "--n", "10000000"], "--n must be in 3..999,999"),
    ("synthetic", ["--out", "o", "--n", "10", "--workers", "1000000"], "--workers must be in 1.."),
    ("bench", ["--synthetic-images", "10000000"], "--synthetic-images must be in 3..999,999"),
    ("bench", ["--train-step-budget", "inf"], "--train-step-budget must be a number in 0..86,400"),
    ("train", ["--out", "run", "--n_samples", "100000"], "'n_samples' must be at most 1,024"),
    ("train", ["--out", "run", "--eval_iwae_k", "10000000"], "'eval_iwae_k' must be at most 10,000"),
    ("train", ["--out", "run", "--synthetic_images", "2"], "'synthetic_images' must be at least 3"),
]


@pytest.mark.parametrize("cli,argv,expect", BOUNDED, ids=[f"{c}:{' '.join(a)[-40:]}" for c, a, _ in BOUNDED])
def test_every_count_is_bounded_and_the_bound_said(tmp_path, capsys, monkeypatch, cli, argv, expect):
    monkeypatch.chdir(tmp_path)  # relative outputs (o, runs/) land here, if anything were written
    err = refused(capsys, cli, *argv)
    assert expect in err, err
    assert list(tmp_path.iterdir()) == []  # refused before anything was made


# --------------------------------------------------------------------------- 3. OS errors on the paths given


def _out_argv(cli: str, out: Path, celeba: Path, run_dir: Path) -> list:
    return {"synthetic": ["--out", out, "--n", 3, "--workers", 1],
            "preshard": ["--celeba", celeba, "--out", out, "--workers", 1],
            "model": ["sample", "--checkpoint", run_dir / "checkpoints" / "best.pt", "--n", 2, "--out", out / "s.png"],
            "train": ["--out", out, "--data", celeba]}[cli]


@pytest.fixture(scope="module")
def small_celeba(tmp_path_factory) -> Path:
    return write_synthetic_celeba(tmp_path_factory.mktemp("celeba") / "tree", n=6, seed=3, workers=1)


@pytest.mark.parametrize("cli", ["synthetic", "preshard", "model", "train"])
@pytest.mark.parametrize("case", ["a file", "under a file", "name too long", "read-only", "no permission"])
def test_an_unusable_out_is_one_line_naming_it(tmp_path, capsys, monkeypatch, small_celeba, run_dir, cli, case):
    blocker = tmp_path / "blocker"
    blocker.write_text("a file of somebody's")
    out = {"a file": blocker, "under a file": blocker / "out", "name too long": tmp_path / ("x" * 300),
           "read-only": tmp_path / "ro" / "out", "no permission": tmp_path / "locked" / "out"}[case]
    if case in ("read-only", "no permission"):  # as the kernel answers on such a mount or folder (root passes chmod)
        code = errno.EROFS if case == "read-only" else errno.EACCES
        real_mkdir, real_access = os.mkdir, os.access

        def mkdir(path, *a, **k):
            if str(out.parent) in os.fsdecode(path):
                raise OSError(code, os.strerror(code), os.fsdecode(path))
            return real_mkdir(path, *a, **k)

        monkeypatch.setattr(os, "mkdir", mkdir)
        monkeypatch.setattr(os, "access", lambda p, m, *a, **k: False if str(out.parent) in os.fsdecode(p)
                            or os.fsdecode(p) == str(tmp_path) else real_access(p, m, *a, **k))
    err = refused(capsys, cli, *_out_argv(cli, out, small_celeba, run_dir))
    named = {"a file": str(blocker), "under a file": str(blocker), "name too long": "x" * 300,
             "read-only": str(tmp_path), "no permission": str(tmp_path)}[case]
    assert named in err, err
    hint = {"a file": "is a file", "under a file": "is a file", "name too long": "shorter name",
            "read-only": "read-only", "no permission": "permission"}[case]
    assert hint in err, err
    assert blocker.read_text() == "a file of somebody's"


def test_a_full_disk_names_the_output_and_how_to_go_on(tmp_path, capsys, monkeypatch):
    import pipeline.synthetic.tree as tree

    def no_space(rows):  # a write on an open file: the error carries no file name
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(tree, "_attribute_list", no_space)
    out = tmp_path / "faces"
    err = refused(capsys, "synthetic", "--out", out, "--n", 3, "--workers", 1)
    assert f"disk full while writing {out}:" in err and "MB free on" in err, err
    assert "free some space, then run the same command to continue:" in err, err
    line = os_error_message(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)))
    assert "the error does not name" in line and f"working directory {os.getcwd()}" in line, line
    with pytest.raises(OSError) as caught, writing_to(out):
        raise OSError(errno.EIO, os.strerror(errno.EIO))
    assert os_error_message(caught.value).startswith(f"{out}: Input/output error (EIO); ")


# --------------------------------------------------------------------------- 4. files that are not what they claim


@pytest.mark.parametrize("case,expect", [
    ("utf-16", "is UTF-16 text; save it as UTF-8"),
    ("utf-16 without its mark", "holds NUL bytes"),
    ("latin-1", "is not UTF-8 text (byte 13 is 0xe9)"),
    ("binary", "is not UTF-8 text"),
    ("checkpoint", "is a zip archive (a checkpoint?), not JSON"),
    ("utf-8 with a BOM", "config key 'beta' must be >= 0"),  # read as any UTF-8 file: its own value is what fails
    ("device", "is not a regular file"),
    ("nested", "nested too deeply"),
])
def test_a_config_file_that_is_not_utf8_json_is_one_line(tmp_path, capsys, run_dir, case, expect):
    doc = json.dumps({"beta": -1})
    path = tmp_path / "config.json"
    content = {"utf-16": doc.encode("utf-16"), "utf-16 without its mark": doc.encode("utf-16-le"),
               "latin-1": '{"name": "caf\xe9"}'.encode("latin-1"), "binary": bytes(range(128, 256)) + bytes(range(1, 128)),
               "checkpoint": (run_dir / "checkpoints" / "last.pt").read_bytes(),
               "utf-8 with a BOM": b"\xef\xbb\xbf" + doc.encode(), "nested": b"[" * 100_000}.get(case)
    if content is None:
        path = Path("/dev/zero")
    else:
        path.write_bytes(content)
    err = refused(capsys, "train", "--config", path, "--out", tmp_path / "run")
    assert expect in err, err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("case,expect", [("truncated", "it is truncated or damaged"), ("empty", "it is truncated or damaged"),
                                         ("corrupted inside", "it is truncated or damaged"),
                                         ("a photo", "it is not a PyTorch checkpoint")])
def test_a_damaged_checkpoint_reads_the_same_everywhere(tmp_path, capsys, run_dir, case, expect):
    good = (run_dir / "checkpoints" / "last.pt").read_bytes()
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    last = run / "checkpoints" / "last.pt"
    if case == "corrupted inside":  # the zip's directory intact, a stored record's bytes not
        at = good.find(b"data/0") + 200
        damaged = good[:at] + bytes(b ^ 0xFF for b in good[at:at + 64]) + good[at + 64:]
    else:
        damaged = {"truncated": good[: len(good) // 2], "empty": b"",
                   "a photo": (photo(tmp_path / "p.jpg")).read_bytes()}[case]
    last.write_bytes(damaged)
    lines = {refused(capsys, "train", "--out", run, "--resume"),
             refused(capsys, "model", "summary", "--run", run, "--last"),
             refused(capsys, "model", "summary", "--checkpoint", last, "--trust-checkpoint")}
    assert lines == {f"error: cannot read checkpoint {last}: {expect}" + (
        " (an incomplete copy?)" if "damaged" in expect else " (not a torch.save archive)")}, lines


# --------------------------------------------------------------------------- 5. one writer per output


@pytest.mark.parametrize("cli", ["preshard", "synthetic"])
def test_a_second_writer_on_one_out_is_refused(tmp_path, capsys, small_celeba, cli):
    out = tmp_path / "out"
    out.mkdir()
    argv = (["--celeba", small_celeba, "--out", out, "--workers", 1] if cli == "preshard"
            else ["--out", out, "--n", 3, "--workers", 1])
    with one_writer(out, cli):  # another process's run, as the kernel sees it: a separate open file holds the flock
        err = refused(capsys, cli, *argv)
        assert f"{out} is being written by another {cli} run (pid {os.getpid()}" in err, err
        assert "wait for it to end, stop it, or pick another --out" in err
        assert sorted(p.name for p in out.iterdir()) == [lock_name(cli)]
    (out / lock_name(cli)).write_text("{half a lock of a run killed with -9")  # no flock on it: taken over
    rc, err, _ = run(capsys, cli, *argv)
    assert rc == 0, err
    assert not (out / lock_name(cli)).exists()


def test_a_filesystem_without_file_locks_leaves_one_writer_unguarded(tmp_path, monkeypatch):
    """flock failing with ENOLCK (some network and FUSE mounts): the run goes on, its record in the lock file."""
    import fcntl

    def no_locks(fd, op):
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(fcntl, "flock", no_locks)
    with one_writer(tmp_path, "preshard"):
        assert json.loads((tmp_path / lock_name("preshard")).read_text())["pid"] == os.getpid()
    assert not (tmp_path / lock_name("preshard")).exists()


# --------------------------------------------------------------------------- 6. messages that point somewhere


def test_a_batch_larger_than_the_split_names_the_option_to_change(tmp_path, capsys, shards_dir):
    err = refused(capsys, "train", "--data", shards_dir, "--out", tmp_path / "run", "--batch_size", 1000,
                  "--compile", "false", "--loss_impl", "torch", "--amp", "off")
    assert "--batch_size" in err and "drop_last" not in err, err


def test_a_run_with_only_last_pt_names_last(tmp_path, capsys, run_dir):
    run = tmp_path / "unfinished"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.pt").write_bytes((run_dir / "checkpoints" / "last.pt").read_bytes())
    err = refused(capsys, "model", "sample", "--run", run)
    assert "has no checkpoints/best.pt" in err and "pass --last" in err, err


def test_a_photo_smaller_than_the_model_input_gets_a_note(tmp_path, capsys, run_dir):
    tiny = photo(tmp_path / "tiny.png", (1, 1))
    rc, err, out = run(capsys, "model", "reconstruct", tiny, "--run", run_dir, "--out", tmp_path / "r.png")
    assert rc == 0, err
    assert "note:" in out and "tiny.png is 1×1, smaller than the 16×16 the model sees" in " ".join(out.split()), out


def test_preshard_images_refuses_an_empty_train_split_and_notes_an_empty_val(tmp_path, capsys):
    folder = tmp_path / "photos"
    for i in range(3):
        photo(folder / f"p{i}.jpg", (40, 40), seed=i)
    err = refused(capsys, "preshard", "--images", folder, "--out", tmp_path / "o1", "--val", 0.5, "--test", 0.49,
                  "--workers", 1)
    assert "no image of" in err and "falls in the train split (train 0" in err and "lower --val/--test" in err, err
    assert not (tmp_path / "o1").exists()
    rc, err, out = run(capsys, "preshard", "--images", folder, "--out", tmp_path / "o2", "--workers", 1)
    assert rc == 0, err
    assert "note: the val split is empty" in " ".join(out.split()) and "raise --val/--test" in " ".join(out.split())


def test_a_full_disk_under_python_m_model_names_its_output(tmp_path, capsys, monkeypatch, run_dir):
    import model.training.observe as artifacts

    def no_space(*args, **kwargs):  # PIL's write on an open file: no file name in the error
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(artifacts, "plot_samples", no_space)
    out = tmp_path / "s.png"
    err = refused(capsys, "model", "sample", "--run", run_dir, "--n", 2, "--out", out)
    assert f"disk full while writing {out}:" in err and "free some space, then run it again:" in err, err
    assert list(tmp_path.iterdir()) == []
