"""preshard and bad input: broken images are skipped (or stop the run) and never sharded; a bad source or
option is one clear error; a source without an attribute list gives image-only shards."""
from __future__ import annotations

import re
import shutil
import tarfile

import pytest

from pipeline.celeba import FolderStore, open_celeba
from pipeline.errors import ConfigError, DataError
from pipeline.preshard import check_jpeg, preshard, split_plan
from pipeline.preshard.validate import check_chunk
from tests.preshard_utils import copy_tree, exactly, listed, read_with_dali, small_trees, source_bytes  # noqa: F401


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
