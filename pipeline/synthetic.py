"""Procedurally drawn faces in CelebA's layout: the embedded default data set.

``write_synthetic_celeba`` writes what CelebA ships (``img_align_celeba/000001.jpg``… or the
zip of that folder, ``list_eval_partition.txt``, ``list_attr_celeba.txt``), so every later
step runs with no download and the VAE still has real structure to learn: a face ellipse
with skin tone, eyes, brows, nose, mouth, hair, ears, neck and clothes, varied background,
pose (roll, yaw, scale, shift) and lighting. Attributes in the attribute file are the ones
drawn where that is cheap to know (Male, Smiling, Eyeglasses, hair colour, beard, hat, ...).

Every image is drawn from its own RNG seeded by ``(seed, image number)``, so the output is
identical whatever the worker count. Shapes are polygons in face coordinates mapped through
one transform (scale, roll, shift) and drawn at 2x, then box-filtered down: cheap
anti-aliasing, no image rotation.
"""
from __future__ import annotations

import argparse
import io
import math
import os
import random
import zipfile
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

from . import usable_cores
from .errors import UserError, cli_entry

WIDTH, HEIGHT = 178, 218
SUPERSAMPLE = 2

# The official attribute order of list_attr_celeba.txt (bit i of a shard's .cls = ATTRIBUTES[i]).
ATTRIBUTES: tuple[str, ...] = (
    "5_o_Clock_Shadow", "Arched_Eyebrows", "Attractive", "Bags_Under_Eyes", "Bald", "Bangs",
    "Big_Lips", "Big_Nose", "Black_Hair", "Blond_Hair", "Blurry", "Brown_Hair", "Bushy_Eyebrows",
    "Chubby", "Double_Chin", "Eyeglasses", "Goatee", "Gray_Hair", "Heavy_Makeup", "High_Cheekbones",
    "Male", "Mouth_Slightly_Open", "Mustache", "Narrow_Eyes", "No_Beard", "Oval_Face", "Pale_Skin",
    "Pointy_Nose", "Receding_Hairline", "Rosy_Cheeks", "Sideburns", "Smiling", "Straight_Hair",
    "Wavy_Hair", "Wearing_Earrings", "Wearing_Hat", "Wearing_Lipstick", "Wearing_Necklace",
    "Wearing_Necktie", "Young",
)

# The official partition sizes (train, val, test); a tree of n images keeps these proportions.
OFFICIAL_PARTITION = (162_770, 19_867, 19_962)

Color = tuple[int, int, int]
RGBA = tuple[int, int, int, int]

_SKIN_ANCHORS: tuple[Color, ...] = (
    (255, 226, 204), (243, 201, 164), (228, 178, 138), (206, 146, 106),
    (170, 112, 78), (128, 82, 56), (92, 60, 42),
)
_HAIR = {
    "black": (28, 22, 20), "brown": (96, 60, 34), "blond": (214, 178, 112),
    "gray": (168, 166, 162), "auburn": (136, 62, 32),
}
_EYE_COLORS: tuple[Color, ...] = ((62, 38, 22), (92, 60, 30), (58, 96, 150), (70, 110, 70), (110, 100, 60), (90, 96, 104))
_CLOTHES: tuple[Color, ...] = (
    (30, 30, 36), (240, 240, 236), (160, 30, 40), (40, 60, 130), (60, 110, 70),
    (200, 160, 60), (120, 120, 130), (90, 50, 90), (200, 110, 130), (30, 90, 110),
)


# ----------------------------------------------------------------------------------------------
# Attributes: sampled first (with CelebA-like frequencies and correlations), then drawn.
# ----------------------------------------------------------------------------------------------

def sample_attributes(rng: random.Random) -> dict[str, bool]:
    """One face's attributes, with roughly CelebA's frequencies and the obvious dependencies."""
    p = rng.random
    a = {name: False for name in ATTRIBUTES}
    male = p() < 0.42
    young = p() < 0.77
    a["Male"], a["Young"] = male, young
    a["Smiling"] = p() < 0.48
    a["Mouth_Slightly_Open"] = p() < (0.6 if a["Smiling"] else 0.25)
    a["Eyeglasses"] = p() < (0.05 if young else 0.15)
    a["Wearing_Hat"] = p() < 0.05
    a["Bald"] = male and not young and not a["Wearing_Hat"] and p() < 0.25
    a["Receding_Hairline"] = not a["Bald"] and p() < (0.25 if not young else 0.05)
    hair = rng.choices(["black", "brown", "blond", "gray", "auburn"],
                       weights=[0.34, 0.30, 0.20 if not male else 0.08, 0.02 if young else 0.3, 0.08])[0]
    a["Black_Hair"], a["Brown_Hair"] = hair == "black", hair == "brown"
    a["Blond_Hair"], a["Gray_Hair"] = hair == "blond", hair == "gray"
    a["Bangs"] = not a["Bald"] and not a["Receding_Hairline"] and p() < 0.18
    texture = rng.choices(["straight", "wavy", "curly"], weights=[0.45, 0.4, 0.15])[0]
    a["Straight_Hair"], a["Wavy_Hair"] = texture == "straight", texture == "wavy"
    a["Bushy_Eyebrows"] = p() < (0.3 if male else 0.08)
    a["Arched_Eyebrows"] = p() < (0.08 if male else 0.45)
    a["Narrow_Eyes"] = p() < 0.12
    a["Bags_Under_Eyes"] = p() < (0.12 if young else 0.45)
    a["Big_Nose"] = p() < (0.4 if male else 0.12)
    a["Pointy_Nose"] = not a["Big_Nose"] and p() < 0.3
    a["Big_Lips"] = p() < 0.24
    a["Chubby"] = p() < (0.04 if young else 0.15)
    a["Double_Chin"] = a["Chubby"] and p() < 0.6
    a["Oval_Face"] = not a["Chubby"] and p() < 0.3
    a["High_Cheekbones"] = p() < (0.65 if a["Smiling"] else 0.2)
    if male:
        beard = rng.choices(["none", "stubble", "goatee", "mustache", "full"], weights=[0.5, 0.2, 0.1, 0.07, 0.13])[0]
        a["5_o_Clock_Shadow"] = beard == "stubble"
        a["Goatee"] = beard in ("goatee", "full")
        a["Mustache"] = beard in ("mustache", "full")
        a["No_Beard"] = beard in ("none", "stubble")
        a["Sideburns"] = not a["Bald"] and p() < (0.6 if beard == "full" else 0.08)
        a["Wearing_Necktie"] = p() < 0.17
    else:
        a["No_Beard"] = True
        a["Heavy_Makeup"] = p() < 0.65
        a["Wearing_Lipstick"] = a["Heavy_Makeup"] or p() < 0.35
        a["Wearing_Earrings"] = p() < 0.32
        a["Wearing_Necklace"] = p() < 0.2
        a["Rosy_Cheeks"] = p() < 0.1
    a["Pale_Skin"] = p() < 0.045
    a["Blurry"] = p() < 0.05
    a["Attractive"] = p() < (0.25 + 0.35 * young + 0.2 * a["Heavy_Makeup"] - 0.2 * a["Blurry"])
    return a


# ----------------------------------------------------------------------------------------------
# Drawing
# ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Pose:
    """Maps face coordinates (pixels at 1x, origin at the face centre, y down) onto the 2x canvas."""

    cx: float
    cy: float
    scale: float
    roll: float  # radians

    def pt(self, x: float, y: float) -> tuple[float, float]:
        c, s = math.cos(self.roll), math.sin(self.roll)
        x, y = x * self.scale, y * self.scale
        return ((self.cx + c * x - s * y) * SUPERSAMPLE, (self.cy + s * x + c * y) * SUPERSAMPLE)


class _Painter:
    """Polygons and polylines in face coordinates, blended onto an RGB canvas."""

    def __init__(self, image, pose: _Pose):
        from PIL import ImageDraw

        self.draw = ImageDraw.Draw(image, "RGBA")
        self.pose = pose

    def poly(self, points: Sequence[tuple[float, float]], fill: Color | RGBA) -> None:
        self.draw.polygon([self.pose.pt(x, y) for x, y in points], fill=fill)

    def line(self, points: Sequence[tuple[float, float]], fill: Color | RGBA, width: float) -> None:
        w = max(1, round(width * self.pose.scale * SUPERSAMPLE))
        self.draw.line([self.pose.pt(x, y) for x, y in points], fill=fill, width=w, joint="curve")

    def ellipse(self, x: float, y: float, rx: float, ry: float, fill: Color | RGBA,
                rot: float = 0.0, n: int = 28) -> None:
        self.poly(ellipse_points(x, y, rx, ry, rot=rot, n=n), fill)

    def arc(self, x: float, y: float, rx: float, ry: float, start: float, end: float,
            fill: Color | RGBA, width: float, n: int = 14) -> None:
        self.line(arc_points(x, y, rx, ry, start, end, n), fill, width)


def ellipse_points(x: float, y: float, rx: float, ry: float, rot: float = 0.0, n: int = 28) -> list[tuple[float, float]]:
    c, s = math.cos(rot), math.sin(rot)
    out = []
    for i in range(n):
        t = 2 * math.pi * i / n
        ex, ey = rx * math.cos(t), ry * math.sin(t)
        out.append((x + c * ex - s * ey, y + s * ex + c * ey))
    return out


def arc_points(x: float, y: float, rx: float, ry: float, start: float, end: float, n: int = 14) -> list[tuple[float, float]]:
    """Points on an ellipse from angle ``start`` to ``end`` (degrees, 0 = +x, 90 = down)."""
    return [(x + rx * math.cos(math.radians(start + (end - start) * i / (n - 1))),
             y + ry * math.sin(math.radians(start + (end - start) * i / (n - 1)))) for i in range(n)]


def _mix(a: Sequence[float], b: Sequence[float], t: float) -> Color:
    return tuple(int(round(a[i] + (b[i] - a[i]) * t)) for i in range(3))  # type: ignore[return-value]


def _shade(c: Sequence[float], f: float) -> Color:
    return tuple(max(0, min(255, int(round(v * f)))) for v in c[:3])  # type: ignore[return-value]


def _jitter(rng: random.Random, c: Color, amount: int) -> Color:
    return tuple(max(0, min(255, v + rng.randint(-amount, amount))) for v in c)  # type: ignore[return-value]


def _skin(rng: random.Random, pale: bool) -> Color:
    t = rng.random() * 0.12 if pale else rng.betavariate(1.6, 2.2)
    pos = t * (len(_SKIN_ANCHORS) - 1)
    i = min(int(pos), len(_SKIN_ANCHORS) - 2)
    return _jitter(rng, _mix(_SKIN_ANCHORS[i], _SKIN_ANCHORS[i + 1], pos - i), 6)


def _background(rng: random.Random):
    """A smooth, varied backdrop: upsampled random colour grid, gradient, or stripes."""
    from PIL import Image

    kind = rng.random()
    base = (rng.randint(20, 235), rng.randint(20, 235), rng.randint(20, 235))
    if kind < 0.5:
        gw, gh = rng.randint(2, 4), rng.randint(2, 5)
        cells = bytes(v for _ in range(gw * gh) for v in _jitter(rng, base, 70))
        small = Image.frombytes("RGB", (gw, gh), cells)
        return small.resize((WIDTH * SUPERSAMPLE, HEIGHT * SUPERSAMPLE), Image.BILINEAR)
    if kind < 0.85:
        top, bottom = _jitter(rng, base, 60), _jitter(rng, base, 60)
        col = Image.frombytes("RGB", (1, 2), bytes(top + bottom))
        return col.resize((WIDTH * SUPERSAMPLE, HEIGHT * SUPERSAMPLE), Image.BILINEAR)
    from PIL import ImageDraw

    img = Image.new("RGB", (WIDTH * SUPERSAMPLE, HEIGHT * SUPERSAMPLE), base)
    draw = ImageDraw.Draw(img)
    other = _jitter(rng, base, 50)
    step = rng.randint(16, 60) * SUPERSAMPLE
    vertical = rng.random() < 0.7
    for k in range(0, (WIDTH if vertical else HEIGHT) * SUPERSAMPLE, 2 * step):
        box = (k, 0, k + step, HEIGHT * SUPERSAMPLE) if vertical else (0, k, WIDTH * SUPERSAMPLE, k + step)
        draw.rectangle(box, fill=other)
    return img


def _face_outline(a_x: float, a_y: float, taper: float, n: int = 40) -> list[tuple[float, float]]:
    """An egg: full width at the cheeks, narrowing towards the chin by ``taper``."""
    pts = []
    for i in range(n):
        t = 2 * math.pi * i / n
        sy = math.sin(t)
        narrowing = 1.0 - taper * max(0.0, sy) ** 2
        pts.append((a_x * math.cos(t) * narrowing, a_y * sy))
    return pts


def draw_face(rng: random.Random, attrs: dict[str, bool]):
    """Draw one 178×218 RGB face (PIL image) showing ``attrs``."""
    from PIL import ImageFilter

    A = attrs
    img = _background(rng)
    pose = _Pose(cx=WIDTH / 2 + rng.gauss(0, 3), cy=120 + rng.gauss(0, 3),
                 scale=rng.uniform(0.95, 1.12), roll=math.radians(rng.gauss(0, 5)))
    P = _Painter(img, pose)
    yaw = max(-1.0, min(1.0, rng.gauss(0, 0.35)))  # -1 looks to the image's left
    fx = yaw * 7  # features slide sideways with yaw; the outline stays

    skin = _skin(rng, A["Pale_Skin"])
    hair = _jitter(rng, _HAIR["black" if A["Black_Hair"] else "brown" if A["Brown_Hair"] else
                         "blond" if A["Blond_Hair"] else "gray" if A["Gray_Hair"] else
                         ("auburn" if rng.random() < 0.5 else "brown")], 12)
    if not (A["Black_Hair"] or A["Brown_Hair"] or A["Blond_Hair"] or A["Gray_Hair"]) and hair[0] < 120:
        hair = _HAIR["auburn"]  # keep the unlabelled colour clearly not brown
    dark_skin = _shade(skin, 0.78)
    ax = rng.uniform(38, 45) + (6 if A["Chubby"] else 0) - (3 if A["Oval_Face"] else 0) + (2 if A["Male"] else 0)
    ay = rng.uniform(54, 60) + (4 if A["Oval_Face"] else 0)
    taper = rng.uniform(0.18, 0.32) - (0.12 if A["Chubby"] else 0) + (0.06 if A["Oval_Face"] else 0)
    long_hair = not A["Bald"] and rng.random() < (0.12 if A["Male"] else 0.8)
    hair_len = rng.uniform(20, 90) if long_hair else 0

    # Body: long hair behind, clothes, neck.
    if long_hair:
        w = ax + rng.uniform(8, 18)
        P.poly([(-w, -20)] + arc_points(0, -20, w, ay + 12, 180, 360, 16) + [(w, 40 + hair_len), (-w, 40 + hair_len)], hair)
    cloth = _jitter(rng, rng.choice(_CLOTHES), 15)
    shoulder_y = ay + rng.uniform(18, 28)
    P.poly(arc_points(0, shoulder_y + 40, rng.uniform(75, 95), 45, 180, 360, 18) + [(95, 140), (-95, 140)], cloth)
    neck_w = rng.uniform(15, 19) + (4 if A["Male"] else 0)
    P.poly([(-neck_w, 10), (neck_w, 10), (neck_w + 2, shoulder_y + 8), (-neck_w - 2, shoulder_y + 8)], dark_skin)
    neckline_depth = rng.uniform(4, 16)
    P.poly([(-neck_w - 4, shoulder_y - 2), (0, shoulder_y + neckline_depth), (neck_w + 4, shoulder_y - 2),
            (neck_w + 2, shoulder_y + 8), (-neck_w - 2, shoulder_y + 8)], dark_skin)
    if A["Wearing_Necktie"]:
        collar = _shade(cloth, 1.3) if sum(cloth) < 300 else (245, 245, 245)
        P.poly([(-neck_w - 6, shoulder_y - 3), (0, shoulder_y + 12), (neck_w + 6, shoulder_y - 3), (0, shoulder_y + 4)], collar)
        tie = _jitter(rng, rng.choice(((150, 20, 30), (20, 40, 110), (40, 40, 40), (120, 90, 30))), 20)
        P.poly([(-4, shoulder_y + 4), (4, shoulder_y + 4), (6, shoulder_y + 30), (0, shoulder_y + 38), (-6, shoulder_y + 30)], tie)
    if A["Wearing_Necklace"]:
        metal = (222, 190, 90) if rng.random() < 0.6 else (210, 210, 220)
        for k in range(13):
            t = math.radians(20 + 140 * k / 12)
            P.ellipse(neck_w * 1.05 * math.cos(t), shoulder_y - 4 + 10 * math.sin(t), 1.6, 1.6, metal, n=8)

    # Ears (the one turned away hides behind the cheek).
    ear_y = rng.uniform(-4, 4)
    for side in (-1, 1):
        if side * yaw < -0.6:
            continue
        ex = side * (ax - 2 - side * fx * 0.3)
        P.ellipse(ex, ear_y, 7, 13, dark_skin)
        P.ellipse(ex + side * 1.5, ear_y, 4, 9, _shade(skin, 0.68))
        if A["Wearing_Earrings"]:
            P.ellipse(ex, ear_y + 15, 2.5, 2.5, (225, 190, 80) if rng.random() < 0.6 else (220, 220, 230), n=10)

    # Head.
    outline = _face_outline(ax, ay, taper)
    P.poly(outline, skin)
    light = rng.uniform(-1, 1)  # which side is lit; the other gets a soft shadow
    shadow_side = -1 if light > 0 else 1
    shaded = [(x, y) for x, y in outline if x * shadow_side > ax * 0.45]
    P.poly(shaded, _shade(skin, 0.86) + (int(90 * abs(light)),))
    if A["Double_Chin"]:
        P.arc(0, ay - 2, ax * 0.45, 7, 20, 160, _shade(skin, 0.7), 1.6)
    if A["5_o_Clock_Shadow"]:
        jaw = [(x, y) for x, y in outline if y > 14]
        P.poly(jaw + [(-ax * 0.55, 24), (0, 30), (ax * 0.55, 24)], (60, 50, 45, 60))

    # Hair on top (or a hat), with the hairline shape picked by style.
    brow_y = rng.uniform(-18, -13)
    eye_y = brow_y + rng.uniform(9, 12)
    if not A["Bald"]:
        _draw_hair(P, rng, A, hair, ax, ay, brow_y, long_hair, fx)
    elif rng.random() < 0.7:  # a fringe of hair above the ears
        for side in (-1, 1):
            P.poly([(side * (ax + 1), -30), (side * (ax - 6), -34),
                    (side * (ax - 4), ear_y - 2), (side * (ax + 2), ear_y)], hair)
    if A["Sideburns"]:
        for side in (-1, 1):
            P.poly([(side * (ax - 1), brow_y - 6), (side * (ax - 8), brow_y - 6),
                    (side * (ax - 7), ear_y + 12), (side * (ax - 1), ear_y + 10)], _shade(hair, 0.9))
    if A["Wearing_Hat"]:
        hat = _jitter(rng, rng.choice(_CLOTHES), 20)
        crown = rng.uniform(-28, -20)
        P.poly(arc_points(0, crown, ax + 6, ay * 0.75, 180, 360, 18), hat)
        if rng.random() < 0.6:  # brim
            P.poly([(-ax - 16, crown - 2), (ax + 16, crown - 2), (ax + 12, crown + 5), (-ax - 12, crown + 5)], _shade(hat, 0.8))

    # Eyes and brows.
    narrow = 0.55 if A["Narrow_Eyes"] else 1.0
    smile_squint = 0.85 if A["Smiling"] else 1.0
    eye_sep = rng.uniform(17, 21)
    eye_w = rng.uniform(7, 9)
    eye_h = rng.uniform(3.4, 4.6) * narrow * smile_squint
    iris = _jitter(rng, rng.choice(_EYE_COLORS), 10)
    gaze = rng.uniform(-1.5, 1.5) + yaw
    brow_color = _shade(hair, 0.75) if not A["Blond_Hair"] and not A["Gray_Hair"] else _mix(hair, (90, 70, 50), 0.6)
    brow_w = rng.uniform(2.2, 3.2) + (1.6 if A["Bushy_Eyebrows"] else 0)
    arch = rng.uniform(1.5, 3) + (2.5 if A["Arched_Eyebrows"] else 0)
    brow_tilt = rng.uniform(-2, 2)
    for side in (-1, 1):
        persp = 1.0 + 0.12 * side * yaw  # the eye nearer the viewer looks bigger
        ex = side * eye_sep + fx
        if A["Heavy_Makeup"]:
            shadow = _jitter(rng, rng.choice(((120, 70, 110), (70, 90, 140), (110, 80, 60))), 20)
            P.ellipse(ex, eye_y - 2.5, eye_w * 1.2 * persp, eye_h * 1.6, shadow + (110,))
        if A["Bags_Under_Eyes"]:
            P.arc(ex, eye_y + eye_h * 0.6, eye_w * 0.9, eye_h * 1.2, 20, 160, _shade(skin, 0.75) + (160,), 1.2)
        P.ellipse(ex, eye_y, eye_w * persp, eye_h, (240, 236, 230), n=20)
        ir = min(eye_h * 1.05, 3.6) * persp
        P.ellipse(ex + gaze, eye_y, ir, ir, iris, n=14)
        P.ellipse(ex + gaze, eye_y, ir * 0.5, ir * 0.5, (12, 10, 10), n=10)
        P.ellipse(ex + gaze + 0.8, eye_y - 0.9, 0.6, 0.6, (250, 250, 250), n=6)
        lid = (30, 22, 20) if A["Heavy_Makeup"] else _shade(skin, 0.45)
        P.arc(ex, eye_y, eye_w * persp, eye_h, 185, 355, lid, 1.3 if A["Heavy_Makeup"] else 0.9)
        by = brow_y + side * brow_tilt * 0.3
        pts = arc_points(ex + side * 1.0, by + arch, eye_w * 1.25 * persp, arch + 1.0, 200, 340, 9)
        P.line(pts, brow_color, brow_w)
        if not A["Young"]:  # crow's feet
            cx = ex + side * eye_w * persp * 1.2
            for k in (-1, 0, 1):
                P.line([(cx, eye_y + k * 1.5), (cx + side * 3.5, eye_y + k * 2.6)], _shade(skin, 0.7), 0.6)

    # Nose.
    nose_y = eye_y + rng.uniform(22, 27)
    nose_w = rng.uniform(6, 8) + (3 if A["Big_Nose"] else 0) - (1.5 if A["Pointy_Nose"] else 0)
    nx = fx * 1.3
    ridge = [(nx + shadow_side * 3, eye_y + 4), (nx + shadow_side * 4, nose_y - 5), (nx + shadow_side, nose_y)]
    P.line(ridge, _shade(skin, 0.8), 1.4)
    P.ellipse(nx, nose_y - 1.5, nose_w * 0.55, 3.5 if not A["Pointy_Nose"] else 2.6, _shade(skin, 1.05), n=16)
    for side in (-1, 1):
        P.ellipse(nx + side * nose_w * 0.5, nose_y + 0.5, nose_w * 0.22, 1.4, _shade(skin, 0.5), n=10)

    # Cheeks.
    if A["Rosy_Cheeks"] or (A["Heavy_Makeup"] and rng.random() < 0.5):
        for side in (-1, 1):
            P.ellipse(side * (eye_sep + 6) + fx, nose_y - 4, 9, 6, (230, 90, 100, 60))
    if A["High_Cheekbones"]:
        for side in (-1, 1):
            start, end = (60, 100) if side > 0 else (120, 80)
            P.arc(side * (eye_sep + 10) + fx, nose_y - 9, 8, 10, start, end, _shade(skin, 0.82) + (120,), 1.2)

    # Beard and mustache sit under the mouth.
    mouth_y = nose_y + rng.uniform(10, 14)
    mouth_w = rng.uniform(10, 13) + (3 if A["Smiling"] else 0)
    beard_col = _shade(hair, 0.85)
    if A["Goatee"] and A["Mustache"] and rng.random() < 0.6:  # full beard along the jaw
        P.poly([(x, y) for x, y in outline if y > mouth_y - 14 and abs(x) < ax * 0.97] +
               [(-ax * 0.9, mouth_y - 16)], beard_col)
        P.ellipse(fx, mouth_y, mouth_w + 1, 4, skin)
    elif A["Goatee"]:
        P.poly([(fx - mouth_w * 0.6, mouth_y + 3), (fx + mouth_w * 0.6, mouth_y + 3),
                (fx + 6, ay - 1), (fx - 6, ay - 1)], beard_col)
    if A["Mustache"]:
        P.poly([(fx - mouth_w - 1, mouth_y - 1), (fx, mouth_y - 7),
                (fx + mouth_w + 1, mouth_y - 1), (fx, mouth_y - 3.5)], beard_col)

    # Mouth.
    lip = _jitter(rng, (190, 40, 60) if A["Wearing_Lipstick"] else _mix(skin, (170, 70, 70), 0.45), 12)
    lip_h = rng.uniform(2.2, 3) + (1.5 if A["Big_Lips"] else 0)
    mx = fx * 1.1
    if A["Smiling"]:
        curve = rng.uniform(3, 6)
        if A["Mouth_Slightly_Open"]:
            P.poly(arc_points(mx, mouth_y - 1, mouth_w, curve + 4, 0, 180, 14), (70, 20, 25))
            P.poly(arc_points(mx, mouth_y - 1, mouth_w * 0.85, curve + 0.5, 0, 180, 12), (245, 242, 232))
            P.arc(mx, mouth_y - 1, mouth_w, curve + 4, 0, 180, lip, lip_h * 0.7)
            P.line([(mx - mouth_w, mouth_y - 1), (mx + mouth_w, mouth_y - 1)], lip, lip_h * 0.55)
        else:
            P.arc(mx, mouth_y - curve, mouth_w, curve + 1, 15, 165, lip, lip_h)
            P.arc(mx, mouth_y - curve - 0.5, mouth_w, curve + 1, 15, 165, (90, 30, 35), 0.8)
    else:
        if A["Mouth_Slightly_Open"]:
            P.ellipse(mx, mouth_y, mouth_w * 0.7, 2.2, (70, 20, 25), n=16)
        P.poly(arc_points(mx, mouth_y - 0.5, mouth_w, lip_h * 0.9, 180, 360, 12), lip)
        P.poly(arc_points(mx, mouth_y + 0.5, mouth_w * 0.9, lip_h * 1.2, 0, 180, 12), _shade(lip, 1.08))
        P.line([(mx - mouth_w, mouth_y), (mx, mouth_y + rng.uniform(-0.5, 0.5)), (mx + mouth_w, mouth_y)], (90, 35, 40), 0.8)

    # Glasses over everything on the face.
    if A["Eyeglasses"]:
        frame = _jitter(rng, rng.choice(((20, 20, 20), (90, 60, 30), (170, 170, 180), (120, 20, 30))), 10)
        sun = rng.random() < 0.15
        gw, gh = eye_w * 1.5, eye_h * 2.2 + 2
        for side in (-1, 1):
            gx = side * eye_sep + fx
            box = [(gx - gw, eye_y - gh), (gx + gw, eye_y - gh), (gx + gw * 0.9, eye_y + gh),
                   (gx - gw * 0.9, eye_y + gh), (gx - gw, eye_y - gh)]
            if sun:
                P.poly(box[:4], (20, 20, 25, 215))
            P.line(box, frame, 1.3)
            P.line([(gx + side * gw, eye_y - gh + 1), (side * (ax - 1), eye_y - 3)], frame, 1.1)
        P.arc(fx, eye_y - gh + 3, eye_sep - gw, 2.5, 190, 350, frame, 1.2, n=8)

    out = img.reduce(SUPERSAMPLE)
    out = _light(out, rng, light)
    if A["Blurry"]:
        out = out.filter(ImageFilter.GaussianBlur(rng.uniform(1.2, 2.2)))
    return out


def _draw_hair(P: _Painter, rng: random.Random, A: dict[str, bool], hair: Color, ax: float, ay: float,
               brow_y: float, long_hair: bool, fx: float) -> None:
    """The cap of hair over the skull, closed by a hairline whose shape depends on the style."""
    top = -ay - rng.uniform(4, 12) - (6 if A["Wavy_Hair"] else 0)
    w = ax + rng.uniform(2, 7)
    cap = arc_points(0, -6, w, -top - 6, 180, 360, 22)  # from the left temple over the top
    if A["Bangs"]:
        fringe = brow_y - rng.uniform(3, 7)
        jag = [(x, fringe + (1.5 if k % 2 else -0.5)) for k, x in enumerate(
            [w * 0.9 - i * (1.8 * w) / 11 for i in range(12)])]
        line = [(w, 0)] + jag + [(-w, 0)]
    else:
        hl = brow_y - rng.uniform(12, 18) - (12 if A["Receding_Hairline"] else 0)
        part = rng.choice(("side", "middle", "swept"))
        if part == "middle":
            line = [(w, 4), (ax * 0.7, hl + 6), (fx, hl - 3), (-ax * 0.7, hl + 6), (-w, 4)]
        elif part == "side":
            s = rng.choice((-1, 1))
            line = [(s * w, 2), (s * ax * 0.6, hl + 2), (s * ax * 0.3, hl - 5),
                    (-s * ax * 0.2, hl + 2), (-s * ax * 0.8, hl + 10), (-s * w, 6)]
            line = line if s == 1 else line[::-1]  # the cap ends on the right: go right to left
        else:
            line = [(w, 0), (ax * 0.8, hl + 4), (ax * 0.2, hl), (-ax * 0.5, hl + 4), (-w, 2)]
        if A["Receding_Hairline"]:
            line = [(x, y - (6 if abs(x) > ax * 0.3 else 0)) for x, y in line]
    P.poly(cap + line, hair)
    if not A["Straight_Hair"]:  # waves/curls: bumps along the outline
        r = 4.5 if A["Wavy_Hair"] else 3.2
        for x, y in arc_points(0, -6, w, -top - 6, 180, 360, 16 if A["Wavy_Hair"] else 26)[1:-1]:
            P.ellipse(x, y, r, r, hair, n=10)
        if long_hair:
            for k in range(8):
                yy = 10 + k * 9
                for side in (-1, 1):
                    P.ellipse(side * (w + 1 + (k % 2) * 2), yy, r, r, hair, n=10)
    # Strands: a few darker lines give the hair some texture.
    strand = _shade(hair, 0.75 if sum(hair) > 200 else 1.6)
    for _ in range(rng.randint(2, 5)):
        x0 = rng.uniform(-w * 0.7, w * 0.7)
        P.line([(x0, top + 5), (x0 * 1.25 + rng.uniform(-4, 4), top * 0.45)], strand + (110,), 0.8)


def _light(img, rng: random.Random, side: float):
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


# ----------------------------------------------------------------------------------------------
# The tree: images, partition file, attribute file
# ----------------------------------------------------------------------------------------------

def partition_sizes(n: int) -> tuple[int, int, int]:
    """Split n images in CelebA's official proportions; each split gets ≥1 image when n ≥ 3."""
    total = sum(OFFICIAL_PARTITION)
    val = round(n * OFFICIAL_PARTITION[1] / total)
    test = round(n * OFFICIAL_PARTITION[2] / total)
    if n >= 3:
        val, test = max(val, 1), max(test, 1)
    train = n - val - test
    return train, val, test


def render_image(seed: int, index: int, quality: int | None = None) -> tuple[bytes, dict[str, bool]]:
    """The JPEG bytes and attributes of image ``index`` (1-based) of the tree drawn with ``seed``."""
    rng = random.Random(f"celeba-synthetic:{seed}:{index}")
    attrs = sample_attributes(rng)
    img = draw_face(rng, attrs)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality or rng.randint(86, 95), subsampling=2)
    return buf.getvalue(), attrs


def _render_chunk(seed: int, indices: Sequence[int], folder: str | None) -> list[tuple[int, bytes | None, list[int]]]:
    """Worker: render images; write them into ``folder`` (returning no bytes) or return the bytes."""
    out = []
    for i in indices:
        data, attrs = render_image(seed, i)
        if folder is not None:
            Path(folder, f"{i:06d}.jpg").write_bytes(data)
            data = None
        out.append((i, data, [1 if attrs[name] else -1 for name in ATTRIBUTES]))
    return out


def _chunks(n: int, size: int) -> Iterator[list[int]]:
    for start in range(1, n + 1, size):
        yield list(range(start, min(n, start + size - 1) + 1))


def write_synthetic_celeba(out_dir: str | os.PathLike, n: int, seed: int = 0, *, as_zip: bool = False,
                           workers: int | None = None, progress: bool = False) -> Path:
    """Write a CelebA-layout tree of ``n`` synthetic faces into ``out_dir`` and return it.

    Layout: ``img_align_celeba/000001.jpg…`` (or ``img_align_celeba.zip`` holding that folder
    when ``as_zip``), ``list_eval_partition.txt`` (official proportions, train ids first, then
    val, then test) and ``list_attr_celeba.txt`` (the 40 official attributes, 1/-1). The bytes
    depend only on ``n`` and ``seed``, never on ``workers``.
    """
    if not isinstance(n, int) or n < 1:
        raise UserError(f"--n must be a positive number of images, got {n!r}")
    if n > 999_999:
        raise UserError(f"--n {n} is too large: CelebA file names have six digits (at most 999999 images)")
    workers = max(1, int(workers or usable_cores()))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    img_dir = out / "img_align_celeba"
    zip_path = out / "img_align_celeba.zip"
    if not as_zip:
        img_dir.mkdir(exist_ok=True)
    rows: dict[int, list[int]] = {}
    chunk = max(8, min(256, n // (workers * 8) or 8))
    folder = None if as_zip else str(img_dir)
    zf = None
    if as_zip:
        tmp_zip = zip_path.with_name(zip_path.name + ".tmp")
        zf = zipfile.ZipFile(tmp_zip, "w", compression=zipfile.ZIP_STORED)
        zf.writestr(_zip_info("img_align_celeba/"), b"")
    bar = _progress(progress)
    try:
        task = bar.add_task("drawing faces", total=n) if bar else None
        for indices, results in _run_chunks(seed, n, chunk, folder, workers):
            for i, data, row in results:
                rows[i] = row
                if zf is not None:
                    zf.writestr(_zip_info(f"img_align_celeba/{i:06d}.jpg"), data)
            if bar:
                bar.advance(task, len(indices))
    finally:
        if bar:
            bar.stop()
        if zf is not None:
            zf.close()
    if zf is not None:
        os.replace(tmp_zip, zip_path)

    train, val, _ = partition_sizes(n)
    lines = [f"{i:06d}.jpg {0 if i <= train else 1 if i <= train + val else 2}\n" for i in range(1, n + 1)]
    (out / "list_eval_partition.txt").write_text("".join(lines))
    attr_lines = [f"{n}\n", " ".join(ATTRIBUTES) + " \n"]
    attr_lines += [f"{i:06d}.jpg" + "".join(f" {v:2d}" for v in rows[i]) + "\n" for i in range(1, n + 1)]
    (out / "list_attr_celeba.txt").write_text("".join(attr_lines))
    return out


def _zip_info(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))  # fixed: byte-identical zips
    info.external_attr = (0o40755 << 16) | 0x10 if name.endswith("/") else 0o644 << 16
    return info


def _run_chunks(seed: int, n: int, chunk: int, folder: str | None, workers: int):
    """Yield (indices, results) in index order, rendering chunks in a process pool when workers > 1."""
    chunks = list(_chunks(n, chunk))
    if workers == 1 or len(chunks) == 1:
        for idx in chunks:
            yield idx, _render_chunk(seed, idx, folder)
        return
    import multiprocessing as mp

    with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn")) as pool:
        # Bounded look-ahead: zip mode holds rendered bytes in memory until they are written.
        pending = []
        it = iter(chunks)
        for idx in it:
            pending.append((idx, pool.submit(_render_chunk, seed, idx, folder)))
            if len(pending) >= 4 * workers:
                break
        while pending:
            idx, fut = pending.pop(0)
            nxt = next(it, None)
            if nxt is not None:
                pending.append((nxt, pool.submit(_render_chunk, seed, nxt, folder)))
            try:
                results = fut.result()
            except BrokenProcessPool:
                raise UserError("a drawing worker process died. When calling write_synthetic_celeba() from a "
                                "script, put the call under `if __name__ == '__main__':` (workers are spawned and "
                                "re-import the script), or pass workers=1") from None
            yield idx, results


def _progress(enabled: bool):
    if not enabled:
        return None
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    bar.start()
    return bar


@cli_entry
def main(argv: Sequence[str] | None = None) -> int:
    """CLI: ``python -m pipeline.synthetic --out DIR --n N [--seed S] [--zip] [--workers W]``."""
    import time

    from rich.console import Console
    from rich.table import Table

    parser = argparse.ArgumentParser(prog="python -m pipeline.synthetic",
                                     description="Write a CelebA-layout tree of procedurally drawn faces.")
    parser.add_argument("--out", required=True, help="output folder (created if missing)")
    parser.add_argument("--n", type=int, required=True, help="number of images")
    parser.add_argument("--seed", type=int, default=0, help="the same seed gives the same bytes")
    parser.add_argument("--zip", action="store_true", help="write img_align_celeba.zip instead of the folder")
    parser.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    args = parser.parse_args(argv)
    if args.workers is not None and args.workers < 1:
        raise UserError(f"--workers must be ≥ 1, got {args.workers}")
    t0 = time.perf_counter()
    out = write_synthetic_celeba(args.out, args.n, args.seed, as_zip=args.zip, workers=args.workers, progress=True)
    dt = time.perf_counter() - t0
    train, val, test = partition_sizes(args.n)
    table = Table(title=f"synthetic CelebA → {out}")
    for col in ("images", "train", "val", "test", "layout", "seconds", "images/s"):
        table.add_column(col, justify="right")
    table.add_row(f"{args.n:,}", f"{train:,}", f"{val:,}", f"{test:,}", "zip" if args.zip else "folder",
                  f"{dt:.1f}", f"{args.n / dt:,.0f}")
    Console().print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
