"""preshard's output: the manifest, the tars' layout, the index files, read back by webdataset and by DALI.

Determinism, reruns, resume and the CLI: tests/test_preshard_resume.py; bad images and bad sources:
tests/test_preshard_errors.py.
"""
from __future__ import annotations

import hashlib
import json
import re
import tarfile

import pytest

from pipeline.celeba import open_celeba
from pipeline.errors import DataError
from pipeline.layout import MANIFEST_FORMAT, PRESHARD_HINT
from pipeline.preshard import TAR_BLOCK, split_plan, tar_header
from pipeline.synthetic import ATTRIBUTES
from pipeline.wds_index import check_index_matches_tar, format_index, parse_index, parse_index_text, read_index_header
from tests.preshard_utils import attr_masks, exactly, listed, read_with_dali, source_bytes


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
    hint = f"; {PRESHARD_HINT}"
    for text, message in [
        ("", "<index>: empty index file"),
        ("v1.1 1\njpg 512 10\n", "<index>:1: expected 'v1.2 <count>', got 'v1.1 1'"),
        ("v1.2 ²\njpg 512 10 a.jpg\n", "<index>:1: expected 'v1.2 <count>', got 'v1.2 ²'"),  # a digit int() refuses
        ("v1.2 2\njpg 512 10 a.jpg\n", "<index>: header says 2 samples but 1 lines follow"),
        ("v1.2 1\njpg x 10 a.jpg\n", "<index>:2: offset and size must be integers, got 'x' '10'"),
        ("v1.2 1\njpg 512 10\n", "<index>:2: expected groups of 'ext offset size name', got 'jpg 512 10'"),
    ]:
        with pytest.raises(DataError, match=exactly(message + hint)):
            parse_index_text(text)
    with pytest.raises(DataError, match=exactly(f"index file {tmp_path / 'nope.idx'} is missing{hint}")):
        parse_index(tmp_path / "nope.idx")
    tar = tmp_path / "t.tar"
    tar.write_bytes(b"\0" * 2048)
    with pytest.raises(DataError, match=exactly(f"{tar}: index entry a.jpg (offset 512, size 4096) does not match the "
                                                f"tar (2048 bytes){hint}")):
        check_index_matches_tar(parse_index_text("v1.2 1\njpg 512 4096 a.jpg\n"), tar)


def test_index_header_alone_is_checked_like_the_whole_file(tmp_path):
    """The start-up check reads only the first line, with the parser's own header rule and message."""
    idx = tmp_path / "a.idx"
    idx.write_text("v1.2 3\nnot read\n")
    assert read_index_header(idx) == 3
    for header in ("v1.1 3", "v1.2", "v1.2 -3", "v1.2 3 4"):
        idx.write_text(header + "\njpg 512 10 a.jpg\n")
        with pytest.raises(DataError) as from_parser:
            parse_index(idx)
        with pytest.raises(DataError, match=exactly(str(from_parser.value))):
            read_index_header(idx)
        assert f"{idx}:1: expected 'v1.2 <count>', got {header!r}; " in str(from_parser.value)
    idx.write_bytes(b"\0" * 100_000)  # a tar given as an index: one bounded read, a short message
    with pytest.raises(DataError, match=exactly(f"{idx}:1: expected 'v1.2 <count>', got {chr(0) * 40!r}; "
                                                f"{PRESHARD_HINT}")):
        read_index_header(idx)
    with pytest.raises(DataError, match=f"^{re.escape(f'cannot read index file {tmp_path}: ')}.*"
                                        f"{re.escape(PRESHARD_HINT)}$"):
        read_index_header(tmp_path)
