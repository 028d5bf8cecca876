"""Promises README and docs make that no other test checked (#25, item 8), each small and in-process:

- preshard reads Kaggle's ``.csv`` lists and the official ``Img/ Eval/ Anno/`` layout, end to end;
- preshard ending on a full disk (ENOSPC while writing a tar) says so in one line, and the same command
  resumes to the shards an uninterrupted run writes;
- the host cache's budget is the smaller of MemAvailable and what the cgroup limit still allows;
- a resume reads past a torn last line of metrics.jsonl, and refuses a torn line that is not the last.
"""
from __future__ import annotations

import builtins
import errno
import io
import json
import os
import re
import shutil
import tarfile
import zipfile
from pathlib import Path

import pytest

from pipeline.preshard import STATE, ShardWriter, main, preshard
from tests.preshard_utils import all_files, listed

N_FACES = 24  # 20 train, 2 val, 2 test with the synthetic tree's split


@pytest.fixture(scope="module")
def plain_tree(tmp_path_factory) -> Path:
    from pipeline.synthetic import write_synthetic_celeba

    return write_synthetic_celeba(tmp_path_factory.mktemp("plain") / "celeba", n=N_FACES, seed=5, workers=1)


def _tar_keys(out: Path, manifest: dict, split: str) -> list[str]:
    keys = []
    for shard in manifest["splits"][split]["shards"]:
        with tarfile.open(out / shard["path"]) as tf:
            keys += [m.name[:-4] for m in tf.getmembers() if m.name.endswith(".jpg")]
    return keys


def _shard_sums(manifest: dict) -> dict[str, list[tuple[int, str]]]:
    return {split: [(s["count"], s["sha256"]) for s in info["shards"]] for split, info in manifest["splits"].items()}


def _kaggle(plain: Path, dst: Path) -> Path:
    """Kaggle's copy: img_align_celeba/img_align_celeba/*.jpg and the two lists as CSV with a header row."""
    shutil.copytree(plain / "img_align_celeba", dst / "img_align_celeba" / "img_align_celeba")
    part = [line.split() for line in (plain / "list_eval_partition.txt").read_text().splitlines()]
    (dst / "list_eval_partition.csv").write_text("image_id,partition\n" + "".join(f"{n},{p}\n" for n, p in part))
    attr = (plain / "list_attr_celeba.txt").read_text().splitlines()
    names = attr[1].split()
    rows = [line.split() for line in attr[2:]]
    (dst / "list_attr_celeba.csv").write_text(
        ",".join(["image_id", *names]) + "\n" + "".join(",".join(r) + "\n" for r in rows))
    return dst


def _google_drive(plain: Path, dst: Path) -> Path:
    """The official Google-Drive folders: Img/img_align_celeba.zip, Eval/list_eval_partition.txt, Anno/list_attr_celeba.txt."""
    for sub in ("Img", "Eval", "Anno"):
        (dst / sub).mkdir(parents=True)
    with zipfile.ZipFile(dst / "Img" / "img_align_celeba.zip", "w") as zf:
        for jpg in sorted((plain / "img_align_celeba").iterdir()):
            zf.write(jpg, f"img_align_celeba/{jpg.name}")
    shutil.copy(plain / "list_eval_partition.txt", dst / "Eval")
    shutil.copy(plain / "list_attr_celeba.txt", dst / "Anno")
    return dst


@pytest.mark.parametrize("layout", ["kaggle", "google_drive"])
def test_kaggle_csv_lists_and_the_img_eval_anno_layout_shard_like_the_plain_tree(plain_tree, tmp_path, layout):
    want = preshard(plain_tree, tmp_path / "want", max_samples_per_shard=8, workers=1, progress=False)
    tree = (_kaggle if layout == "kaggle" else _google_drive)(plain_tree, tmp_path / layout)
    out = tmp_path / "out"
    m = preshard(tree, out, max_samples_per_shard=8, workers=1, progress=False)
    src = m["source"]
    if layout == "kaggle":
        assert (src["partition_file"], src["attributes_file"]) == ("list_eval_partition.csv", "list_attr_celeba.csv")
        assert src["layout"] == "folder" and src["images"].endswith("img_align_celeba/img_align_celeba")
    else:
        assert (src["partition_file"], src["attributes_file"]) == ("list_eval_partition.txt", "list_attr_celeba.txt")
        assert src["layout"] == "zip" and src["images"].endswith("Img/img_align_celeba.zip"), src
        assert src["fingerprint"] == want["source"]["fingerprint"]  # the same lists' bytes, the same images
    assert src["listed"] == N_FACES and src["listed_per_split"] == want["source"]["listed_per_split"]
    assert m["extensions"] == ["jpg", "cls", "json"]  # the attribute list was found and read
    keys = listed(plain_tree)
    for split in ("train", "val", "test"):
        assert m["splits"][split]["count"] == len(keys[split])
        got = _tar_keys(out, m, split)
        assert sorted(got) == sorted(keys[split]) and (split == "train" or got == keys[split])
    assert _shard_sums(m) == _shard_sums(want)  # byte for byte the shards of the plain tree (attributes included)


def test_preshard_ending_on_a_full_disk_says_so_and_the_same_command_resumes(plain_tree, tmp_path, capsys, monkeypatch):
    clean = tmp_path / "clean"
    argv = ["--celeba", str(plain_tree), "--max-samples", "8", "--workers", "1", "--out"]
    assert main(argv + [str(clean)]) == 0
    out = tmp_path / "out"
    real_write = ShardWriter._write

    def disk_fills(self, data):  # the 2nd train shard's tar fills the disk part-way
        if self.name == "celeba-train-000001" and self.count == 3:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(self, data)

    monkeypatch.setattr(ShardWriter, "_write", disk_fills)
    capsys.readouterr()
    assert main(argv + [str(out)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("error:") == 1, err
    line = " ".join(err.split())  # rich may wrap the line to the terminal width
    assert line.startswith(f"error: disk full while writing {out}:"), line
    assert "free some space, then run the same command to continue" in line, line
    assert not (out / "manifest.json").exists() and (out / STATE).is_file()
    assert not list(out.rglob("*.partial"))  # the torn shard is gone
    assert sorted(p.name for p in out.rglob("*.tar")) == ["celeba-train-000000.tar"]
    kept = (out / "train" / "celeba-train-000000.tar").stat().st_mtime_ns

    monkeypatch.undo()
    assert main(argv + [str(out)]) == 0
    assert (out / "train" / "celeba-train-000000.tar").stat().st_mtime_ns == kept  # reused, not rewritten
    assert all_files(out) == all_files(clean)  # byte-identical to the uninterrupted run, manifest included
    assert not (out / STATE).exists()


# ---------------------------------------------------------------------------------------------- the cache's budget
MEMINFO = "MemTotal:       16000000 kB\nMemFree:         1000000 kB\nMemAvailable:    8000000 kB\nBuffers: 1 kB\n"
AVAILABLE = 8_000_000 * 1024


@pytest.mark.parametrize("meminfo,limit,current,expect", [
    (MEMINFO, None, None, AVAILABLE),  # no cgroup v2 files: MemAvailable
    (MEMINFO, "max\n", "123\n", AVAILABLE),  # an unlimited cgroup: MemAvailable
    (MEMINFO, "4000000000\n", "1000000000\n", 3_000_000_000),  # the cgroup allows less than the host has
    (MEMINFO, "40000000000\n", "1000000000\n", AVAILABLE),  # the cgroup allows more: MemAvailable
    (MEMINFO, "1000000000\n", "1200000000\n", 0),  # already over the limit: nothing, not a negative budget
    (MEMINFO, "4000000000\n", "garbage\n", AVAILABLE),  # an unreadable cgroup file is ignored
    ("MemTotal: 16000000 kB\nMemFree: 1000000 kB\n", "max\n", "0\n", 77 * 4096),  # no MemAvailable: sysconf
    (None, "4000000000\n", "1000000000\n", 77 * 4096),  # no /proc/meminfo: sysconf, still capped by the cgroup
])
def test_host_cache_budget_is_memavailable_capped_by_the_cgroup(tmp_path, monkeypatch, meminfo, limit, current, expect):
    import torch

    import pipeline.cache as cache_mod

    files = {"/proc/meminfo": meminfo, "/sys/fs/cgroup/memory.max": limit, "/sys/fs/cgroup/memory.current": current}
    opened = []

    def fake_open(path, *args, **kwargs):
        opened.append(str(path))
        if str(path) not in files:
            return builtins.open(path, *args, **kwargs)
        if files[str(path)] is None:
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), str(path))
        return io.StringIO(files[str(path)])

    real_sysconf = os.sysconf
    monkeypatch.setattr(cache_mod, "open", fake_open, raising=False)  # free_bytes' own reads, nobody else's
    monkeypatch.setattr(cache_mod.os, "sysconf",
                        lambda name: {"SC_AVPHYS_PAGES": 77, "SC_PAGE_SIZE": 4096}.get(name) or real_sysconf(name))
    assert cache_mod.free_bytes("host", torch.device("cpu")) == expect
    assert "/proc/meminfo" in opened and "/sys/fs/cgroup/memory.max" in opened


# ---------------------------------------------------------------------------------------- metrics.jsonl on resume
def _records() -> list[dict]:
    return ([{"kind": "train", "step": s, "epoch": 1, "loss": 1.0 / s} for s in (1, 2, 3, 4)]
            + [{"kind": "val", "step": 4, "epoch": 1, "elbo": -5.0}]
            + [{"kind": "train", "step": s, "epoch": 2, "loss": 1.0 / s} for s in (5, 6)])


def test_resume_reads_past_a_torn_last_line_of_metrics_jsonl(tmp_path):
    from model.training.observe import MetricsLog

    path = tmp_path / "metrics.jsonl"
    recs = _records()
    torn = json.dumps({"kind": "train", "step": 7, "epoch": 2, "loss": 0.125})[:-9]  # kill -9 mid-append
    path.write_text("".join(json.dumps(r) + "\n" for r in recs) + torn)
    log = MetricsLog(path)
    log.truncate_after(step=6, epochs_done=1)
    assert log.records == recs
    assert path.read_text() == "".join(json.dumps(r) + "\n" for r in recs)  # the torn line is gone from the file
    log.truncate_after(step=4, epochs_done=1)  # a cut to the checkpoint's step still works on the repaired file
    assert [(r["kind"], r["step"]) for r in log.records] == [("train", 1), ("train", 2), ("train", 3), ("train", 4),
                                                              ("val", 4)]


def test_a_torn_line_that_is_not_the_last_is_refused_naming_it(tmp_path):
    from model.training.observe import MetricsLog
    from pipeline.errors import ConfigError

    path = tmp_path / "metrics.jsonl"
    lines = [json.dumps(r) for r in _records()]
    lines[2] = lines[2][:15]
    path.write_text("\n".join(lines) + "\n")
    before = path.read_bytes()
    with pytest.raises(ConfigError, match="^" + re.escape(f"{path} line 3 is not JSON; it was not written by this trainer")):
        MetricsLog(path).truncate_after(step=6, epochs_done=1)
    assert path.read_bytes() == before  # refused, not rewritten
