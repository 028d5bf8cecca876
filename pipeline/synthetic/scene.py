"""Whole-image steps: the backdrop painted first, and the light and blur applied last."""
from __future__ import annotations

import random

from .canvas import HEIGHT, SUPERSAMPLE, WIDTH
from .colors import jitter


def draw_background(rng: random.Random):
    """A smooth, varied backdrop on the 2x canvas: upsampled random colour grid, gradient, or stripes."""
    from PIL import Image

    kind = rng.random()
    base = (rng.randint(20, 235), rng.randint(20, 235), rng.randint(20, 235))
    if kind < 0.5:
        gw, gh = rng.randint(2, 4), rng.randint(2, 5)
        cells = bytes(v for _ in range(gw * gh) for v in jitter(rng, base, 70))
        small = Image.frombytes("RGB", (gw, gh), cells)
        return small.resize((WIDTH * SUPERSAMPLE, HEIGHT * SUPERSAMPLE), Image.BILINEAR)
    if kind < 0.85:
        top, bottom = jitter(rng, base, 60), jitter(rng, base, 60)
        col = Image.frombytes("RGB", (1, 2), bytes(top + bottom))
        return col.resize((WIDTH * SUPERSAMPLE, HEIGHT * SUPERSAMPLE), Image.BILINEAR)
    from PIL import ImageDraw

    img = Image.new("RGB", (WIDTH * SUPERSAMPLE, HEIGHT * SUPERSAMPLE), base)
    draw = ImageDraw.Draw(img)
    other = jitter(rng, base, 50)
    step = rng.randint(16, 60) * SUPERSAMPLE
    vertical = rng.random() < 0.7
    for k in range(0, (WIDTH if vertical else HEIGHT) * SUPERSAMPLE, 2 * step):
        box = (k, 0, k + step, HEIGHT * SUPERSAMPLE) if vertical else (0, k, WIDTH * SUPERSAMPLE, k + step)
        draw.rectangle(box, fill=other)
    return img


def apply_light(img, rng: random.Random, side: float):
    """Directional light from ``side`` plus exposure and colour temperature, as one affine map per pixel."""
    import numpy as np
    from PIL import Image

    arr = np.asarray(img, dtype=np.float32)
    h, w = arr.shape[:2]
    xs = np.linspace(-1, 1, w, dtype=np.float32)
    ys = np.linspace(-1, 1, h, dtype=np.float32)
    vert = rng.uniform(-0.25, 0.1)
    ramp = 1.0 + 0.18 * side * xs[None, :] + vert * ys[:, None]
    exposure = rng.uniform(0.82, 1.12)
    warm = rng.uniform(-0.06, 0.06)
    gains = np.array([1 + warm, 1.0, 1 - warm], dtype=np.float32) * exposure
    arr = arr * ramp[..., None] * gains
    return Image.fromarray(np.clip(arr + 0.5, 0, 255).astype(np.uint8))


def apply_blur(img, rng: random.Random, attrs: dict[str, bool]):
    """A Gaussian blur of random radius for ``Blurry`` faces; others are returned as they are."""
    if not attrs["Blurry"]:
        return img
    from PIL import ImageFilter

    return img.filter(ImageFilter.GaussianBlur(rng.uniform(1.2, 2.2)))
