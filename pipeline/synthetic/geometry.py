"""One face's measures and colours, shared by the features that draw it.

All values are in face coordinates (pixels at 1x, origin at the face centre, y down). The
first group is sampled before anything of the face is painted (``sample_geometry``); the rest
is recorded by the step that places it, because its random draw has to happen at that point
of the drawing order (see ``face.draw_face``) and later features read it.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass
from functools import cached_property

from .canvas import Point, egg_points
from .colors import Color, sample_hair, sample_skin, shade

_NOT_PLACED = math.nan  # a position whose step has not run yet

# Labelled hair colours, in the order the labels are looked at.
_HAIR_LABELS = (("Black_Hair", "black"), ("Brown_Hair", "brown"), ("Blond_Hair", "blond"), ("Gray_Hair", "gray"))


@dataclass
class FaceGeometry:
    """Sizes, positions and colours of one face (``*_y``: heights; ``*_half_width``: radii)."""

    yaw: float  # -1 (looks to the image's left) .. 1
    skin: Color
    hair: Color
    half_width: float  # of the head, at the cheeks
    half_height: float  # of the head
    chin_taper: float  # how much the outline narrows towards the chin
    long_hair: bool
    hair_length: float  # how far long hair falls below the shoulders' top (0 when short)

    # Placed while drawing, by the step named.
    ear_y: float = _NOT_PLACED  # features.draw_ears
    light: float = _NOT_PLACED  # features.draw_head: -1..1, sign = lit side, size = contrast
    brow_y: float = _NOT_PLACED  # features.place_brows_and_eyes
    eye_y: float = _NOT_PLACED  # features.place_brows_and_eyes
    eye_spacing: float = _NOT_PLACED  # features.draw_eyes_and_brows: centre line to each eye's centre
    eye_half_width: float = _NOT_PLACED  # features.draw_eyes_and_brows
    eye_half_height: float = _NOT_PLACED  # features.draw_eyes_and_brows
    nose_y: float = _NOT_PLACED  # features.draw_nose
    mouth_y: float = _NOT_PLACED  # features.place_mouth
    mouth_half_width: float = _NOT_PLACED  # features.place_mouth

    @property
    def feature_dx(self) -> float:
        """Eyes, nose and mouth slide sideways with yaw; the outline stays."""
        return self.yaw * 7

    @property
    def shadow_skin(self) -> Color:
        """Skin in shadow: neck, ears."""
        return shade(self.skin, 0.78)

    @property
    def shadow_side(self) -> int:
        """-1 or 1: the side of the face away from the light."""
        return -1 if self.light > 0 else 1

    @cached_property
    def outline(self) -> list[Point]:
        """The head's outline, clockwise from the right cheek."""
        return egg_points(self.half_width, self.half_height, self.chin_taper)


def sample_geometry(rng: random.Random, attrs: dict[str, bool]) -> FaceGeometry:
    """Yaw, skin and hair colour, head shape and hair length (in this order: see ``draw_face``)."""
    yaw = max(-1.0, min(1.0, rng.gauss(0, 0.35)))
    skin = sample_skin(rng, attrs["Pale_Skin"])
    hair = sample_hair(rng, next((colour for name, colour in _HAIR_LABELS if attrs[name]), None))
    half_width = (rng.uniform(38, 45) + (6 if attrs["Chubby"] else 0) - (3 if attrs["Oval_Face"] else 0)
                  + (2 if attrs["Male"] else 0))
    half_height = rng.uniform(54, 60) + (4 if attrs["Oval_Face"] else 0)
    taper = rng.uniform(0.18, 0.32) - (0.12 if attrs["Chubby"] else 0) + (0.06 if attrs["Oval_Face"] else 0)
    long_hair = not attrs["Bald"] and rng.random() < (0.12 if attrs["Male"] else 0.8)
    hair_length = rng.uniform(20, 90) if long_hair else 0.0
    return FaceGeometry(yaw=yaw, skin=skin, hair=hair, half_width=half_width, half_height=half_height,
                        chin_taper=taper, long_hair=long_hair, hair_length=hair_length)
