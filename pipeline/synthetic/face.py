"""``draw_face``: one face, painted back to front from one RNG.

The order of the steps below is also the order of the random draws, and that order is part of
the output contract: the same (seed, image number) must give the same JPEG bytes release after
release. A step that draws a value must stay where it is, and any added draw, even in the last
step, changes the images (``render_image`` draws the JPEG quality after the face) and with them
the pinned hashes in tests/test_synthetic.py.
"""
from __future__ import annotations

import random

from .body import draw_body
from .canvas import SUPERSAMPLE, Painter, Pose
from .features import (draw_beard, draw_cheeks, draw_ears, draw_eyes_and_brows, draw_glasses, draw_head, draw_mouth,
                       draw_nose, draw_stubble, place_brows_and_eyes, place_mouth)
from .geometry import sample_geometry
from .hair import draw_hair, draw_hair_behind, draw_hat, draw_sideburns
from .scene import apply_blur, apply_light, draw_background


def draw_face(rng: random.Random, attrs: dict[str, bool]):
    """Draw one 178×218 RGB face (PIL image) showing ``attrs``."""
    canvas = draw_background(rng)
    painter = Painter(canvas, Pose.sample(rng))
    face = sample_geometry(rng, attrs)

    draw_hair_behind(painter, rng, face)
    draw_body(painter, rng, attrs, face)
    draw_ears(painter, rng, attrs, face)
    draw_head(painter, rng, attrs, face)
    draw_stubble(painter, attrs, face)

    place_brows_and_eyes(rng, face)
    draw_hair(painter, rng, attrs, face)
    draw_sideburns(painter, attrs, face)
    draw_hat(painter, rng, attrs, face)

    draw_eyes_and_brows(painter, rng, attrs, face)
    draw_nose(painter, rng, attrs, face)
    draw_cheeks(painter, rng, attrs, face)
    place_mouth(rng, attrs, face)
    draw_beard(painter, rng, attrs, face)
    draw_mouth(painter, rng, attrs, face)
    draw_glasses(painter, rng, attrs, face)

    image = canvas.reduce(SUPERSAMPLE)
    image = apply_light(image, rng, face.light)
    return apply_blur(image, rng, attrs)
