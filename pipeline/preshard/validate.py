"""JPEG validation: why DALI's decoder would reject an image, checked in a process pool.

DALI aborts the whole pipeline on one undecodable image, so preshard checks every JPEG (a
header/marker check, then a full PIL decode) before it goes into a shard. The work runs in
chunks through :func:`pipeline.parallel.ordered_map`, which keeps the stream in plan order and
its memory bounded; :func:`check_chunk` is module-level so that spawned workers can unpickle it.
"""
from __future__ import annotations

import functools
import io
from typing import Iterator, Sequence

from ..celeba import CelebASource, Entry, FolderStore, ZipStore
from ..parallel import ordered_map

_CHUNK = 64  # images per validation task: large enough to amortise IPC, small enough to stream


def check_jpeg(data: bytes) -> str | None:
    """Why DALI's decoder would fail on ``data``, or None if it is a complete, decodable JPEG."""
    if not data:
        return "empty file (0 bytes)"
    if not data.startswith(b"\xff\xd8\xff"):
        return f"not a JPEG (starts with {data[:8]!r})"
    # Entropy-coded data never holds FF DA / FF D9 (FF is byte-stuffed), so the image is
    # complete only if an end-of-image marker follows the last start-of-scan.
    sos = data.rfind(b"\xff\xda")
    if sos < 0:
        return "JPEG without image data (no start-of-scan marker)"
    if data.find(b"\xff\xd9", sos) < 0:
        return f"truncated JPEG (no end-of-image marker; {len(data)} bytes)"
    from PIL import Image, ImageFile

    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        with Image.open(io.BytesIO(data)) as im:
            if im.format != "JPEG":
                return f"not a JPEG (decodes as {im.format})"
            im.load()
            if im.width < 1 or im.height < 1:
                return "JPEG with zero width or height"
    except Exception as err:  # PIL raises many types for corrupt data; all mean "undecodable"
        return f"does not decode: {type(err).__name__}: {err}"
    return None


def check_chunk(store: FolderStore | ZipStore, items: Sequence[tuple[int, str]]
                ) -> list[tuple[int, bytes | None, str | None]]:
    """Worker: read and validate images; return (position, bytes or None, reason or None)."""
    out = []
    for pos, locator in items:
        try:
            data = store.read(locator)
        except Exception as err:  # vanished or unreadable after listing: a bad sample like any other
            out.append((pos, None, f"unreadable: {type(err).__name__}: {err}"))
            continue
        reason = check_jpeg(data)
        out.append((pos, None if reason else data, reason))
    return out


def validated(source: CelebASource, plan: Sequence[Entry], start: int, workers: int
              ) -> Iterator[tuple[int, Entry, bytes | None, str | None]]:
    """Yield (position, entry, bytes, reason) for plan[start:], in order, validating in ``workers`` processes."""
    store = source.store
    chunks = [[(pos, store.locate(plan[pos].filename)) for pos in range(lo, min(lo + _CHUNK, len(plan)))]
              for lo in range(start, len(plan), _CHUNK)]
    for _, results in ordered_map(functools.partial(check_chunk, store), chunks, workers, caller="preshard()"):
        for pos, data, reason in results:
            yield pos, plan[pos], data, reason
