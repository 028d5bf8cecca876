"""preshard: CelebA trees (folder and zip) → shards read back by webdataset and DALI; bad input."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

import pipeline.preshard.validate as validate
from pipeline.celeba import FolderStore, open_celeba
from pipeline.errors import ConfigError, DataError
from pipeline.layout import MANIFEST_FORMAT
from pipeline.preshard import STATE, TAR_BLOCK, ShardWriter, check_jpeg, main, preshard, split_plan, tar_header
from pipeline.preshard.validate import check_chunk
from pipeline.synthetic import ATTRIBUTES, write_synthetic_celeba
from pipeline.wds_index import check_index_matches_tar, format_index, parse_index, parse_index_text

SPLIT_CODE = {"0": "train", "1": "val", "2": "test"}
REPO = Path(__file__).resolve().parent.parent


# ----------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------

def exactly(message: str) -> str:
    """A ``pytest.raises(match=...)`` pattern that accepts ``message`` and nothing else."""
    return "^" + re.escape(message) + "$"


def listed(tree: Path) -> dict[str, list[str]]:
    """Keys per split, in file order, from the tree's partition file."""
    out: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    for line in (tree / "list_eval_partition.txt").read_text().splitlines():
        name, part = line.split()
        out[SPLIT_CODE[part]].append(name[:-4])
    return out


def attr_masks(tree: Path) -> dict[str, int]:
    lines = (tree / "list_attr_celeba.txt").read_text().splitlines()[2:]
    masks = {}
    for line in lines:
        name, *vals = line.split()
        masks[name[:-4]] = sum(1 << i for i, v in enumerate(vals) if v == "1")
    return masks


def source_bytes(tree: Path, key: str) -> bytes:
    return (tree / "img_align_celeba" / f"{key}.jpg").read_bytes()


def all_files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def read_with_dali(tars: list[Path], exts=("jpg", "cls")) -> tuple[list[str], list[list[bytes]], list[tuple]]:
    """Every sample of ``tars`` through DALI's CPU webdataset reader with our index files, decoded too."""
    from nvidia.dali import fn, pipeline_def, types

    idxs = [str(t.with_suffix(".idx")) for t in tars]

    @pipeline_def(batch_size=32, num_threads=1, device_id=None, prefetch_queue_depth=1)
    def pipe():
        outs = fn.readers.webdataset(paths=[str(t) for t in tars], index_paths=idxs, ext=list(exts), name="reader",
                                     random_shuffle=False, missing_component_behavior="error")
        outs = outs if isinstance(outs, (list, tuple)) else [outs]
        return (*outs, fn.decoders.image(outs[0], device="cpu", output_type=types.RGB))

    p = pipe()
    p.build()
    n = p.epoch_size("reader")
    keys, raw, shapes = [], [[] for _ in exts], []
    while len(keys) < n:
        *outs, images = p.run()
        for i in range(len(outs[0])):
            if len(keys) == n:
                break
            keys.append(outs[0][i].source_info().rsplit(":", 1)[-1].split(".")[0])
            for k, o in enumerate(outs):
                raw[k].append(o.at(i).tobytes())
            shapes.append(images.at(i).shape)
    return keys, raw, shapes


@pytest.fixture(scope="module")
def small_trees(tmp_path_factory):
    """The same 60 faces as a folder tree and as a zip tree."""
    base = tmp_path_factory.mktemp("small")
    folder = write_synthetic_celeba(base / "folder", n=60, seed=11, workers=1)
    zipped = write_synthetic_celeba(base / "zip", n=60, seed=11, workers=1, as_zip=True)
    return folder, zipped


def copy_tree(tree: Path, dst: Path) -> Path:
    shutil.copytree(tree, dst)
    return dst


# ----------------------------------------------------------------------------------------------
# the shards: manifest, tar layout, read back by webdataset and by DALI
# ----------------------------------------------------------------------------------------------

def test_manifest_describes_every_shard(shards_dir, celeba_tree):
    m = json.loads((shards_dir / "manifest.json").read_text())
    keys = listed(celeba_tree)
    assert m["format"] == "celeba-wds/1" == MANIFEST_FORMAT
    assert m["attributes"] == list(ATTRIBUTES)
    assert m["extensions"] == ["jpg", "cls", "json"]
    assert m["options"] == {"shard_bytes": 100_000_000, "max_samples_per_shard": 64, "seed": 0}
    assert re.fullmatch(r"[0-9a-f]{64}", m["fingerprint"])
    assert m["source"]["layout"] == "folder" and m["source"]["listed"] == sum(len(k) for k in keys.values())
    assert m["skipped"] == []
    assert {s: v["count"] for s, v in m["splits"].items()} == {s: len(k) for s, k in keys.items()}
    assert len(m["splits"]["train"]["shards"]) > 1  # several shards per split at max 64 samples
    import hashlib

    for split, info in m["splits"].items():
        assert sum(s["count"] for s in info["shards"]) == info["count"]
        for i, s in enumerate(info["shards"]):
            assert s["path"] == f"{split}/celeba-{split}-{i:06d}.tar"
            assert s["index"] == f"{split}/celeba-{split}-{i:06d}.idx"
            data = (shards_dir / s["path"]).read_bytes()
            assert len(data) == s["bytes"] and len(data) % 10240 == 0
            assert hashlib.sha256(data).hexdigest() == s["sha256"]
            # Far below the byte budget, every shard but the last closes at exactly 64 samples.
            assert s["count"] == 64 if i < len(info["shards"]) - 1 else 0 < s["count"] <= 64
    # Nothing else: no temporary files, no state file, one .idx per .tar.
    names = sorted(p.relative_to(shards_dir).as_posix() for p in shards_dir.rglob("*") if p.is_file())
    listed_files = sorted([s["path"] for v in m["splits"].values() for s in v["shards"]] +
                          [s["index"] for v in m["splits"].values() for s in v["shards"]] + ["manifest.json"])
    assert names == listed_files


def test_tar_members_are_deterministic_and_ordered(shards_dir, celeba_tree):
    source = open_celeba(celeba_tree)
    for split in ("train", "val", "test"):
        keys = []
        for tar in sorted((shards_dir / split).glob("*.tar")):
            with tarfile.open(tar) as tf:
                members = tf.getmembers()
            assert members and len(members) % 3 == 0
            for i in range(0, len(members), 3):
                key = members[i].name.split(".")[0]
                assert [m.name for m in members[i:i + 3]] == [f"{key}.jpg", f"{key}.cls", f"{key}.json"]
                keys.append(key)
            for m in members:
                assert (m.mtime, m.uid, m.gid, m.uname, m.gname, m.mode, m.type) == (0, 0, 0, "", "", 0o644,
                                                                                     tarfile.REGTYPE)
        # Samples follow the split's plan across the shards (train shuffled with seed 0).
        assert keys == [e.key for e in split_plan(source, split, 0)]


@pytest.mark.parametrize("name,size", [("000001.jpg", 0), ("000001.jpg", 8123), ("a" * 96 + ".cls", 10),
                                       ("x.json", 0o77777777777)])
def test_tar_header_equals_tarfiles(name, size):
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode, info.uid, info.gid, info.uname, info.gname = size, 0, 0o644, 0, 0, "", ""
    assert tar_header(name, size) == info.tobuf(format=tarfile.USTAR_FORMAT, encoding="utf-8", errors="strict")


def test_tar_header_rejects_names_that_do_not_fit():
    assert len(tar_header("a" * 96 + ".jpg", 1)) == TAR_BLOCK  # exactly 100 bytes still fits
    name = "a" * 97 + ".jpg"
    with pytest.raises(ValueError, match=exactly(f"tar member name too long for a ustar header: {name!r}")):
        tar_header(name, 1)


def test_webdataset_reads_back_every_sample(shards_dir, celeba_tree):
    import webdataset as wds

    keys = listed(celeba_tree)
    masks = attr_masks(celeba_tree)
    for split in ("train", "val", "test"):
        tars = [str(p) for p in sorted((shards_dir / split).glob("*.tar"))]
        got = []
        for s in wds.WebDataset(tars, shardshuffle=False, empty_check=False):
            key = s["__key__"]
            got.append(key)
            assert s["jpg"] == source_bytes(celeba_tree, key)  # original bytes, not re-encoded
            assert int(s["cls"]) == masks[key]
            attrs = json.loads(s["json"])["attributes"]
            assert list(attrs) == list(ATTRIBUTES)
            assert sum(v << i for i, v in enumerate(attrs.values())) == masks[key]
        assert sorted(got) == keys[split]
        if split == "train":
            assert got != keys[split]  # shuffled with the seed
        else:
            assert got == keys[split]  # file order


def test_dali_reads_shards_with_our_index_files(shards_dir, celeba_tree):
    keys = listed(celeba_tree)
    masks = attr_masks(celeba_tree)
    for split in ("train", "val", "test"):
        tars = sorted((shards_dir / split).glob("*.tar"))
        got, (jpgs, clss), shapes = read_with_dali(tars)
        assert sorted(got) == keys[split] and len(got) == len(set(got))
        for key, jpg, cls in zip(got, jpgs, clss):
            assert jpg == source_bytes(celeba_tree, key)
            assert int(cls) == masks[key]
        assert set(shapes) == {(218, 178, 3)}  # every image decodes with DALI


def test_index_files_equal_dalis_own_index_creator(shards_dir, tmp_path):
    import wds2idx

    for tar in sorted(shards_dir.rglob("*.tar")):
        ours = tar.with_suffix(".idx")
        theirs = tmp_path / (tar.stem + ".idx")
        with wds2idx.IndexCreator(str(tar), str(theirs), verbose=False) as creator:
            creator.create_index()
        assert ours.read_text() == theirs.read_text()
        parsed = parse_index(ours)
        check_index_matches_tar(parsed, tar)
        assert format_index(parsed) == ours.read_text()


def test_index_parser_rejects_malformed_files(tmp_path):
    hint = "; rerun `python -m pipeline.preshard` to rebuild the shards and their indexes"
    for text, message in [
        ("", "<index>: empty index file"),
        ("v1.1 1\njpg 512 10\n", "<index>:1: expected 'v1.2 <count>', got 'v1.1 1'"),
        ("v1.2 2\njpg 512 10 a.jpg\n", "<index>: header says 2 samples but 1 lines follow"),
        ("v1.2 1\njpg x 10 a.jpg\n", "<index>:2: offset and size must be integers, got 'x' '10'"),
        ("v1.2 1\njpg 512 10\n", "<index>:2: expected groups of 'ext offset size name', got 'jpg 512 10'"),
    ]:
        with pytest.raises(DataError, match=exactly(message + hint)):
            parse_index_text(text)
    with pytest.raises(DataError, match=exactly(f"index file {tmp_path / 'nope.idx'} is missing; rerun "
                                                "`python -m pipeline.preshard` to rebuild the shards")):
        parse_index(tmp_path / "nope.idx")
    tar = tmp_path / "t.tar"
    tar.write_bytes(b"\0" * 2048)
    with pytest.raises(DataError, match=exactly(f"{tar}: index entry a.jpg (offset 512, size 4096) does not match the "
                                                "tar (2048 bytes); rerun `python -m pipeline.preshard` into a fresh --out")):
        check_index_matches_tar(parse_index_text("v1.2 1\njpg 512 4096 a.jpg\n"), tar)


# ----------------------------------------------------------------------------------------------
# folder vs zip, determinism, shard size, reruns
# ----------------------------------------------------------------------------------------------

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


# ----------------------------------------------------------------------------------------------
# bad images and bad sources
# ----------------------------------------------------------------------------------------------

def test_check_jpeg_names_what_is_wrong(celeba_tree):
    good = source_bytes(celeba_tree, "000001")
    assert check_jpeg(good) is None
    assert check_jpeg(b"") == "empty file (0 bytes)"
    assert check_jpeg(b"\x89PNG\r\n\x1a\n" + good) == "not a JPEG (starts with b'\\x89PNG\\r\\n\\x1a\\n')"
    half = good[: len(good) // 2]
    assert check_jpeg(half) == f"truncated JPEG (no end-of-image marker; {len(half)} bytes)"
    assert check_jpeg(good[:300]) == "JPEG without image data (no start-of-scan marker)"
    sos = good.rfind(b"\xff\xda")
    garbage = good[: sos + 20] + bytes((i * 97 + 13) % 256 for i in range(len(good) - sos - 20)) + b"\xff\xd9"
    assert re.fullmatch(r"does not decode: \w+: .+", check_jpeg(garbage))


def test_unreadable_image_is_a_bad_sample_not_a_crash(celeba_tree, tmp_path):
    store = FolderStore(celeba_tree / "img_align_celeba")
    gone = tmp_path / "vanished.jpg"
    got = check_chunk(store, [(7, store.locate("000001.jpg")), (8, str(gone)), (9, store.locate("000002.jpg"))])
    assert [(pos, reason) for pos, _, reason in got] == [
        (7, None), (8, f"unreadable: FileNotFoundError: [Errno 2] No such file or directory: '{gone}'"), (9, None)]
    assert got[0][1] == source_bytes(celeba_tree, "000001") and got[1][1] is None


@pytest.fixture()
def bad_tree(small_trees, tmp_path):
    """The 60-face tree with four broken images, one per kind, spread over the splits."""
    tree = copy_tree(small_trees[0], tmp_path / "bad")
    keys = listed(tree)
    img = tree / "img_align_celeba"
    bad = {keys["train"][3]: "truncated", keys["train"][10]: "empty", keys["val"][0]: "not a JPEG",
           keys["test"][1]: "does not decode"}
    for key, kind in bad.items():
        p = img / f"{key}.jpg"
        data = p.read_bytes()
        if kind == "truncated":
            p.write_bytes(data[: len(data) // 2])
        elif kind == "empty":
            p.write_bytes(b"")
        elif kind == "not a JPEG":
            p.write_bytes(b"<html>404 Not Found</html>")
        else:
            sos = data.rfind(b"\xff\xda")
            p.write_bytes(data[: sos + 20] + bytes((i * 97 + 13) % 256 for i in range(len(data) - sos - 20)) + b"\xff\xd9")
    return tree, bad


def test_bad_jpegs_are_skipped_counted_and_never_sharded(bad_tree, tmp_path):
    tree, bad = bad_tree
    m = preshard(tree, tmp_path / "s", max_samples_per_shard=16, workers=1, progress=False)
    assert {s["key"]: s["reason"].split(" (")[0].split(":")[0] for s in m["skipped"]} == {
        k: {"truncated": "truncated JPEG", "empty": "empty file", "not a JPEG": "not a JPEG",
            "does not decode": "does not decode"}[v] for k, v in bad.items()}
    keys = listed(tree)
    split_of = {k: s for s, ks in keys.items() for k in ks}
    assert [(s["key"], s["split"]) for s in m["skipped"]] == sorted(
        ((k, split_of[k]) for k in bad), key=lambda ks: (["train", "val", "test"].index(ks[1]),
                                                          [e.key for e in split_plan(open_celeba(tree), ks[1], 0)].index(ks[0])))
    assert m["splits"]["train"]["count"] == len(keys["train"]) - 2
    assert m["splits"]["val"]["count"] == len(keys["val"]) - 1
    assert m["splits"]["test"]["count"] == len(keys["test"]) - 1
    tars = sorted((tmp_path / "s").rglob("*.tar"))
    got, (jpgs,), shapes = read_with_dali(tars, exts=("jpg",))  # DALI decodes every sharded image
    assert not set(got) & set(bad) and len(got) == 60 - 4


def test_bad_jpeg_with_on_bad_error_names_the_key(bad_tree, tmp_path):
    tree, bad = bad_tree
    # Train is written first, in its shuffled order: the error names the first bad key met there.
    first_bad = next(e.key for e in split_plan(open_celeba(tree), "train", 0) if e.key in bad)
    with pytest.raises(DataError, match=rf"bad image {first_bad}\.jpg \(key {first_bad}, train\).*--on-bad skip"):
        preshard(tree, tmp_path / "e", max_samples_per_shard=16, on_bad="error", workers=1, progress=False)
    assert not (tmp_path / "e" / "manifest.json").exists()
    assert not list((tmp_path / "e").rglob("*.partial"))
    # A finished run that skipped images does not pass for a clean one under on_bad="error".
    first = preshard(tree, tmp_path / "s", max_samples_per_shard=16, workers=1, progress=False)["skipped"][0]
    with pytest.raises(DataError, match=exactly(f"4 bad image(s) were skipped in the existing shards in {tmp_path / 's'}, "
                                                f"e.g. {first['key']}: {first['reason']}")):
        preshard(tree, tmp_path / "s", max_samples_per_shard=16, on_bad="error", workers=1, progress=False)


def test_source_problems_each_give_one_clear_error(small_trees, tmp_path):
    folder, zipped = small_trees
    run = lambda src: preshard(src, tmp_path / "never", workers=1, progress=False)  # noqa: E731

    t = copy_tree(folder, tmp_path / "t1")
    (t / "list_eval_partition.txt").unlink()
    with pytest.raises(DataError, match=exactly(f"{t} has no list_eval_partition.txt (CelebA's train/val/test split); "
                                                "put it beside img_align_celeba")):
        run(t)

    t = copy_tree(folder, tmp_path / "t2")
    (t / "img_align_celeba" / "000007.jpg").unlink()
    with pytest.raises(DataError, match=exactly(f"1 image(s) listed in list_eval_partition.txt are missing from "
                                                f"{t / 'img_align_celeba'}: 000007.jpg")):
        run(t)

    t = copy_tree(folder, tmp_path / "t3")
    (t / "list_eval_partition.txt").write_text("")
    with pytest.raises(DataError, match=exactly(f"{t / 'list_eval_partition.txt'} lists no images: "
                                                "an empty source cannot be sharded")):
        run(t)

    t = copy_tree(folder, tmp_path / "t4")
    lines = (t / "list_eval_partition.txt").read_text().splitlines()
    lines[4] = "000005.jpg three"
    (t / "list_eval_partition.txt").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=exactly("list_eval_partition.txt:5: expected '<image>.jpg <0|1|2>', "
                                                "got '000005.jpg three'")):
        run(t)

    t = copy_tree(folder, tmp_path / "t5")
    shutil.rmtree(t / "img_align_celeba")
    with pytest.raises(DataError, match=exactly(f"no img_align_celeba/ folder or img_align_celeba.zip found in {t}")):
        run(t)

    t = copy_tree(zipped, tmp_path / "t6")
    (t / "img_align_celeba.zip").write_bytes(b"PK\x03\x04 not really")
    with pytest.raises(DataError, match=exactly(f"{t / 'img_align_celeba.zip'} is not a valid zip "
                                                "(incomplete download?)")):
        run(t)

    t = copy_tree(folder, tmp_path / "t7")
    lines = (t / "list_attr_celeba.txt").read_text().splitlines()
    lines[5] = lines[5].replace(" 1", " 2", 1) if " 1" in lines[5] else lines[5].replace("-1", " 2", 1)
    (t / "list_attr_celeba.txt").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"^list_attr_celeba\.txt:6: attribute values must be 1 or -1, got '2'$"):
        run(t)

    with pytest.raises(DataError, match=exactly(f"CelebA source {tmp_path / 'nowhere'} does not exist")):
        run(tmp_path / "nowhere")
    with pytest.raises(ConfigError, match=exactly("shard size must be at least 64 KiB, got 10 bytes")):
        preshard(folder, tmp_path / "x", shard_bytes=10, progress=False)
    with pytest.raises(ConfigError, match=exactly("on_bad must be 'skip' or 'error', got 'ignore'")):
        preshard(folder, tmp_path / "x", on_bad="ignore", progress=False)
    with pytest.raises(ConfigError, match=exactly("max samples per shard must be a positive integer, got 0")):
        preshard(folder, tmp_path / "x", max_samples_per_shard=0, progress=False)
    with pytest.raises(ConfigError, match=exactly("workers must be a positive integer, got 0")):
        preshard(folder, tmp_path / "x", workers=0, progress=False)
    assert not (tmp_path / "never").exists() and not (tmp_path / "x").exists()


def test_a_source_without_one_valid_image_is_an_error(small_trees, tmp_path):
    tree = copy_tree(small_trees[0], tmp_path / "allbad")
    for p in (tree / "img_align_celeba").iterdir():
        p.write_bytes(b"")
    first = split_plan(open_celeba(tree), "train", 0)[0].key
    with pytest.raises(DataError, match=exactly(f"no valid image in {tree}: all 60 listed images were skipped "
                                                f"(e.g. {first}: empty file (0 bytes))")):
        preshard(tree, tmp_path / "s", workers=1, progress=False)
    assert not (tmp_path / "s" / "manifest.json").exists() and not list((tmp_path / "s").rglob("*.tar"))


def test_without_attribute_file_only_jpgs_are_written(small_trees, tmp_path):
    t = copy_tree(small_trees[0], tmp_path / "noattr")
    (t / "list_attr_celeba.txt").unlink()
    m = preshard(t, tmp_path / "s", max_samples_per_shard=32, workers=1, progress=False)
    assert m["attributes"] is None and m["extensions"] == ["jpg"]
    with tarfile.open(tmp_path / "s" / m["splits"]["val"]["shards"][0]["path"]) as tf:
        assert all(n.endswith(".jpg") for n in tf.getnames())
    assert open_celeba(t).attributes is None


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
    assert capsys.readouterr().err == "error: --shard-mb must be positive, got 0.0\n"


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
