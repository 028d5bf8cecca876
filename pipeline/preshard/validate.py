"""Image validation: why DALI's decoder would reject an image, checked in a process pool.

DALI aborts the whole pipeline on one undecodable image, so preshard checks every JPEG (a
header/marker check, then a full PIL decode) before it goes into a shard. The work runs in
chunks through :func:`pipeline.parallel.ordered_map`, which keeps the stream in plan order and
its memory bounded; :func:`check_chunk` and the ``prepare`` functions are module-level so that
spawned workers can unpickle them.

CelebA's images must be JPEGs and are kept as they are (:func:`keep_jpeg`). A folder of photos
(:func:`prepare_image`) also holds PNG and WebP, CMYK JPEGs and phone photos whose EXIF tag says
"rotate me": DALI honours that tag and PIL's decode in the fallback loader does not (measured: a
40×48 image comes out 48×40 from DALI only), and CMYK → RGB is each decoder's own choice (nvJPEG's
included). So only RGB/greyscale JPEGs without a rotation are kept as they are; everything else
PIL decodes is stored as the PNG of its upright RGB pixels, which every decoder reads alike.
"""
from __future__ import annotations

import functools
import io
import warnings
from typing import Callable, Iterator, Sequence

from ..celeba import Entry, FolderStore, ZipStore
from ..image_folder import Source
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


#: Image bytes in → (bytes to store or None, why not or None).
Prepare = Callable[[bytes], "tuple[bytes | None, str | None]"]


def keep_jpeg(data: bytes) -> tuple[bytes | None, str | None]:
    """CelebA: a valid JPEG is stored unchanged; anything else is a bad image."""
    reason = check_jpeg(data)
    return (None, reason) if reason else (data, None)


def prepare_image(data: bytes) -> tuple[bytes | None, str | None]:
    """A folder's image: a plain JPEG unchanged, anything else PIL decodes as PNG (see the module docstring)."""
    from PIL import Image, ImageFile, UnidentifiedImageError

    if not data:
        return None, "empty file (0 bytes)"
    if data.startswith(b"\xff\xd8\xff"):
        reason = check_jpeg(data)
        if reason is None and _plain_jpeg(data):
            return data, None
        if reason is not None and not reason.startswith("not a JPEG (decodes as"):  # MPO etc.: re-encode
            return None, reason
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # palette-transparency and EXIF notices: the pixels are what count
            with Image.open(io.BytesIO(data)) as im:
                im.load()
                rgb = _upright_rgb(im)
            buf = io.BytesIO()
            rgb.save(buf, format="PNG")
    except UnidentifiedImageError:
        return None, f"not an image (starts with {data[:8]!r})"
    except Exception as err:  # PIL raises many types for corrupt data; all mean "undecodable"
        return None, f"does not decode: {type(err).__name__}: {str(err).split(' <')[0]}"
    return buf.getvalue(), None


def _plain_jpeg(data: bytes) -> bool:
    """A JPEG that DALI and PIL decode to the same RGB: RGB or greyscale, no EXIF rotation."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:  # header only: check_jpeg has decoded it already
        if im.mode not in ("RGB", "L"):
            return False
        try:
            orientation = im.getexif().get(0x0112, 1)
        except Exception:  # unparsable EXIF: re-encoding could not rotate by it either, so keep the bytes
            return True
        return orientation in (1, None)


def _upright_rgb(im):
    """Pixels as an 8-bit RGB image, rotated as the EXIF tag says (16-bit greyscale scaled, not clipped)."""
    from PIL import Image, ImageOps

    im = ImageOps.exif_transpose(im)
    if im.mode.startswith("I;16"):
        import numpy as np

        return Image.fromarray((np.asarray(im).astype(np.uint16) >> 8).astype(np.uint8)).convert("RGB")
    return im if im.mode == "RGB" else im.convert("RGB")


def check_chunk(store: FolderStore | ZipStore, items: Sequence[tuple[int, str]], prepare: Prepare = keep_jpeg
                ) -> list[tuple[int, bytes | None, str | None]]:
    """Worker: read and validate images; return (position, bytes to store or None, reason or None)."""
    out = []
    for pos, locator in items:
        try:
            data = store.read(locator)
        except Exception as err:  # vanished or unreadable after listing: a bad sample like any other
            out.append((pos, None, f"unreadable: {type(err).__name__}: {err}"))
            continue
        out.append((pos, *prepare(data)))
    return out


def validated(source: Source, plan: Sequence[Entry], start: int, workers: int, prepare: Prepare = keep_jpeg
              ) -> Iterator[tuple[int, Entry, bytes | None, str | None]]:
    """Yield (position, entry, bytes, reason) for plan[start:], in order, validating in ``workers`` processes."""
    store = source.store
    chunks = [[(pos, store.locate(plan[pos].filename)) for pos in range(lo, min(lo + _CHUNK, len(plan)))]
              for lo in range(start, len(plan), _CHUNK)]
    task = functools.partial(check_chunk, store, prepare=prepare)
    for _, results in ordered_map(task, chunks, workers, caller="preshard()"):
        for pos, data, reason in results:
            yield pos, plan[pos], data, reason
