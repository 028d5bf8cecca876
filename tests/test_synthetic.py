"""The synthetic CelebA tree: layout, file formats, determinism, attribute sanity, CLI."""
from __future__ import annotations

import io
import random
import zipfile

import numpy as np
import pytest
from PIL import Image

from pipeline.synthetic import (ATTRIBUTES, OFFICIAL_PARTITION, main, partition_sizes, render_image,
                                sample_attributes, write_synthetic_celeba)


def test_partition_sizes_keep_official_proportions():
    assert partition_sizes(sum(OFFICIAL_PARTITION)) == OFFICIAL_PARTITION
    assert partition_sizes(1000) == (803, 98, 99)
    for n in (3, 4, 7, 240):
        train, val, test = partition_sizes(n)
        assert train + val + test == n and min(train, val, test) >= 1
    assert partition_sizes(1) == (1, 0, 0)


def test_tree_layout_and_file_formats(celeba_tree):
    jpgs = sorted((celeba_tree / "img_align_celeba").iterdir())
    TREE_IMAGES = len(jpgs)
    assert TREE_IMAGES >= 3
    assert [p.name for p in jpgs] == [f"{i:06d}.jpg" for i in range(1, TREE_IMAGES + 1)]
    for p in jpgs[:5]:
        with Image.open(p) as im:
            assert (im.format, im.mode, im.size) == ("JPEG", "RGB", (178, 218))

    # list_eval_partition.txt: contiguous ids, train first, then val, then test.
    rows = [line.split() for line in (celeba_tree / "list_eval_partition.txt").read_text().splitlines()]
    assert [r[0] for r in rows] == [p.name for p in jpgs]
    parts = [int(r[1]) for r in rows]
    assert parts == sorted(parts)
    assert tuple(parts.count(k) for k in (0, 1, 2)) == partition_sizes(TREE_IMAGES)

    # list_attr_celeba.txt: count line, the 40 official names, then one ±1 row per image.
    lines = (celeba_tree / "list_attr_celeba.txt").read_text().splitlines()
    assert int(lines[0]) == TREE_IMAGES
    assert tuple(lines[1].split()) == ATTRIBUTES and len(ATTRIBUTES) == 40
    table = {}
    for line in lines[2:]:
        name, *vals = line.split()
        assert len(vals) == 40 and set(vals) <= {"1", "-1"}
        table[name] = dict(zip(ATTRIBUTES, (v == "1" for v in vals)))
    assert list(table) == [p.name for p in jpgs]
    # What was drawn is self-consistent.
    for a in table.values():
        assert sum(a[h] for h in ("Black_Hair", "Blond_Hair", "Brown_Hair", "Gray_Hair")) <= 1
        if not a["Male"]:
            assert a["No_Beard"] and not (a["Goatee"] or a["Mustache"] or a["5_o_Clock_Shadow"])
        if a["Bald"]:
            assert not a["Bangs"]


def test_same_bytes_whatever_the_worker_count_and_layout(tmp_path):
    one = write_synthetic_celeba(tmp_path / "one", n=40, seed=3, workers=1)
    two = write_synthetic_celeba(tmp_path / "two", n=40, seed=3, workers=2)
    zipped = write_synthetic_celeba(tmp_path / "zip", n=40, seed=3, workers=2, as_zip=True)
    for name in ("list_eval_partition.txt", "list_attr_celeba.txt"):
        assert (one / name).read_bytes() == (two / name).read_bytes() == (zipped / name).read_bytes()
    assert not (zipped / "img_align_celeba").exists()
    with zipfile.ZipFile(zipped / "img_align_celeba.zip") as zf:
        names = zf.namelist()
        assert names[0] == "img_align_celeba/"
        assert names[1:] == [f"img_align_celeba/{i:06d}.jpg" for i in range(1, 41)]
        for i in range(1, 41):
            a = (one / "img_align_celeba" / f"{i:06d}.jpg").read_bytes()
            assert a == (two / "img_align_celeba" / f"{i:06d}.jpg").read_bytes()
            assert a == zf.read(f"img_align_celeba/{i:06d}.jpg")
    # A second zip run is byte-identical too (fixed member dates).
    again = write_synthetic_celeba(tmp_path / "zip2", n=40, seed=3, workers=1, as_zip=True)
    assert (again / "img_align_celeba.zip").read_bytes() == (zipped / "img_align_celeba.zip").read_bytes()


def test_faces_vary_and_depend_on_the_seed():
    imgs = [np.asarray(Image.open(io.BytesIO(render_image(0, i)[0])), dtype=np.float32) for i in range(1, 17)]
    stack = np.stack(imgs)
    # Different images differ a lot (pose, colours, background), not just by JPEG noise.
    assert np.abs(stack[1:] - stack[:-1]).mean() > 20
    # Structure: a face in the middle, so the centre differs from the corners on average.
    centre = stack[:, 90:150, 60:118].mean(axis=(1, 2))
    corners = stack[:, :20, :20].mean(axis=(1, 2))
    assert np.abs(centre - corners).sum(axis=1).mean() > 30
    assert render_image(0, 1)[0] != render_image(1, 1)[0]
    assert render_image(5, 7) == render_image(5, 7)


def test_attribute_frequencies_are_celeba_like():
    rng = random.Random(0)
    draws = [sample_attributes(rng) for _ in range(3000)]
    freq = {name: sum(d[name] for d in draws) / len(draws) for name in ATTRIBUTES}
    assert 0.37 < freq["Male"] < 0.47
    assert 0.43 < freq["Smiling"] < 0.53
    assert 0.72 < freq["Young"] < 0.82
    assert 0.03 < freq["Eyeglasses"] < 0.12
    assert all(0 < f < 1 for name, f in freq.items() if name != "No_Beard")


def test_cli_writes_a_tree_and_rejects_bad_input(tmp_path, capsys):
    assert main(["--out", str(tmp_path / "cli"), "--n", "6", "--seed", "2", "--zip"]) == 0
    assert (tmp_path / "cli" / "img_align_celeba.zip").is_file()
    assert "images/s" in capsys.readouterr().out
    assert main(["--out", str(tmp_path / "bad"), "--n", "0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and err.count("error:") == 1 and "Traceback" not in err
    with pytest.raises(SystemExit):
        main(["--n", "3"])  # argparse: --out is required
