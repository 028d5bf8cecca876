"""preshard --images: any folder of faces → shards the CelebA loaders read; the split by path hash; bad input."""
from __future__ import annotations

import functools
import io
import json
import pickle
import random
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from pipeline.celeba import FolderStore
from pipeline.errors import DataError
from pipeline.image_folder import KEY_MAX, make_keys, open_image_folder, split_of
from pipeline.layout import SPLITS
from pipeline.preshard import main, prepare_image, preshard
from pipeline.preshard.validate import check_chunk
from pipeline.shards import read_attributes, read_members, read_split

VAL, TEST = 0.25, 0.25
ARGS = ["--val", str(VAL), "--test", str(TEST), "--workers", "1"]

# Relative path → how preshard must store it: "jpeg" (bytes unchanged), "png" (re-encoded), "bad" (skipped).
PLAIN_JPEGS = ["people/alice/01.jpg", "people/alice/02.jpg", "people/alice/03.jpg", "people/bob/img 1.JPG",
               "people/bob/photo.v2.jpeg", "people/carol/a/b/deep.jpg", "people/dave/04.jpg", "people/dave/05.jpg",
               "people/dave/progressive.jpg", "eve.jpg", "frank/06.jpg", "f.jpg/inside.jpg", "k/a.b.jpg"]
FOLDER = {**{p: "jpeg" for p in PLAIN_JPEGS}, "grey/g.jpg": "jpeg",
          "x/alpha.png": "png", "x/palette.png": "png", "x/deep16.png": "png", "w/face.webp": "png",
          "r/rotated.jpg": "png", "c/cmyk.jpg": "png", "k/a_b.png": "png",
          "bad/corrupt.jpg": "bad", "bad/fake.png": "bad", "bad/gone.jpg": "bad"}
IGNORED = [".hidden/h.jpg", "people/.h.jpg", "notes.txt", "people/alice/readme.md", "people/alice/01.jpg.bak"]


def _pixels(rng: np.random.Generator, h: int = 44, w: int = 36) -> np.ndarray:
    """A smooth colour gradient plus noise: JPEG-like content, different for every call."""
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx * 255 / w, yy * 255 / h, (xx + yy) * 127 / (h + w)], -1) + rng.integers(0, 256, 3)
    return ((base + rng.normal(0, 12, base.shape)) % 256).astype(np.uint8)


def write_image(path: Path, kind: str, rng: np.random.Generator) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    px = _pixels(rng)
    if path.name == "progressive.jpg":
        Image.fromarray(px).save(path, "JPEG", quality=85, progressive=True)
    elif kind == "jpeg" and path.parent.name == "grey":
        Image.fromarray(px[..., 0]).save(path, "JPEG", quality=90)
    elif kind == "jpeg":
        Image.fromarray(px).save(path, "JPEG", quality=90)
    elif path.name == "alpha.png":
        alpha = np.linspace(0, 255, px.shape[0] * px.shape[1]).reshape(px.shape[:2]).astype(np.uint8)
        Image.fromarray(np.dstack([px, alpha])).save(path)  # RGBA
    elif path.name == "palette.png":
        Image.fromarray(px).quantize(16).save(path)
    elif path.name == "deep16.png":
        Image.fromarray(px[..., 0].astype(np.uint16) * 257 + 3).save(path)  # 16-bit greyscale
    elif path.suffix == ".webp":
        Image.fromarray(px).save(path, "WEBP", quality=80)
    elif path.name == "rotated.jpg":  # a phone photo: stored sideways, EXIF says "rotate 90° clockwise"
        exif = Image.Exif()
        exif[0x0112] = 6
        Image.fromarray(px).save(path, "JPEG", quality=90, exif=exif.tobytes())
    elif path.name == "cmyk.jpg":
        Image.fromarray(px).convert("CMYK").save(path, "JPEG", quality=90)
    elif kind == "png":
        Image.fromarray(px).save(path)
    elif path.name == "corrupt.jpg":
        buf = io.BytesIO()
        Image.fromarray(px).save(buf, "JPEG", quality=90)
        path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    elif path.name == "fake.png":
        path.write_bytes(b"<html>404 Not Found</html>")
    elif path.name == "gone.jpg":
        path.symlink_to(path.parent / "never-there.jpg")  # dangling: listed, unreadable


def write_folder(root: Path, files: dict[str, str], seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for rel, kind in files.items():
        write_image(root / rel, kind, rng)
    for rel in IGNORED:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        write_image(root / rel, "jpeg", rng) if rel.endswith(".jpg") else (root / rel).write_text("not an image")
    return root


def expected_pixels(path: Path) -> np.ndarray:
    """What a re-encoded image must decode to: PIL's upright RGB conversion (16-bit scaled to 8)."""
    with Image.open(path) as im:
        if im.mode.startswith("I;16"):
            return np.repeat((np.asarray(im).astype(np.uint16) >> 8).astype(np.uint8)[..., None], 3, -1)
        return np.asarray(ImageOps.exif_transpose(im).convert("RGB"))


def stored(out: Path) -> dict[str, tuple[str, bytes]]:
    """Key → (split, KEY.jpg bytes) of every sample in preshard's output."""
    m = json.loads((out / "manifest.json").read_text())
    return {k: (s, data) for s in m["splits"] for k, data in read_members(read_split(out, s), "jpg").items()}


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err[len("error: "):-1]


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return write_folder(tmp_path_factory.mktemp("faces") / "src", FOLDER)


@pytest.fixture(scope="module")
def out(folder, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("images_shards") / "out"
    assert main(["--images", str(folder), "--out", str(out), "--max-samples", "4", *ARGS]) == 0
    return out


# ----------------------------------------------------------------------------------------------
# what is stored: splits, keys, bytes, pixels, skipped files, manifest
# ----------------------------------------------------------------------------------------------

def test_every_valid_image_is_stored_once_in_its_hash_split(folder, out):
    m = json.loads((out / "manifest.json").read_text())
    keys = make_keys(sorted(FOLDER))
    got = stored(out)
    valid = {rel for rel, kind in FOLDER.items() if kind != "bad"}
    assert sorted(got) == sorted(keys[rel] for rel in valid)  # hidden files, .txt, .md, .bak ignored
    assert {keys[rel]: split_of(rel, VAL, TEST) for rel in valid} == {k: s for k, (s, _) in got.items()}
    assert sum(v["count"] for v in m["splits"].values()) == len(valid)
    assert all(m["splits"][s]["count"] > 0 for s in SPLITS)  # the fixture's names fill every split
    assert m["source"]["kind"] == "images" and m["source"]["listed"] == len(FOLDER)
    assert m["options"] == {"shard_bytes": 100_000_000, "max_samples_per_shard": 4, "seed": 0, "val": VAL, "test": TEST}
    assert m["attributes"] is None and m["extensions"] == ["jpg"]
    assert read_attributes(out, "train", required=False) is None  # what `python -m model attributes` checks
    with pytest.raises(DataError, match="carry no attributes"):
        read_attributes(out, "val")
    assert m["splits"]["train"]["shards"][0]["path"] == "train/images-train-000000.tar"


def test_keys_are_unique_safe_and_derived_from_the_path(out):
    keys = make_keys(sorted(FOLDER))
    assert len(set(keys.values())) == len(keys)
    assert all(re.fullmatch(r"[A-Za-z0-9_-]{1,%d}" % KEY_MAX, k) for k in keys.values())
    assert keys["people/alice/01.jpg"] == "people_alice_01"
    assert keys["people/bob/img 1.JPG"] == "people_bob_img_1"
    assert keys["people/bob/photo.v2.jpeg"] == "people_bob_photo_v2"
    assert keys["f.jpg/inside.jpg"] == "f_jpg_inside"
    # k/a.b.jpg and k/a_b.png would both be k_a_b: each gets 8 hex digits of its path's sha1.
    assert all(re.fullmatch(r"k_a_b_[0-9a-f]{8}", keys[rel]) for rel in ("k/a.b.jpg", "k/a_b.png"))
    long = {"d/" + "x" * 200 + ".jpg", "d/" + "x" * 199 + "y.jpg"}
    assert [len(k) for k in make_keys(sorted(long)).values()] == [KEY_MAX, KEY_MAX]
    assert len(set(make_keys(sorted(long)).values())) == 2
    # The key does not depend on which other files exist (no collision involved).
    assert make_keys(["people/alice/01.jpg"]) == {"people/alice/01.jpg": "people_alice_01"}
    # Shards hold keys sorted within val/test; train is the sorted list (bad files included) shuffled with the seed.
    bad = {keys[rel] for rel, kind in FOLDER.items() if kind == "bad"}
    for split in SPLITS:
        order = list(read_members(read_split(out, split), "jpg"))
        expect = sorted(k for rel, k in keys.items() if split_of(rel, VAL, TEST) == split)
        if split == "train":
            random.Random(0).shuffle(expect)
        assert order == [k for k in expect if k not in bad]


def test_jpegs_are_stored_unchanged_and_the_rest_as_png_of_the_same_pixels(folder, out):
    keys = make_keys(sorted(FOLDER))
    got = stored(out)
    for rel, kind in FOLDER.items():
        if kind == "jpeg":
            assert got[keys[rel]][1] == (folder / rel).read_bytes(), rel
        elif kind == "png":
            data = got[keys[rel]][1]
            assert data.startswith(b"\x89PNG\r\n\x1a\n"), rel
            with Image.open(io.BytesIO(data)) as im:
                assert im.mode == "RGB" and "exif" not in im.info
                np.testing.assert_array_equal(np.asarray(im), expected_pixels(folder / rel), err_msg=rel)
    with Image.open(io.BytesIO(got[keys["r/rotated.jpg"]][1])) as im:
        assert im.size == (44, 36)  # upright: the 36×44 original turned by its EXIF tag
    # python -m model reads the same photo from its file as the shards hold it: upright
    from pipeline.images import read_image_file
    from pipeline.transforms import decode_crop_resize

    np.testing.assert_array_equal(read_image_file(folder / "r/rotated.jpg", crop=None, size=32),
                                  decode_crop_resize(got[keys["r/rotated.jpg"]][1], None, 32))


def test_bad_files_are_skipped_and_listed(folder, out):
    m = json.loads((out / "manifest.json").read_text())
    keys = make_keys(sorted(FOLDER))
    reasons = {s["file"]: s["reason"] for s in m["skipped"]}
    assert sorted(reasons) == sorted(rel for rel, kind in FOLDER.items() if kind == "bad")
    assert reasons["bad/corrupt.jpg"].startswith("truncated JPEG")
    assert reasons["bad/fake.png"] == "not an image (starts with b'<html>40')"
    assert reasons["bad/gone.jpg"].startswith("unreadable: FileNotFoundError")
    for s in m["skipped"]:
        assert s["key"] == keys[s["file"]] and s["split"] == split_of(s["file"], VAL, TEST)
    assert prepare_image(b"") == (None, "empty file (0 bytes)")
    # Spawned validation workers get the store and prepare_image pickled.
    task = pickle.loads(pickle.dumps(functools.partial(check_chunk, FolderStore(folder), prepare=prepare_image)))
    assert task([(0, str(folder / "eve.jpg"))]) == [(0, (folder / "eve.jpg").read_bytes(), None)]


# ----------------------------------------------------------------------------------------------
# the same loaders read it
# ----------------------------------------------------------------------------------------------

def load_split(out: Path, split: str, backend: str) -> dict[str, np.ndarray]:
    from pipeline import make_loader

    loader = make_loader(out, split, 4, backend=backend, device="cpu", with_keys=True, shuffle=False,
                         drop_last=False, num_threads=0 if backend == "webdataset" else 1)
    images: dict[str, np.ndarray] = {}
    for batch, keys in loader:
        assert batch.shape[1:] == (3, 64, 64) and 0 <= batch.min() and batch.max() <= 1
        for key, image in zip(keys, batch.numpy()):
            assert key not in images
            images[key] = image
    return images


def test_make_loader_reads_every_split_with_both_backends_alike(out):
    pytest.importorskip("nvidia.dali")
    got = stored(out)
    for split in SPLITS:
        want = sorted(k for k, (s, _) in got.items() if s == split)
        wds, dali = load_split(out, split, "webdataset"), load_split(out, split, "dali-cpu")
        assert sorted(wds) == sorted(dali) == want
        for key in want:  # same pixels up to resampling rounding: no rotated, CMYK-shifted or grey-mangled image
            assert np.abs(wds[key] - dali[key]).mean() < 3 / 255, (split, key)


# ----------------------------------------------------------------------------------------------
# splits stay put as the folder grows; reruns
# ----------------------------------------------------------------------------------------------

def test_old_files_keep_split_and_key_when_files_are_added(folder, out, tmp_path, capsys):
    grown = tmp_path / "grown"
    shutil.copytree(folder, grown, symlinks=True)
    more = {f"new/batch/{i:02d}.jpg": "jpeg" for i in range(8)} | {"people/alice/00.jpg": "jpeg", "a.png": "png",
                                                                  "caf\udce9.jpg": "jpeg",  # a Latin-1 name, not UTF-8
                                                                  "bad/\udce9t\udce9/corrupt.jpg": "bad"}
    write_folder(grown, more, seed=1)
    m = preshard(grown, tmp_path / "out2", kind="images", val=VAL, test=TEST, workers=1, progress=False)
    before, after = stored(out), stored(tmp_path / "out2")
    assert {k: s for k, (s, _) in before.items()} == {k: after[k][0] for k in before}
    assert len(after) == len(before) + len(more) - 1 and "caf_" in after
    assert sum(v["count"] for v in m["splits"].values()) == len(after)
    # The summary lists the skipped files, a name that is not UTF-8 too.
    assert main(["--images", str(grown), "--out", str(tmp_path / "out3"), *ARGS]) == 0
    assert "skipped 4 bad image(s)" in capsys.readouterr().out
    # Rerunning the finished run is a no-op; the grown folder into the old output is refused.
    assert main(["--images", str(folder), "--out", str(out), "--max-samples", "4", *ARGS]) == 0
    assert "nothing to do" in capsys.readouterr().out
    assert main(["--images", str(grown), "--out", str(out), "--max-samples", "4", *ARGS]) == 2
    assert one_error_line(capsys) == (f"{out} already holds shards from a different source or options; "
                                      "pick another --out or delete that directory")
    assert open_image_folder(folder, VAL, TEST).entries == open_image_folder(folder, VAL, TEST).entries


# ----------------------------------------------------------------------------------------------
# bad input: one line, exit code 2
# ----------------------------------------------------------------------------------------------

def test_bad_input_gives_one_line_and_exit_code_2(folder, tmp_path, capsys):
    outs = iter(range(100))
    run = lambda *args: main(["--out", str(tmp_path / f"o{next(outs)}"), "--workers", "1", *args])  # noqa: E731
    assert run("--images", str(tmp_path / "nowhere")) == 2
    assert one_error_line(capsys) == f"image folder {tmp_path / 'nowhere'} does not exist"
    (tmp_path / "file.jpg").write_bytes(b"x")
    assert run("--images", str(tmp_path / "file.jpg")) == 2
    assert one_error_line(capsys) == (f"{tmp_path / 'file.jpg'} is not a folder; "
                                      "--images takes a folder of JPEG/PNG/WebP images")
    empty = tmp_path / "empty"
    (empty / ".hidden").mkdir(parents=True)
    shutil.copy(folder / "eve.jpg", empty / ".hidden" / "eve.jpg")
    (empty / "notes.txt").write_text("no faces here")
    assert run("--images", str(empty)) == 2
    assert one_error_line(capsys) == (f"no image (.jpg .jpeg .png .webp) under {empty}; "
                                      "hidden files and folders are skipped")
    for args, message in [(["--val", "1.5"], "--val must be a fraction in [0, 1), got 1.5"),
                          (["--test", "-0.1"], "--test must be a fraction in [0, 1), got -0.1"),
                          (["--val", "nan"], "--val must be a fraction in [0, 1), got nan"),
                          (["--val", "0.6", "--test", "0.4"],
                           "--val + --test must be below 1 so that train keeps some images, got 0.6 + 0.4")]:
        assert run("--images", str(folder), *args) == 2
        assert one_error_line(capsys) == message
    assert run("--celeba", str(folder), "--val", "0.1") == 2
    assert one_error_line(capsys) == ("--val and --test apply to --images only (CelebA's list_eval_partition.txt "
                                      "decides its splits)")
    bad_only = tmp_path / "bad_only"
    write_folder(bad_only, {"bad/corrupt.jpg": "bad"})
    assert run("--images", str(bad_only)) == 2
    assert one_error_line(capsys).startswith(f"no valid image in {bad_only}: all 1 listed images were skipped "
                                             "(e.g. bad_corrupt: truncated JPEG")
    assert run("--images", str(folder), "--on-bad", "error") == 2
    assert re.fullmatch(r"bad image bad/(corrupt\.jpg|fake\.png|gone\.jpg) \(key bad_\w+, \w+\) in .+; "
                        r"replace or remove it, or rerun with --on-bad skip", one_error_line(capsys))
    assert not list(tmp_path.glob("o*/manifest.json"))
    for args in (["--images", str(folder), "--celeba", str(folder)], []):  # exactly one source: argparse's usage error
        with pytest.raises(SystemExit) as stop:
            run(*args)
        assert stop.value.code == 2
        assert re.search(r"not allowed with argument|one of the arguments --celeba --images is required",
                         capsys.readouterr().err)
