"""preshard's runs: folder and zip give the same shards, runs are deterministic, shards keep to their
byte budget; a rerun is a no-op or refused, a killed run resumes; the CLI and ``python -m``."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

import pipeline.preshard.validate as validate
from pipeline.errors import DataError
from pipeline.preshard import STATE, TAR_BLOCK, ShardWriter, main, preshard
from pipeline.synthetic import write_synthetic_celeba
from tests.preshard_utils import REPO, all_files, exactly, listed, small_trees  # noqa: F401


def test_zip_and_folder_give_identical_shards_and_runs_are_deterministic(small_trees, tmp_path, monkeypatch):
    monkeypatch.setattr(validate, "_CHUNK", 8)  # several chunks, so workers=2 really uses the pool
    calls = []
    real_map = validate.ordered_map

    def spy(fn, tasks, workers, *, caller):
        tasks = list(tasks)
        calls.append((workers, len(tasks), caller))
        return real_map(fn, tasks, workers, caller=caller)

    monkeypatch.setattr(validate, "ordered_map", spy)
    folder, zipped = small_trees
    a = preshard(folder, tmp_path / "a", max_samples_per_shard=16, workers=2, progress=False)
    # One validation map per split, in a pool of 2 (more than one task: ordered_map's pool path).
    assert [(w, c) for w, _, c in calls] == [(2, "preshard()")] * 3 and calls[0][1] == 6  # 48 train images / 8
    calls.clear()
    b = preshard(folder, tmp_path / "b", max_samples_per_shard=16, workers=1, progress=False)
    assert [w for w, _, _ in calls] == [1] * 3
    z = preshard(zipped / "img_align_celeba.zip", tmp_path / "z", max_samples_per_shard=16, workers=2, progress=False)
    assert all_files(tmp_path / "a") == all_files(tmp_path / "b")  # manifest included: no timestamps
    fa, fz = all_files(tmp_path / "a"), all_files(tmp_path / "z")
    assert {k: v for k, v in fa.items() if k != "manifest.json"} == {k: v for k, v in fz.items() if k != "manifest.json"}
    assert a["splits"] == b["splits"] == z["splits"]
    assert z["source"]["layout"] == "zip" and a["source"]["layout"] == "folder"
    # Another seed reorders train only.
    c = preshard(folder, tmp_path / "c", max_samples_per_shard=16, seed=1, workers=1, progress=False)
    assert c["splits"]["val"] == a["splits"]["val"] and c["splits"]["test"] == a["splits"]["test"]
    assert c["splits"]["train"]["count"] == a["splits"]["train"]["count"]
    assert c["splits"]["train"]["shards"][0]["sha256"] != a["splits"]["train"]["shards"][0]["sha256"]


def test_shards_respect_the_byte_budget(small_trees, tmp_path):
    folder, _ = small_trees
    budget = 64 * 1024
    m = preshard(folder, tmp_path / "s", shard_bytes=budget, workers=1, progress=False)
    shards = [s for v in m["splits"].values() for s in v["shards"]]
    assert len(shards) > 6
    assert all(s["bytes"] <= budget for s in shards)
    assert sum(s["count"] for s in shards) == 60

    def content_and_first_sample(path: Path) -> tuple[int, int]:
        """Bytes of a tar's members (headers + padded data) and of its first sample (3 members)."""
        with tarfile.open(path) as tf:
            sizes = [TAR_BLOCK + -(-m.size // TAR_BLOCK) * TAR_BLOCK for m in tf.getmembers()]
        return sum(sizes), sum(sizes[:3])

    # Greedy: a shard closes only when the next sample would push it (with its end-of-archive) past the budget.
    for info in m["splits"].values():
        parts = [content_and_first_sample(tmp_path / "s" / s["path"]) for s in info["shards"]]
        for s, (content, _), (_, next_sample) in zip(info["shards"], parts, parts[1:]):
            assert content + ShardWriter.closing_bytes(content) == s["bytes"]
            grown = content + next_sample
            assert grown + ShardWriter.closing_bytes(grown) > budget


def test_rerun_same_is_noop_and_different_is_refused(small_trees, tmp_path):
    folder, zipped = small_trees
    out = tmp_path / "out"
    first = preshard(folder, out, max_samples_per_shard=16, workers=1, progress=False)
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    again = preshard(folder, out, max_samples_per_shard=16, workers=1, progress=False)
    assert again == first
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == stamps  # nothing rewritten
    assert not (out / STATE).exists()
    # The zip copy of the same images is the same source: also a no-op.
    assert preshard(zipped, out, max_samples_per_shard=16, workers=1, progress=False)["splits"] == first["splits"]
    different = exactly(f"{out} already holds shards from a different source or options; "
                        "pick another --out or delete that directory")
    with pytest.raises(DataError, match=different):
        preshard(folder, out, max_samples_per_shard=16, seed=5, workers=1, progress=False)
    with pytest.raises(DataError, match=different):
        preshard(folder, out, max_samples_per_shard=8, workers=1, progress=False)
    other = write_synthetic_celeba(tmp_path / "other", n=60, seed=12, workers=1)
    with pytest.raises(DataError, match=different):
        preshard(other, out, max_samples_per_shard=16, workers=1, progress=False)
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == stamps  # refusals touch nothing either
    # Shards without a manifest or state file are not ours to overwrite.
    (out / "manifest.json").unlink()
    with pytest.raises(DataError, match=exactly(f"{out} already holds shard files without a manifest (not written by "
                                                "this preshard); pick another --out or delete that directory")):
        preshard(folder, out, max_samples_per_shard=16, workers=1, progress=False)
    # A listed shard that went missing or changed size is reported, not silently rebuilt.
    out2 = tmp_path / "out2"
    m = preshard(folder, out2, max_samples_per_shard=16, workers=1, progress=False)
    for damage in ("truncate", "unlink"):
        victim = out2 / m["splits"]["val"]["shards"][0]["path"]
        if damage == "truncate":
            victim.write_bytes(victim.read_bytes()[:-TAR_BLOCK])
        else:
            victim.unlink()
        with pytest.raises(DataError, match=exactly(f"{victim} is missing or damaged although manifest.json lists it; "
                                                    "delete that directory and rerun")):
            preshard(folder, out2, max_samples_per_shard=16, workers=1, progress=False)


def test_killed_run_never_looks_complete_and_resumes(small_trees, tmp_path, monkeypatch):
    folder, _ = small_trees
    clean = tmp_path / "clean"
    preshard(folder, clean, max_samples_per_shard=8, workers=1, progress=False)

    out = tmp_path / "out"
    real_finish = ShardWriter.finish
    calls = {"n": 0}

    class Killed(BaseException):
        """Stands in for SIGKILL: nothing after it runs, not even cleanup."""

    def finish_then_die(self):
        calls["n"] += 1
        if calls["n"] == 4:  # die with the 4th shard's index renamed but its tar not yet
            self._write(b"\0" * self.closing_bytes(self.bytes))
            self.file.close()
            from pipeline.wds_index import write_index

            write_index(self.tmp_idx, self.index)
            os.replace(self.tmp_idx, self.split_dir / f"{self.name}.idx")
            raise Killed()
        return real_finish(self)

    monkeypatch.setattr(ShardWriter, "finish", finish_then_die)
    monkeypatch.setattr(ShardWriter, "abort", lambda self: None)  # a killed process cleans nothing up
    with pytest.raises(Killed):
        preshard(folder, out, max_samples_per_shard=8, workers=1, progress=False)
    assert not (out / "manifest.json").exists()
    assert (out / STATE).is_file()
    tars = sorted(out.rglob("*.tar"))
    assert len(tars) == 3
    assert all(t.with_suffix(".idx").is_file() for t in tars)  # no shard without its index
    assert list(out.rglob("*.partial"))  # the unfinished shard only exists under a temporary name
    kept = {t: t.stat().st_mtime_ns for t in tars}

    monkeypatch.undo()
    with pytest.raises(DataError, match=exactly(f"{out} already holds shards of an unfinished run from a different "
                                                "source or options; pick another --out or delete that directory")):
        preshard(folder, out, max_samples_per_shard=8, seed=3, workers=1, progress=False)
    m = preshard(folder, out, max_samples_per_shard=8, workers=1, progress=False)
    assert {t: t.stat().st_mtime_ns for t in tars} == kept  # finished shards were reused, not rewritten
    assert all_files(out) == all_files(clean)  # and the result is byte-identical to an uninterrupted run
    assert not (out / STATE).exists() and not list(out.rglob("*.partial"))
    assert m["splits"]["train"]["count"] == len(listed(folder)["train"])


def test_error_mid_run_removes_the_partial_shard(small_trees, tmp_path, monkeypatch):
    folder, _ = small_trees
    calls = {"n": 0}
    real_add = ShardWriter.add

    def add_then_fail(self, key, members):
        calls["n"] += 1
        if calls["n"] == 20:
            raise KeyboardInterrupt
        return real_add(self, key, members)

    monkeypatch.setattr(ShardWriter, "add", add_then_fail)
    with pytest.raises(KeyboardInterrupt):
        preshard(folder, tmp_path / "o", max_samples_per_shard=8, workers=1, progress=False)
    assert not list((tmp_path / "o").rglob("*.partial"))
    assert not (tmp_path / "o" / "manifest.json").exists()
    # The two shards finished before the 20th sample stay, logged for a resume.
    assert sorted(p.name for p in (tmp_path / "o").rglob("celeba-*")) == [
        "celeba-train-000000.idx", "celeba-train-000000.tar", "celeba-train-000001.idx", "celeba-train-000001.tar"]
    log = (tmp_path / "o" / STATE).read_text().splitlines()
    assert [json.loads(line)["shard"]["path"] for line in log[1:]] == ["train/celeba-train-000000.tar",
                                                                      "train/celeba-train-000001.tar"]


def test_unusable_output_directories_are_refused(small_trees, tmp_path):
    folder, _ = small_trees
    file_out = tmp_path / "a-file"
    file_out.write_text("not a directory")
    with pytest.raises(DataError, match=exactly(f"--out {file_out} is a file; give a directory for the shards")):
        preshard(folder, file_out, workers=1, progress=False)
    assert file_out.read_text() == "not a directory"
    out = tmp_path / "out"
    out.mkdir()
    (out / "manifest.json").write_bytes(b"\xff{ not json")
    with pytest.raises(DataError, match=exactly(f"{out} already holds an unreadable manifest.json; "
                                                "pick another --out or delete that directory")):
        preshard(folder, out, workers=1, progress=False)
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json"]


def test_cli_prints_a_table_and_one_line_errors(small_trees, tmp_path, capsys):
    folder, _ = small_trees
    assert main(["--celeba", str(folder), "--out", str(tmp_path / "cli"), "--max-samples", "32", "--workers", "1"]) == 0
    out = capsys.readouterr().out
    m = json.loads((tmp_path / "cli" / "manifest.json").read_text())
    for split, info in m["splits"].items():  # one row per split: samples, shards, MB, skipped
        mb = sum(s["bytes"] for s in info["shards"]) / 1e6
        assert re.search(rf"{split}\W+{info['count']}\W+{len(info['shards'])}\W+{mb:.1f}\W+0\W", out), out
    assert re.search(r"60 images in [0-9.]+ s \([0-9,]+ images/s\)", out)
    assert main(["--celeba", str(folder), "--out", str(tmp_path / "cli"), "--max-samples", "32", "--workers", "1"]) == 0
    assert "nothing to do" in capsys.readouterr().out
    assert main(["--celeba", str(tmp_path / "missing"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    # One message (rich may wrap it to the terminal width), no traceback.
    assert err.startswith("error:") and err.count("error:") == 1 and "Traceback" not in err
    assert "does not exist" in " ".join(err.split())
    assert main(["--celeba", str(folder), "--out", str(tmp_path / "o"), "--shard-mb", "0"]) == 2
    assert capsys.readouterr().err == ("error: --shard-mb must be a number in 0.066..100,000 (64 KiB to 100 GB per "
                                       "tar; 100 suits DALI), got 0.0\n")


def test_python_dash_m_runs_the_cli_with_a_worker_pool(celeba_tree, shards_dir, tmp_path):
    """``python -m pipeline.preshard`` (the package's __main__), with spawned validation workers."""
    run = lambda *args: subprocess.run([sys.executable, "-m", "pipeline.preshard", *args], cwd=REPO,  # noqa: E731
                                       capture_output=True, text=True, timeout=300)
    helped = run("--help")
    assert helped.returncode == 0 and helped.stdout.startswith("usage: python -m pipeline.preshard")
    assert "--celeba" in helped.stdout and "--on-bad {skip,error}" in helped.stdout
    # The train split has more than one 64-image validation chunk, so two workers really run in a pool;
    # the output must be byte-identical to the in-process conftest run (same source, same options).
    done = run("--celeba", str(celeba_tree), "--out", str(tmp_path / "m"), "--max-samples", "64", "--workers", "2")
    assert done.returncode == 0, done.stderr
    assert len(listed(celeba_tree)["train"]) > 64
    assert all_files(tmp_path / "m") == all_files(shards_dir)
