"""train.py's default data (model/training/data.py ``synthetic_shards``): the synthetic set is reused only while
it holds what the run asks for (image count, seed, generator version), rebuilt with one notice line otherwise,
an older version's set (no record) is recognised and rebuilt, anything else is refused untouched, and an
interrupted rebuild is finished by the next call. Sets of 8–9 faces: a build takes about half a second.
"""
from __future__ import annotations

import json
import shutil

import pytest

from model.training import data
from model.training.data import synthetic_shards
from pipeline.errors import DataError
from pipeline.synthetic import GENERATOR_VERSION, RECORD, render_image


def _build(tmp_path, n=8, seed=0):
    return synthetic_shards(tmp_path / "synthetic", tmp_path / "shards", n, seed=seed)


def _manifest(tmp_path) -> dict:
    return json.loads((tmp_path / "shards" / "manifest.json").read_text())


def _refuse_to_build(monkeypatch) -> None:
    import pipeline.preshard
    import pipeline.synthetic

    monkeypatch.setattr(pipeline.synthetic, "write_synthetic_celeba", lambda *a, **k: pytest.fail("drew again"))
    monkeypatch.setattr(pipeline.preshard, "preshard", lambda *a, **k: pytest.fail("presharded again"))


def test_reused_while_it_matches_and_rebuilt_with_a_notice_when_not(tmp_path, capsys, monkeypatch):
    _build(tmp_path)
    assert _manifest(tmp_path)["source"]["listed"] == 8
    record = json.loads((tmp_path / "shards" / RECORD).read_text())
    assert record == {"images": 8, "seed": 0, "generator": GENERATOR_VERSION,
                      "source": str((tmp_path / "synthetic").resolve())}
    capsys.readouterr()

    with monkeypatch.context() as m:
        _refuse_to_build(m)
        _build(tmp_path)  # the same set: nothing is drawn or sharded
    assert "notice" not in capsys.readouterr().err

    _build(tmp_path, n=9, seed=1)  # --synthetic_images 9 --seed 1 are not ignored
    err = capsys.readouterr().err
    assert err.count("notice:") == 1 and "holds 8 faces (seed 0, generator version" in err, err
    assert "asks for 9 faces (seed 1," in err
    assert _manifest(tmp_path)["source"]["listed"] == 9
    first = (tmp_path / "synthetic" / "img_align_celeba" / "000001.jpg").read_bytes()
    assert first == render_image(1, 1)[0]


def test_an_older_versions_set_is_rebuilt_and_anything_else_refused_untouched(tmp_path, capsys):
    _build(tmp_path)
    for folder in ("synthetic", "shards"):  # what older checkouts left: the same files, no record
        (tmp_path / folder / RECORD).unlink()
    capsys.readouterr()
    _build(tmp_path)
    err = capsys.readouterr().err
    assert err.count("notice:") == 1 and "made by an older version of this project" in err, err
    assert json.loads((tmp_path / "synthetic" / RECORD).read_text())["generator"] == GENERATOR_VERSION

    mine = tmp_path / "mine"  # somebody's own folder where the default data would go
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(DataError, match=f"{mine} holds files that the synthetic default data did not make.*"
                                        "move it away, or pass --data"):
        synthetic_shards(mine, tmp_path / "shards2", 8)
    assert (mine / "notes.txt").read_text() == "keep me" and not (tmp_path / "shards2").exists()

    shards = tmp_path / "their-shards"  # shards made from another source (their manifest names it)
    shutil.copytree(tmp_path / "shards", shards)
    (shards / RECORD).unlink()
    manifest = json.loads((shards / "manifest.json").read_text())
    manifest["source"]["path"] = "/data/celeba"
    (shards / "manifest.json").write_text(json.dumps(manifest))
    before = sorted(p.relative_to(shards) for p in shards.rglob("*"))
    with pytest.raises(DataError, match=f"{shards} holds files"):
        synthetic_shards(tmp_path / "synthetic", shards, 9)  # the tree would need a rebuild: refused first
    assert sorted(p.relative_to(shards) for p in shards.rglob("*")) == before
    assert json.loads((tmp_path / "synthetic" / RECORD).read_text())["images"] == 8  # the tree untouched too


def test_an_interrupted_rebuild_is_finished_by_the_next_call(tmp_path, monkeypatch):
    import pipeline.preshard

    _build(tmp_path)
    real_rmtree = shutil.rmtree

    def interrupted(path, *args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(data.shutil, "rmtree", interrupted)  # Ctrl-C while the old set is being removed
    with pytest.raises(KeyboardInterrupt):
        _build(tmp_path, n=9)
    assert json.loads((tmp_path / "synthetic" / RECORD).read_text()) == {"clearing": True}  # ours, matching nothing
    monkeypatch.setattr(data.shutil, "rmtree", real_rmtree)
    real_preshard = pipeline.preshard.preshard
    monkeypatch.setattr(pipeline.preshard, "preshard", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):  # the tree is redrawn, then Ctrl-C before the shards are done
        _build(tmp_path, n=9)
    assert not (tmp_path / "shards" / "manifest.json").exists()
    monkeypatch.setattr(pipeline.preshard, "preshard", real_preshard)
    with monkeypatch.context() as m:  # the tree is complete now: only presharding is left
        import pipeline.synthetic

        m.setattr(pipeline.synthetic, "write_synthetic_celeba", lambda *a, **k: pytest.fail("drew again"))
        _build(tmp_path, n=9)
    assert _manifest(tmp_path)["source"]["listed"] == 9
    assert sorted(p.name for p in (tmp_path / "synthetic" / "img_align_celeba").iterdir()) == [
        f"{i:06d}.jpg" for i in range(1, 10)]
