"""Single faces prepared exactly as the loader prepares its batches: image files, or samples by key.

``python -m model`` reconstructs, interpolates and edits faces that a user names one by one: a
photo on disk or a sample key of a split. Both go through :func:`pipeline.transforms.decode_crop_resize`
(full decode, no draft: the reference the loader backends are tested against), so a face from a
file and the same face from the shards give the same pixels, and the model sees what training fed it.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from .errors import DataError
from .shards import read_members, read_split
from .transforms import decode_crop_resize

#: CelebA's aligned images, for which the default crop (148) was chosen.
CELEBA_SIZE = (178, 218)
#: The largest image file read whole (a 100-megapixel photo is well under it).
MAX_IMAGE_BYTES = 256_000_000


def read_image_file(path: str | os.PathLike, crop: int | None = 148, size: int = 64) -> np.ndarray:
    """A JPEG/PNG/... file → uint8 ``size``×``size``×3, centre-cropped and resized as the loader does.

    One DataError line for a missing file, a folder, an unreadable or undecodable file.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"image file {path} does not exist")
    if not path.is_file():
        what = "a folder" if path.is_dir() else "not a regular file (a pipe or a device?)"
        raise DataError(f"{path} is not an image file (it is {what})")
    if path.stat().st_size > MAX_IMAGE_BYTES:
        raise DataError(f"image file {path} has {path.stat().st_size / 1e6:,.0f} MB, more than the "
                        f"{MAX_IMAGE_BYTES / 1e6:,.0f} MB a face photo may have; pass a smaller copy")
    try:
        data = path.read_bytes()
    except OSError as err:
        raise DataError(f"cannot read image file {path}: {err.strerror or err}") from None
    return _decode(_upright(data), crop, size, f"image file {path}")


def _upright(data: bytes) -> bytes:
    """The bytes ``preshard --images`` would store for this file (a rotated, CMYK or 16-bit photo as the PNG of
    its upright RGB pixels: DALI rotates by EXIF, PIL does not), so a file and its shard sample give the same face."""
    from .preshard.validate import prepare_image

    stored, _ = prepare_image(data)
    return data if stored is None else stored  # an undecodable file: _decode says what is wrong with it


def read_split_images(shards: str | os.PathLike, split: str, keys: Sequence[str], crop: int | None = 148,
                      size: int = 64) -> list[np.ndarray]:
    """The samples ``keys`` of one split of preshard's output, in the order given, as uint8 H×W×3.

    A key the split does not hold raises DataError naming the closest key (and the split that holds it).
    """
    data = read_members(read_split(shards, split), "jpg", keys)
    return [_decode(data[k], crop, size, f"sample {k} of split {split!r} in {shards}") for k in keys]


def _decode(data: bytes, crop: int | None, size: int, what: str) -> np.ndarray:
    try:
        return decode_crop_resize(data, crop, size)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        # PIL raises UnidentifiedImageError (an OSError) for a non-image, OSError for a truncated one,
        # SyntaxError/ValueError for some malformed headers.
        reason = str(err).split(" <")[0] or type(err).__name__
        raise DataError(f"cannot decode {what}: {reason}") from None


def image_size(path: str | os.PathLike) -> tuple[int, int] | None:
    """(width, height) from the file's header without decoding it; None when unreadable."""
    try:
        with Image.open(path) as img:
            return img.size
    except (OSError, SyntaxError, ValueError):
        return None
