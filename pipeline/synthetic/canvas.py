"""Where shapes land: the image size, the pose transform and the painter.

Shapes are given in face coordinates (pixels at 1x, origin at the face centre, y down) and
mapped through one transform (scale, roll, shift) onto a canvas drawn at ``SUPERSAMPLE`` times
the final size, which is box-filtered down at the end: cheap anti-aliasing, no image rotation.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Sequence

from .colors import RGBA, Color

WIDTH, HEIGHT = 178, 218
SUPERSAMPLE = 2

Point = tuple[float, float]


@dataclass(frozen=True)
class Pose:
    """Maps face coordinates (pixels at 1x, origin at the face centre, y down) onto the 2x canvas."""

    cx: float
    cy: float
    scale: float
    roll: float  # radians

    @classmethod
    def sample(cls, rng: random.Random) -> "Pose":
        """The face's position, size and roll: a little off-centre, slightly larger or smaller, tilted."""
        return cls(cx=WIDTH / 2 + rng.gauss(0, 3), cy=120 + rng.gauss(0, 3),
                   scale=rng.uniform(0.95, 1.12), roll=math.radians(rng.gauss(0, 5)))

    def pt(self, x: float, y: float) -> Point:
        c, s = math.cos(self.roll), math.sin(self.roll)
        x, y = x * self.scale, y * self.scale
        return ((self.cx + c * x - s * y) * SUPERSAMPLE, (self.cy + s * x + c * y) * SUPERSAMPLE)


class Painter:
    """Polygons and polylines in face coordinates, blended onto an RGB canvas."""

    def __init__(self, image, pose: Pose):
        from PIL import ImageDraw

        self.draw = ImageDraw.Draw(image, "RGBA")
        self.pose = pose

    def poly(self, points: Sequence[Point], fill: Color | RGBA) -> None:
        self.draw.polygon([self.pose.pt(x, y) for x, y in points], fill=fill)

    def line(self, points: Sequence[Point], fill: Color | RGBA, width: float) -> None:
        w = max(1, round(width * self.pose.scale * SUPERSAMPLE))
        self.draw.line([self.pose.pt(x, y) for x, y in points], fill=fill, width=w, joint="curve")

    def ellipse(self, x: float, y: float, rx: float, ry: float, fill: Color | RGBA,
                rot: float = 0.0, n: int = 28) -> None:
        self.poly(ellipse_points(x, y, rx, ry, rot=rot, n=n), fill)

    def arc(self, x: float, y: float, rx: float, ry: float, start: float, end: float,
            fill: Color | RGBA, width: float, n: int = 14) -> None:
        self.line(arc_points(x, y, rx, ry, start, end, n), fill, width)


def ellipse_points(x: float, y: float, rx: float, ry: float, rot: float = 0.0, n: int = 28) -> list[Point]:
    c, s = math.cos(rot), math.sin(rot)
    out = []
    for i in range(n):
        t = 2 * math.pi * i / n
        ex, ey = rx * math.cos(t), ry * math.sin(t)
        out.append((x + c * ex - s * ey, y + s * ex + c * ey))
    return out


def arc_points(x: float, y: float, rx: float, ry: float, start: float, end: float, n: int = 14) -> list[Point]:
    """Points on an ellipse from angle ``start`` to ``end`` (degrees, 0 = +x, 90 = down)."""
    return [(x + rx * math.cos(math.radians(start + (end - start) * i / (n - 1))),
             y + ry * math.sin(math.radians(start + (end - start) * i / (n - 1)))) for i in range(n)]


def egg_points(half_width: float, half_height: float, taper: float, n: int = 40) -> list[Point]:
    """An egg: full width at the cheeks, narrowing towards the chin by ``taper``."""
    pts = []
    for i in range(n):
        t = 2 * math.pi * i / n
        sy = math.sin(t)
        narrowing = 1.0 - taper * max(0.0, sy) ** 2
        pts.append((half_width * math.cos(t) * narrowing, half_height * sy))
    return pts
