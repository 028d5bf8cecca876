"""What the preshard tests share: the source trees they shard, how to read a tree and the shards back.

``small_trees`` is session-scoped and built once: pytest gives each test module that imports a
fixture its own copy of it, so the trees are kept here, not in the fixture.
"""
from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from pipeline.synthetic import write_synthetic_celeba

SPLIT_CODE = {"0": "train", "1": "val", "2": "test"}
REPO = Path(__file__).resolve().parent.parent


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


_SMALL_TREES: dict[Path, tuple[Path, Path]] = {}


@pytest.fixture(scope="session")
def small_trees(tmp_path_factory):
    """The same 60 faces as a folder tree and as a zip tree (tests that change one work on a copy_tree)."""
    base = tmp_path_factory.getbasetemp()
    if base not in _SMALL_TREES:
        root = tmp_path_factory.mktemp("small")
        _SMALL_TREES[base] = (write_synthetic_celeba(root / "folder", n=60, seed=11, workers=1),
                              write_synthetic_celeba(root / "zip", n=60, seed=11, workers=1, as_zip=True))
    return _SMALL_TREES[base]


def copy_tree(tree: Path, dst: Path) -> Path:
    shutil.copytree(tree, dst)
    return dst
