"""The crop + resize contract, written once in PIL.

CelebA practice (and every loader backend here): centre-crop a ``crop``×``crop`` square
out of the 178×218 aligned image (clamped to the image's shorter side), then resize it
to ``size``×``size`` with an antialiasing (triangle / bilinear) filter. The webdataset
fallback uses this directly; the DALI pipeline implements the same geometry and the
equivalence tests compare both against :func:`reference_image`.
"""
from __future__ import annotations

import io

import numpy as np
from PIL import Image

# PIL's BILINEAR widens its triangle filter by the downscale factor, which is what
# DALI's ``resize(antialias=True)`` (linear interpolation) does too.
RESAMPLE = Image.Resampling.BILINEAR

# ``draft`` decodes at half size in the DCT domain only where the halved crop window still has more
# than DRAFT_MARGIN times the output's side: libjpeg's scaled IDCT is not the triangle filter the
# resize applies, and on a real photograph's crop windows the error grows as the margin shrinks
# (bench/RESULTS.md, "Loader accuracy"). So at CelebA's 148 → 64 there is no draft: the fallback
# equals the reference there.
DRAFT_MARGIN = 2


def crop_box(width: int, height: int, crop: int | None) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of the centred square crop, clamped to the image.

    ``crop=None`` keeps the whole image (then resized without keeping the aspect ratio).
    The anchor is rounded the way DALI rounds ``crop_pos_x=crop_pos_y=0.5``.
    """
    if crop is None:
        return 0, 0, width, height
    side = min(crop, width, height)
    left = int(round((width - side) * 0.5))
    top = int(round((height - side) * 0.5))
    return left, top, left + side, top + side


def decode_crop_resize(data: bytes, crop: int | None = 148, size: int = 64, *, draft: bool = False,
                       flip: bool = False) -> np.ndarray:
    """Decode JPEG bytes, centre-crop, resize (and optionally mirror); uint8 ``size``×``size``×3.

    ``draft=True`` lets libjpeg decode at half size in the DCT domain (PIL's ``draft``) where
    that stays within 2/255 of the full decode (see :data:`DRAFT_MARGIN`). The crop box is
    computed on the full-size geometry and scaled, so drafted and full decodes see the same window.
    """
    img = Image.open(io.BytesIO(data))
    w0, h0 = img.size
    left, top, right, bottom = crop_box(w0, h0, crop)
    if draft and img.format == "JPEG" and min(right - left, bottom - top) > 2 * DRAFT_MARGIN * size:
        img.draft("RGB", ((w0 + 1) // 2, (h0 + 1) // 2))  # the strongest reduction that keeps this size: 1/2
    if img.mode != "RGB":
        img = img.convert("RGB")
    sx, sy = img.size[0] / w0, img.size[1] / h0
    out = img.resize((size, size), RESAMPLE, box=(left * sx, top * sy, right * sx, bottom * sy))
    if flip:
        out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return np.asarray(out, dtype=np.uint8)


def reference_image(data: bytes, crop: int | None = 148, size: int = 64) -> np.ndarray:
    """The reference result for one JPEG: full decode (no draft), centre crop, resize."""
    return decode_crop_resize(data, crop, size)
