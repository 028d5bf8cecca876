"""Hair and hats: long hair behind the shoulders, the cap of hair with its hairline (or a bald
head's fringe), sideburns, and a hat on top."""
from __future__ import annotations

import random

from .canvas import Painter, Point, arc_points
from .colors import CLOTHES_COLORS, jitter, shade
from .geometry import FaceGeometry


def draw_hair_behind(painter: Painter, rng: random.Random, face: FaceGeometry) -> None:
    """Long hair: a mass behind the head falling below the shoulders (painted before the body)."""
    if not face.long_hair:
        return
    w = face.half_width + rng.uniform(8, 18)
    bottom = 40 + face.hair_length
    painter.poly([(-w, -20)] + arc_points(0, -20, w, face.half_height + 12, 180, 360, 16) + [(w, bottom), (-w, bottom)],
                 face.hair)


def draw_hair(painter: Painter, rng: random.Random, attrs: dict[str, bool], face: FaceGeometry) -> None:
    """The cap of hair over the skull; on a bald head, often a fringe above the ears."""
    if not attrs["Bald"]:
        _draw_hair_cap(painter, rng, attrs, face)
    elif rng.random() < 0.7:
        ax = face.half_width
        for side in (-1, 1):
            painter.poly([(side * (ax + 1), -30), (side * (ax - 6), -34),
                          (side * (ax - 4), face.ear_y - 2), (side * (ax + 2), face.ear_y)], face.hair)


def draw_sideburns(painter: Painter, attrs: dict[str, bool], face: FaceGeometry) -> None:
    """Strips of slightly darker hair in front of the ears, from the temples down past the ear lobes."""
    if not attrs["Sideburns"]:
        return
    ax, brow_y, ear_y = face.half_width, face.brow_y, face.ear_y
    for side in (-1, 1):
        painter.poly([(side * (ax - 1), brow_y - 6), (side * (ax - 8), brow_y - 6),
                      (side * (ax - 7), ear_y + 12), (side * (ax - 1), ear_y + 10)], shade(face.hair, 0.9))


def draw_hat(painter: Painter, rng: random.Random, attrs: dict[str, bool], face: FaceGeometry) -> None:
    """A crown over the top of the head, with a darker brim 60 % of the time."""
    if not attrs["Wearing_Hat"]:
        return
    ax = face.half_width
    hat = jitter(rng, rng.choice(CLOTHES_COLORS), 20)
    crown = rng.uniform(-28, -20)
    painter.poly(arc_points(0, crown, ax + 6, face.half_height * 0.75, 180, 360, 18), hat)
    if rng.random() < 0.6:
        painter.poly([(-ax - 16, crown - 2), (ax + 16, crown - 2), (ax + 12, crown + 5), (-ax - 12, crown + 5)],
                     shade(hat, 0.8))


def _draw_hair_cap(painter: Painter, rng: random.Random, attrs: dict[str, bool], face: FaceGeometry) -> None:
    """The cap of hair over the skull, closed by a hairline whose shape depends on the style;
    then curls or waves along its outline and a few strands."""
    top = -face.half_height - rng.uniform(4, 12) - (6 if attrs["Wavy_Hair"] else 0)
    w = face.half_width + rng.uniform(2, 7)
    cap = arc_points(0, -6, w, -top - 6, 180, 360, 22)  # from the left temple over the top
    painter.poly(cap + _hairline(rng, attrs, face, w), face.hair)
    if not attrs["Straight_Hair"]:
        _draw_curls(painter, attrs, face, w, top)
    _draw_strands(painter, rng, face, w, top)


def _hairline(rng: random.Random, attrs: dict[str, bool], face: FaceGeometry, w: float) -> list[Point]:
    """The cap's lower edge from the right temple (x = ``w``) to the left one: bangs, or a hairline
    parted in the middle, to one side, or swept; pushed back at the temples when receding."""
    ax, brow_y = face.half_width, face.brow_y
    if attrs["Bangs"]:
        fringe = brow_y - rng.uniform(3, 7)
        jag = [(x, fringe + (1.5 if k % 2 else -0.5)) for k, x in enumerate(
            [w * 0.9 - i * (1.8 * w) / 11 for i in range(12)])]
        return [(w, 0)] + jag + [(-w, 0)]
    hl = brow_y - rng.uniform(12, 18) - (12 if attrs["Receding_Hairline"] else 0)
    part = rng.choice(("side", "middle", "swept"))
    if part == "middle":
        line = [(w, 4), (ax * 0.7, hl + 6), (face.feature_dx, hl - 3), (-ax * 0.7, hl + 6), (-w, 4)]
    elif part == "side":
        s = rng.choice((-1, 1))
        line = [(s * w, 2), (s * ax * 0.6, hl + 2), (s * ax * 0.3, hl - 5),
                (-s * ax * 0.2, hl + 2), (-s * ax * 0.8, hl + 10), (-s * w, 6)]
        line = line if s == 1 else line[::-1]  # the cap ends on the right: go right to left
    else:
        line = [(w, 0), (ax * 0.8, hl + 4), (ax * 0.2, hl), (-ax * 0.5, hl + 4), (-w, 2)]
    if attrs["Receding_Hairline"]:
        line = [(x, y - (6 if abs(x) > ax * 0.3 else 0)) for x, y in line]
    return line


def _draw_curls(painter: Painter, attrs: dict[str, bool], face: FaceGeometry, w: float, top: float) -> None:
    """Waves (few, large) or curls (many, small): bumps along the cap's outline, and down the sides
    of long hair."""
    r = 4.5 if attrs["Wavy_Hair"] else 3.2
    for x, y in arc_points(0, -6, w, -top - 6, 180, 360, 16 if attrs["Wavy_Hair"] else 26)[1:-1]:
        painter.ellipse(x, y, r, r, face.hair, n=10)
    if face.long_hair:
        for k in range(8):
            yy = 10 + k * 9
            for side in (-1, 1):
                painter.ellipse(side * (w + 1 + (k % 2) * 2), yy, r, r, face.hair, n=10)


def _draw_strands(painter: Painter, rng: random.Random, face: FaceGeometry, w: float, top: float) -> None:
    """A few translucent lines, darker than light hair or lighter than dark hair, for texture."""
    strand = shade(face.hair, 0.75 if sum(face.hair) > 200 else 1.6)
    for _ in range(rng.randint(2, 5)):
        x0 = rng.uniform(-w * 0.7, w * 0.7)
        painter.line([(x0, top + 5), (x0 * 1.25 + rng.uniform(-4, 4), top * 0.45)], strand + (110,), 0.8)
