"""The CelebA-layout tree: rendering one image, the partition sizes, writing the images (folder
or zip) and the two list files."""
from __future__ import annotations

import io
import os
import random
import zipfile
from functools import partial
from pathlib import Path
from typing import Iterator, Sequence

from ..errors import UserError
from ..parallel import ProgressBar, ordered_map, usable_cores
from .attributes import ATTRIBUTES, sample_attributes
from .face import draw_face

# The official partition sizes (train, val, test); a tree of n images keeps these proportions.
OFFICIAL_PARTITION = (162_770, 19_867, 19_962)

IMAGE_FOLDER = "img_align_celeba"

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
    rng = random.Random(f"celeba-synthetic:{seed}:{index}")
    attrs = sample_attributes(rng)
    img = draw_face(rng, attrs)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality or rng.randint(86, 95), subsampling=2)
    return buf.getvalue(), attrs


def write_synthetic_celeba(out_dir: str | os.PathLike, n: int, seed: int = 0, *, as_zip: bool = False,
                           workers: int | None = None, progress: bool = False) -> Path:
    """Write a CelebA-layout tree of ``n`` synthetic faces into ``out_dir`` and return it.

    Layout: ``img_align_celeba/000001.jpg…`` (or ``img_align_celeba.zip`` holding that folder
    when ``as_zip``), ``list_eval_partition.txt`` (official proportions, train ids first, then
    val, then test) and ``list_attr_celeba.txt`` (the 40 official attributes, 1/-1). The bytes
    depend only on ``n`` and ``seed``, never on ``workers``.
    """
    if not isinstance(n, int) or n < 1:
        raise UserError(f"--n must be a positive number of images, got {n!r}")
    if n > 999_999:
        raise UserError(f"--n {n} is too large: CelebA file names have six digits (at most 999999 images)")
    workers = max(1, int(workers or usable_cores()))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if as_zip:
        rows = _write_zip(out / f"{IMAGE_FOLDER}.zip", seed, n, workers, progress)
    else:
        rows = _write_folder(out / IMAGE_FOLDER, seed, n, workers, progress)
    _write_partition_list(out / "list_eval_partition.txt", n)
    _write_attribute_list(out / "list_attr_celeba.txt", rows)
    return out


def _write_folder(folder: Path, seed: int, n: int, workers: int, progress: bool) -> dict[int, list[int]]:
    """The images as files in ``folder`` (the workers write them); returns the attribute rows."""
    folder.mkdir(exist_ok=True)
    return {i: row for i, _, row in _render_all(seed, n, workers, str(folder), progress)}


def _write_zip(path: Path, seed: int, n: int, workers: int, progress: bool) -> dict[int, list[int]]:
    """The images in an uncompressed zip at ``path`` (written as ``.tmp``, then renamed);
    returns the attribute rows."""
    rows: dict[int, list[int]] = {}
    tmp = path.with_name(path.name + ".tmp")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as zf:
        zf.writestr(_zip_info(f"{IMAGE_FOLDER}/"), b"")
        for i, data, row in _render_all(seed, n, workers, None, progress):
            rows[i] = row
            zf.writestr(_zip_info(f"{IMAGE_FOLDER}/{i:06d}.jpg"), data)
    os.replace(tmp, path)
    return rows


def _render_all(seed: int, n: int, workers: int, folder: str | None, progress: bool) -> Iterator[_Rendered]:
    """Images 1..n in order, rendered in chunks by ``workers`` processes, with a progress bar."""
    chunk = max(8, min(256, n // (workers * 8) or 8))
    chunks = [list(range(start, min(n, start + chunk - 1) + 1)) for start in range(1, n + 1, chunk)]
    render = partial(_render_chunk, seed, folder=folder)
    with ProgressBar(progress, "drawing faces", total=n) as bar:
        for indices, results in ordered_map(render, chunks, workers, caller="write_synthetic_celeba()"):
            yield from results
            bar.advance(len(indices))


def _render_chunk(seed: int, indices: Sequence[int], folder: str | None = None) -> list[_Rendered]:
    """Worker: render images; write them into ``folder`` (returning no bytes) or return the bytes."""
    out = []
    for i in indices:
        data, attrs = render_image(seed, i)
        if folder is not None:
            Path(folder, f"{i:06d}.jpg").write_bytes(data)
            data = None
        out.append((i, data, [1 if attrs[name] else -1 for name in ATTRIBUTES]))
    return out


def _zip_info(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))  # fixed: byte-identical zips
    info.external_attr = (0o40755 << 16) | 0x10 if name.endswith("/") else 0o644 << 16
    return info


def _write_partition_list(path: Path, n: int) -> None:
    """``000001.jpg 0`` per image: 0 = train, 1 = val, 2 = test, in that order."""
    train, val, _ = partition_sizes(n)
    lines = [f"{i:06d}.jpg {0 if i <= train else 1 if i <= train + val else 2}\n" for i in range(1, n + 1)]
    path.write_text("".join(lines))


def _write_attribute_list(path: Path, rows: dict[int, list[int]]) -> None:
    """CelebA's format: the image count, the attribute names, then one row of right-aligned ±1 per image."""
    n = len(rows)
    lines = [f"{n}\n", " ".join(ATTRIBUTES) + " \n"]
    lines += [f"{i:06d}.jpg" + "".join(f" {v:2d}" for v in rows[i]) + "\n" for i in range(1, n + 1)]
    path.write_text("".join(lines))
