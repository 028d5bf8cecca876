"""The CelebA-layout tree: rendering one image, the partition sizes, writing the images (folder
or zip) and the two list files.

Interrupted (Ctrl-C, SIGTERM, kill -9) the tree never looks complete, and the same call resumes:
``list_eval_partition.txt``, which readers (preshard, train.py's default data) take as the sign of
a finished tree, is removed first and written last, each file atomically (temporary name, then
rename). The tree's record, ``.synthetic.json``, says what it holds (images, seed, the generator's
version, folder or zip) and whether it is complete; a folder rerun with the same record keeps the
images already written (each one complete, being renamed into place) and draws the rest. A zip is
renamed into place when complete, so a rerun starts it again. train.py's default data reads the
record to decide whether a tree can be reused (model/training/data.py).

The record is also what makes a folder the generator's: it writes only into a new or empty folder
or one holding its own record, and refuses anything else (a real CelebA download has the very same
file names) before it touches a file. One run writes a folder at a time (``.synthetic.lock``).
"""
from __future__ import annotations

import io
import json
import os
import random
import zipfile
from functools import partial
from pathlib import Path
from typing import Iterator, Sequence

from ..errors import DataError, UserError, writing_to
from ..lock import lock_name, one_writer
from ..parallel import ProgressBar, ordered_map, usable_cores
from .attributes import ATTRIBUTES, sample_attributes
from .face import draw_face

# The official partition sizes (train, val, test); a tree of n images keeps these proportions.
OFFICIAL_PARTITION = (162_770, 19_867, 19_962)

IMAGE_FOLDER = "img_align_celeba"
PARTITION_LIST = "list_eval_partition.txt"  # written last: its presence means the tree is complete
ATTRIBUTE_LIST = "list_attr_celeba.txt"
RECORD = ".synthetic.json"  # {"images", "seed", "generator", "layout", "complete"}: what the tree holds
LOCK_TOOL = "synthetic"  # its lock file: .synthetic.lock (pipeline/lock.py)
LEGACY_PARTIAL = ".synthetic-partial.json"  # the in-progress marker of older versions (images of an older drawing)
#: The drawing's version. Raise it with every change that alters the images or attributes drawn for a
#: given (n, seed): trees of another version are then redrawn, never mixed or reused (2: the smile, and
#: the first version with a record; trees without one are older).
GENERATOR_VERSION = 2

# (image number, JPEG bytes or None once written to the folder, attribute row of ±1)
_Rendered = tuple[int, bytes | None, list[int]]


def partition_sizes(n: int) -> tuple[int, int, int]:
    """Split n images in CelebA's official proportions; each split gets ≥1 image when n ≥ 3."""
    total = sum(OFFICIAL_PARTITION)
    val = round(n * OFFICIAL_PARTITION[1] / total)
    test = round(n * OFFICIAL_PARTITION[2] / total)
    if n >= 3:
        val, test = max(val, 1), max(test, 1)
    train = n - val - test
    return train, val, test


def render_image(seed: int, index: int, quality: int | None = None) -> tuple[bytes, dict[str, bool]]:
    """The JPEG bytes and attributes of image ``index`` (1-based) of the tree drawn with ``seed``.

    Every image has its own RNG seeded by ``(seed, index)``, so the output is identical whatever
    the worker count; the JPEG quality is its last draw.
    """
    rng = _image_rng(seed, index)
    attrs = sample_attributes(rng)
    img = draw_face(rng, attrs)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality or rng.randint(86, 95), subsampling=2)
    return buf.getvalue(), attrs


def _image_rng(seed: int, index: int) -> random.Random:
    return random.Random(f"celeba-synthetic:{seed}:{index}")


def write_synthetic_celeba(out_dir: str | os.PathLike, n: int, seed: int = 0, *, as_zip: bool = False,
                           workers: int | None = None, progress: bool = False) -> Path:
    """Write a CelebA-layout tree of ``n`` synthetic faces into ``out_dir`` and return it.

    Layout: ``img_align_celeba/000001.jpg…`` (or ``img_align_celeba.zip`` holding that folder
    when ``as_zip``), ``list_eval_partition.txt`` (official proportions, train ids first, then
    val, then test), ``list_attr_celeba.txt`` (the 40 official attributes, 1/-1) and the record
    ``.synthetic.json``. The bytes depend only on ``n``, ``seed`` and :data:`GENERATOR_VERSION`,
    never on ``workers`` or on how often the run was interrupted.
    """
    if not isinstance(n, int) or n < 1:
        raise UserError(f"--n must be a positive number of images, got {n!r}")
    if n > 999_999:
        raise UserError(f"--n {n} is too large: CelebA file names have six digits (at most 999999 images)")
    workers = max(1, int(workers or usable_cores()))
    out = Path(out_dir)
    _refuse_foreign(out)  # before anything is created or removed
    out.mkdir(parents=True, exist_ok=True)
    with one_writer(out, LOCK_TOOL), writing_to(out):
        _refuse_foreign(out)  # what a run that held the lock until now may have left is ours as well
        return _write_tree(out, n, seed, as_zip, workers, progress)


def _write_tree(out: Path, n: int, seed: int, as_zip: bool, workers: int, progress: bool) -> Path:
    (out / PARTITION_LIST).unlink(missing_ok=True)  # from here until the end the tree is unfinished
    state = {"images": n, "seed": seed, "generator": GENERATOR_VERSION, "layout": "zip" if as_zip else "folder"}
    previous = read_record(out)
    resume = previous is not None and {k: previous.get(k) for k in state} == state
    write_record(out, {**state, "complete": False})
    (out / LEGACY_PARTIAL).unlink(missing_ok=True)
    if previous is not None and not resume:  # another set of ours: nothing of it may stay beside this one
        _remove_images(out, keep=0 if as_zip else n)
        if not as_zip:
            (out / f"{IMAGE_FOLDER}.zip").unlink(missing_ok=True)
    if as_zip:
        rows = _write_zip(out / f"{IMAGE_FOLDER}.zip", seed, n, workers, progress)
    else:
        rows = _write_folder(out / IMAGE_FOLDER, seed, n, workers, progress, keep_existing=resume)
    _atomic_write(out / ATTRIBUTE_LIST, _attribute_list(rows).encode())
    _atomic_write(out / PARTITION_LIST, _partition_list(n).encode())
    write_record(out, {**state, "complete": True})  # last
    return out


def _refuse_foreign(out: Path) -> None:
    """DataError unless ``out`` is absent, empty, or the generator's (its record, or an older version's
    in-progress marker): overwriting the lists and images of somebody's own CelebA would lose their data."""
    if not os.path.lexists(out):
        return
    if not out.is_dir():
        raise DataError(f"{out} is a file, not a folder; name a folder for the tree")
    record = read_record(out)
    if (record is not None and ("layout" in record or record.get("clearing"))) or (out / LEGACY_PARTIAL).is_file():
        return
    others = sorted(p.name for p in out.iterdir() if p.name != lock_name(LOCK_TOOL))
    if others:
        shown = ", ".join(others[:3]) + (", …" if len(others) > 3 else "")
        raise DataError(f"{out} holds files the synthetic generator did not write ({shown}; no {RECORD} of its own): "
                        "it writes only into a new or empty folder or one it made; pick another --out")


def read_record(out_dir: str | os.PathLike) -> dict | None:
    """The record ``.synthetic.json`` of a folder (the tree's: see the module docstring; the trainer keeps one
    beside its shards too), or None where there is none or it is unreadable."""
    record = _read_json(Path(out_dir) / RECORD)
    return record if isinstance(record, dict) else None


def write_record(out_dir: str | os.PathLike, record: dict) -> None:
    """Replace a folder's record atomically (temp file, rename)."""
    _atomic_write(Path(out_dir) / RECORD, (json.dumps(record) + "\n").encode())


def _write_folder(folder: Path, seed: int, n: int, workers: int, progress: bool, keep_existing: bool
                  ) -> dict[int, list[int]]:
    """The images as files in ``folder`` (the workers write them); returns the attribute rows.
    ``keep_existing``: images already there are this run's own (same n, seed and generator): keep them."""
    folder.mkdir(exist_ok=True)
    _remove_temps(folder)  # a killed worker's unfinished image
    render = partial(_render_chunk, seed, folder=str(folder), keep_existing=keep_existing)
    try:
        return {i: row for i, _, row in _render_all(render, n, workers, progress)}
    except BaseException:  # Ctrl-C: the pool has stopped (ordered_map waits for it); leave no temp file behind
        _remove_temps(folder)
        raise


def _remove_images(out: Path, keep: int) -> None:
    """Remove the images numbered above ``keep`` from the tree's folder (all of them, and the folder, for 0):
    what a preshard of the new tree would otherwise find beside its lists (it prefers a folder to a zip)."""
    folder = out / IMAGE_FOLDER
    if not folder.is_dir():
        return
    for p in folder.iterdir():
        stem = p.name.removeprefix(".").split(".")[0]
        if not stem.isdigit() or int(stem) > keep:
            p.unlink()
    if keep == 0:
        folder.rmdir()


def _remove_temps(folder: Path) -> None:
    for tmp in folder.glob(".*.tmp"):
        tmp.unlink(missing_ok=True)


def _write_zip(path: Path, seed: int, n: int, workers: int, progress: bool) -> dict[int, list[int]]:
    """The images in an uncompressed zip at ``path`` (written as ``.tmp``, then renamed);
    returns the attribute rows."""
    rows: dict[int, list[int]] = {}
    tmp = path.with_name(path.name + ".tmp")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as zf:
        zf.writestr(_zip_info(f"{IMAGE_FOLDER}/"), b"")
        for i, data, row in _render_all(partial(_render_chunk, seed), n, workers, progress):
            rows[i] = row
            zf.writestr(_zip_info(f"{IMAGE_FOLDER}/{i:06d}.jpg"), data)
    os.replace(tmp, path)
    return rows


def _render_all(render, n: int, workers: int, progress: bool) -> Iterator[_Rendered]:
    """Images 1..n in order, rendered in chunks by ``render`` in ``workers`` processes, with a progress bar."""
    chunk = max(8, min(256, n // (workers * 8) or 8))
    chunks = [list(range(start, min(n, start + chunk - 1) + 1)) for start in range(1, n + 1, chunk)]
    with ProgressBar(progress, "drawing faces", total=n) as bar:
        for indices, results in ordered_map(render, chunks, workers, caller="write_synthetic_celeba()"):
            yield from results
            bar.advance(len(indices))


def _render_chunk(seed: int, indices: Sequence[int], folder: str | None = None, keep_existing: bool = False
                  ) -> list[_Rendered]:
    """Worker: render images; write them into ``folder`` (returning no bytes) or return the bytes.
    With ``keep_existing`` an image already in ``folder`` is kept: only its attributes are drawn
    (they are the first draws of its RNG, so that is cheap and gives the same values)."""
    out = []
    for i in indices:
        path = Path(folder, f"{i:06d}.jpg") if folder is not None else None
        data: bytes | None
        if path is not None and keep_existing and path.is_file():
            data, attrs = None, sample_attributes(_image_rng(seed, i))
        else:
            data, attrs = render_image(seed, i)
            if path is not None:
                _atomic_write(path, data)
                data = None
        out.append((i, data, [1 if attrs[name] else -1 for name in ATTRIBUTES]))
    return out


def _atomic_write(path: Path, data: bytes) -> None:
    """Write under a temporary name, then rename: a file that exists under its name is complete."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except BaseException:  # e.g. the Ctrl-C that reaches every worker of the process group
        tmp.unlink(missing_ok=True)
        raise


def _read_json(path: Path) -> object:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _zip_info(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))  # fixed: byte-identical zips
    info.external_attr = (0o40755 << 16) | 0x10 if name.endswith("/") else 0o644 << 16
    return info


def _partition_list(n: int) -> str:
    """``000001.jpg 0`` per image: 0 = train, 1 = val, 2 = test, in that order."""
    train, val, _ = partition_sizes(n)
    return "".join(f"{i:06d}.jpg {0 if i <= train else 1 if i <= train + val else 2}\n" for i in range(1, n + 1))


def _attribute_list(rows: dict[int, list[int]]) -> str:
    """CelebA's format: the image count, the attribute names, then one row of right-aligned ±1 per image."""
    n = len(rows)
    lines = [f"{n}\n", " ".join(ATTRIBUTES) + " \n"]
    lines += [f"{i:06d}.jpg" + "".join(f" {v:2d}" for v in rows[i]) + "\n" for i in range(1, n + 1)]
    return "".join(lines)
