"""model.metrics.fid without pytorch-fid: the PNG folders, and the wrapper around a faked scorer.

pytorch-fid is optional (and needs its Inception weights), so the scorer is replaced in sys.modules:
by None (not importable), by a fake that records its call, and by one that fails.
"""
from __future__ import annotations

import sys
import types

import numpy as np
import pytest
import torch
from PIL import Image

from model.metrics.fid import fid_available, fid_between, write_png_folder


def _uint8_images(n: int, h: int = 9, w: int = 7, seed: int = 0) -> torch.Tensor:
    """n×3×H×W uint8 values, as floats in [0, 1] (exactly k/255), with 0 and 255 present."""
    u8 = torch.randint(0, 256, (n, 3, h, w), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)
    u8[0, 0, 0, 0], u8[0, 0, 0, 1] = 0, 255
    return u8


def test_write_png_folder_round_trips_the_pixels(tmp_path):
    u8 = _uint8_images(5)
    folder = write_png_folder(u8.float() / 255, tmp_path / "real")
    assert folder == tmp_path / "real"
    files = sorted(folder.glob("*.png"))
    assert [f.name for f in files] == [f"{i:06d}.png" for i in range(5)]
    for f, want in zip(files, u8):
        with Image.open(f) as im:
            assert im.mode == "RGB" and im.size == (7, 9)
            np.testing.assert_array_equal(np.asarray(im), want.permute(1, 2, 0).numpy())


def test_write_png_folder_rounds_and_clamps(tmp_path):
    x = torch.tensor([-0.5, 0.0, 0.2, 1.0 / 255 * 0.49, 1.0 / 255 * 0.51, 1.0, 1.7]).view(1, 1, 1, 7).expand(1, 3, 2, 7)
    write_png_folder(x, tmp_path)
    with Image.open(tmp_path / "000000.png") as im:
        got = np.asarray(im)[0, :, 0]
    np.testing.assert_array_equal(got, [0, 0, 51, 0, 1, 255, 255])


def test_rewriting_with_fewer_images_leaves_no_stale_files(tmp_path):
    write_png_folder(_uint8_images(6).float() / 255, tmp_path, prefix="s")
    (tmp_path / "notes.txt").write_text("kept")
    (tmp_path / "other.png").write_bytes(b"")  # another prefix's file is not ours to delete
    second = _uint8_images(2, seed=1)
    write_png_folder(second.float() / 255, tmp_path, prefix="s")
    assert sorted(f.name for f in tmp_path.glob("s*.png")) == ["s000000.png", "s000001.png"]
    assert (tmp_path / "notes.txt").exists() and (tmp_path / "other.png").exists()
    with Image.open(tmp_path / "s000001.png") as im:
        np.testing.assert_array_equal(np.asarray(im), second[1].permute(1, 2, 0).numpy())


@pytest.fixture
def folders(tmp_path):
    real = write_png_folder(_uint8_images(4).float() / 255, tmp_path / "real")
    fake = write_png_folder(_uint8_images(3, seed=1).float() / 255, tmp_path / "fake")
    return real, fake


def _install_fake(monkeypatch, calculate) -> None:
    package = types.ModuleType("pytorch_fid")
    scorer = types.ModuleType("pytorch_fid.fid_score")
    scorer.calculate_fid_given_paths = calculate
    package.fid_score = scorer
    monkeypatch.setitem(sys.modules, "pytorch_fid", package)
    monkeypatch.setitem(sys.modules, "pytorch_fid.fid_score", scorer)


def test_missing_pytorch_fid_gives_a_reason(monkeypatch, folders):
    monkeypatch.setitem(sys.modules, "pytorch_fid", None)
    monkeypatch.setitem(sys.modules, "pytorch_fid.fid_score", None)
    reason = fid_available()
    assert isinstance(reason, str) and "pytorch-fid" in reason and "pip install pytorch-fid" in reason
    assert "ModuleNotFoundError" in reason or "ImportError" in reason
    assert fid_between(*folders, device=torch.device("cpu")) == (None, reason)


def test_fid_between_calls_pytorch_fid(monkeypatch, folders):
    calls = []

    def calculate(paths, **kwargs):
        calls.append((paths, kwargs))
        return np.float64(12.5)

    _install_fake(monkeypatch, calculate)
    assert fid_available() is None
    real, fake = folders
    score, reason = fid_between(real, fake, torch.device("cpu"))
    assert (score, reason) == (12.5, None) and type(score) is float
    assert len(calls) == 1
    paths, kwargs = calls[0]
    assert paths == [str(real), str(fake)]
    assert kwargs["dims"] == 2048 and kwargs["device"] == "cpu" and kwargs["num_workers"] == 0
    assert kwargs["batch_size"] == 3  # no larger than the smaller folder
    fid_between(real, fake, torch.device("cpu"), batch_size=2)
    assert calls[1][1]["batch_size"] == 2


def test_fid_between_reports_a_failing_scorer(monkeypatch, folders):
    def calculate(paths, **kwargs):
        raise RuntimeError("could not download pt_inception-2015-12-05\nsecond line")

    _install_fake(monkeypatch, calculate)
    score, reason = fid_between(*folders, device=torch.device("cpu"))
    assert score is None
    assert "RuntimeError" in reason and "pt_inception-2015-12-05" in reason and "second line" not in reason
