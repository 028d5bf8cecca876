"""Below the head: shoulders in clothes, the neck, a necktie, a necklace."""
from __future__ import annotations

import math
import random

from .canvas import Painter, arc_points
from .colors import CLOTHES_COLORS, NECKTIE_COLORS, Color, jitter, shade
from .geometry import FaceGeometry


def draw_body(painter: Painter, rng: random.Random, attrs: dict[str, bool], face: FaceGeometry) -> None:
    """Shoulders, neck, and the necktie or necklace the attributes ask for."""
    cloth, shoulder_y = _draw_shoulders(painter, rng, face)
    neck_half_width = _draw_neck(painter, rng, attrs, face, shoulder_y)
    if attrs["Wearing_Necktie"]:
        _draw_necktie(painter, rng, cloth, shoulder_y, neck_half_width)
    if attrs["Wearing_Necklace"]:
        _draw_necklace(painter, rng, shoulder_y, neck_half_width)


def _draw_shoulders(painter: Painter, rng: random.Random, face: FaceGeometry) -> tuple[Color, float]:
    """Clothed shoulders below the chin; returns the cloth colour and the shoulders' top."""
    cloth = jitter(rng, rng.choice(CLOTHES_COLORS), 15)
    shoulder_y = face.half_height + rng.uniform(18, 28)
    painter.poly(arc_points(0, shoulder_y + 40, rng.uniform(75, 95), 45, 180, 360, 18) + [(95, 140), (-95, 140)],
                 cloth)
    return cloth, shoulder_y


def _draw_neck(painter: Painter, rng: random.Random, attrs: dict[str, bool], face: FaceGeometry,
               shoulder_y: float) -> float:
    """The neck and a neckline cut into the clothes; returns the neck's half-width."""
    neck_w = rng.uniform(15, 19) + (4 if attrs["Male"] else 0)
    painter.poly([(-neck_w, 10), (neck_w, 10), (neck_w + 2, shoulder_y + 8), (-neck_w - 2, shoulder_y + 8)],
                 face.shadow_skin)
    neckline_depth = rng.uniform(4, 16)
    painter.poly([(-neck_w - 4, shoulder_y - 2), (0, shoulder_y + neckline_depth), (neck_w + 4, shoulder_y - 2),
                  (neck_w + 2, shoulder_y + 8), (-neck_w - 2, shoulder_y + 8)], face.shadow_skin)
    return neck_w


def _draw_necktie(painter: Painter, rng: random.Random, cloth: Color, shoulder_y: float, neck_w: float) -> None:
    """A shirt collar (lighter than dark clothes, white on light ones) and a tie hanging from it."""
    collar = shade(cloth, 1.3) if sum(cloth) < 300 else (245, 245, 245)
    painter.poly([(-neck_w - 6, shoulder_y - 3), (0, shoulder_y + 12), (neck_w + 6, shoulder_y - 3),
                  (0, shoulder_y + 4)], collar)
    tie = jitter(rng, rng.choice(NECKTIE_COLORS), 20)
    painter.poly([(-4, shoulder_y + 4), (4, shoulder_y + 4), (6, shoulder_y + 30), (0, shoulder_y + 38),
                  (-6, shoulder_y + 30)], tie)


def _draw_necklace(painter: Painter, rng: random.Random, shoulder_y: float, neck_w: float) -> None:
    """A chain of gold (60 %) or silver beads hanging round the base of the neck."""
    metal = (222, 190, 90) if rng.random() < 0.6 else (210, 210, 220)
    for k in range(13):
        t = math.radians(20 + 140 * k / 12)
        painter.ellipse(neck_w * 1.05 * math.cos(t), shoulder_y - 4 + 10 * math.sin(t), 1.6, 1.6, metal, n=8)
