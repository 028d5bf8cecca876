"""The face itself: ears, head, eyes and brows, nose, cheeks, beard, mouth, glasses.

Each ``draw_*`` paints one feature if the attributes call for it; ``place_*`` only draws
positions that several later features read. A step that draws a position records it on the
``FaceGeometry``.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

from .canvas import Painter, arc_points
from .colors import EYE_COLORS, EYESHADOW_COLORS, GLASSES_FRAME_COLORS, Color, jitter, mix, shade
from .geometry import FaceGeometry


def draw_ears(painter: Painter, rng: random.Random, attrs: dict[str, bool], face: FaceGeometry) -> None:
    """Both ears, except one turned well away (it hides behind the cheek); earrings if worn."""
    face.ear_y = rng.uniform(-4, 4)
    for side in (-1, 1):
        if side * face.yaw < -0.6:
            continue
        ex = side * (face.half_width - 2 - side * face.feature_dx * 0.3)
        painter.ellipse(ex, face.ear_y, 7, 13, face.shadow_skin)
        painter.ellipse(ex + side * 1.5, face.ear_y, 4, 9, shade(face.skin, 0.68))
        if attrs["Wearing_Earrings"]:
            metal = (225, 190, 80) if rng.random() < 0.6 else (220, 220, 230)
            painter.ellipse(ex, face.ear_y + 15, 2.5, 2.5, metal, n=10)


def draw_head(painter: Painter, rng: random.Random, attrs: dict[str, bool], face: FaceGeometry) -> None:
    """The skin-coloured head, a soft shadow on the side away from the light, a double chin."""
    painter.poly(face.outline, face.skin)
    face.light = rng.uniform(-1, 1)
    shaded = [(x, y) for x, y in face.outline if x * face.shadow_side > face.half_width * 0.45]
    painter.poly(shaded, shade(face.skin, 0.86) + (int(90 * abs(face.light)),))
    if attrs["Double_Chin"]:
        painter.arc(0, face.half_height - 2, face.half_width * 0.45, 7, 20, 160, shade(face.skin, 0.7), 1.6)


def draw_stubble(painter: Painter, attrs: dict[str, bool], face: FaceGeometry) -> None:
    """A five o'clock shadow: a translucent dark band over the jaw."""
    if not attrs["5_o_Clock_Shadow"]:
        return
    ax = face.half_width
    jaw = [(x, y) for x, y in face.outline if y > 14]
    painter.poly(jaw + [(-ax * 0.55, 24), (0, 30), (ax * 0.55, 24)], (60, 50, 45, 60))


def place_brows_and_eyes(rng: random.Random, face: FaceGeometry) -> None:
    """The brow line and the eyes' height below it (before the hair: the hairline hangs off the brows)."""
    face.brow_y = rng.uniform(-18, -13)
    face.eye_y = face.brow_y + rng.uniform(9, 12)


@dataclass(frozen=True)
class _Brow:
    color: Color
    width: float  # stroke
    arch: float  # how high the middle rises
    tilt: float  # how much the outer ends rise (> 0 raises the right one)


def draw_eyes_and_brows(painter: Painter, rng: random.Random, attrs: dict[str, bool], face: FaceGeometry) -> None:
    """Both eyes (eye shadow, bags, white, iris, pupil, glint, lid), their brows and crow's feet."""
    narrow = 0.55 if attrs["Narrow_Eyes"] else 1.0
    smile_squint = 0.65 if attrs["Smiling"] else 1.0  # the raised cheeks of a real smile narrow the eyes
    face.eye_spacing = rng.uniform(17, 21)
    face.eye_half_width = rng.uniform(7, 9)
    face.eye_half_height = rng.uniform(3.4, 4.6) * narrow * smile_squint
    iris = jitter(rng, rng.choice(EYE_COLORS), 10)
    gaze = rng.uniform(-1.5, 1.5) + face.yaw
    brow_color = (shade(face.hair, 0.75) if not attrs["Blond_Hair"] and not attrs["Gray_Hair"]
                  else mix(face.hair, (90, 70, 50), 0.6))
    brow_width = rng.uniform(2.2, 3.2) + (1.6 if attrs["Bushy_Eyebrows"] else 0)
    arch = rng.uniform(1.5, 3) + (2.5 if attrs["Arched_Eyebrows"] else 0)
    brow = _Brow(brow_color, brow_width, arch, tilt=rng.uniform(-2, 2))
    for side in (-1, 1):
        _draw_eye(painter, rng, attrs, face, side, iris, gaze)
        _draw_brow(painter, face, side, brow)
        if not attrs["Young"]:
            _draw_crows_feet(painter, face, side)


def _perspective(face: FaceGeometry, side: int) -> float:
    """Width factor of the eye on ``side``: the eye nearer the viewer looks bigger."""
    return 1.0 + 0.12 * side * face.yaw


def _eye_x(face: FaceGeometry, side: int) -> float:
    return side * face.eye_spacing + face.feature_dx


def _draw_eye(painter: Painter, rng: random.Random, attrs: dict[str, bool], face: FaceGeometry, side: int,
              iris: Color, gaze: float) -> None:
    persp, ex, eye_y = _perspective(face, side), _eye_x(face, side), face.eye_y
    eye_w, eye_h = face.eye_half_width, face.eye_half_height
    if attrs["Heavy_Makeup"]:
        shadow = jitter(rng, rng.choice(EYESHADOW_COLORS), 20)
        painter.ellipse(ex, eye_y - 2.5, eye_w * 1.2 * persp, eye_h * 1.6, shadow + (110,))
    if attrs["Bags_Under_Eyes"]:
        painter.arc(ex, eye_y + eye_h * 0.6, eye_w * 0.9, eye_h * 1.2, 20, 160, shade(face.skin, 0.75) + (160,), 1.2)
    painter.ellipse(ex, eye_y, eye_w * persp, eye_h, (240, 236, 230), n=20)
    ir = min(eye_h * 1.05, 3.6) * persp
    painter.ellipse(ex + gaze, eye_y, ir, ir, iris, n=14)
    painter.ellipse(ex + gaze, eye_y, ir * 0.5, ir * 0.5, (12, 10, 10), n=10)
    painter.ellipse(ex + gaze + 0.8, eye_y - 0.9, 0.6, 0.6, (250, 250, 250), n=6)
    lid = (30, 22, 20) if attrs["Heavy_Makeup"] else shade(face.skin, 0.45)
    painter.arc(ex, eye_y, eye_w * persp, eye_h, 185, 355, lid, 1.3 if attrs["Heavy_Makeup"] else 0.9)


def _draw_brow(painter: Painter, face: FaceGeometry, side: int, brow: _Brow) -> None:
    persp, ex = _perspective(face, side), _eye_x(face, side)
    by = face.brow_y + side * brow.tilt * 0.3
    pts = arc_points(ex + side * 1.0, by + brow.arch, face.eye_half_width * 1.25 * persp, brow.arch + 1.0, 200, 340, 9)
    painter.line(pts, brow.color, brow.width)


def _draw_crows_feet(painter: Painter, face: FaceGeometry, side: int) -> None:
    cx = _eye_x(face, side) + side * face.eye_half_width * _perspective(face, side) * 1.2
    for k in (-1, 0, 1):
        painter.line([(cx, face.eye_y + k * 1.5), (cx + side * 3.5, face.eye_y + k * 2.6)], shade(face.skin, 0.7), 0.6)


def draw_nose(painter: Painter, rng: random.Random, attrs: dict[str, bool], face: FaceGeometry) -> None:
    """A ridge on the shadow side, a lighter tip and two nostrils."""
    face.nose_y = nose_y = face.eye_y + rng.uniform(22, 27)
    nose_w = rng.uniform(6, 8) + (3 if attrs["Big_Nose"] else 0) - (1.5 if attrs["Pointy_Nose"] else 0)
    nx, ss = face.feature_dx * 1.3, face.shadow_side
    ridge = [(nx + ss * 3, face.eye_y + 4), (nx + ss * 4, nose_y - 5), (nx + ss, nose_y)]
    painter.line(ridge, shade(face.skin, 0.8), 1.4)
    painter.ellipse(nx, nose_y - 1.5, nose_w * 0.55, 3.5 if not attrs["Pointy_Nose"] else 2.6, shade(face.skin, 1.05),
                    n=16)
    for side in (-1, 1):
        painter.ellipse(nx + side * nose_w * 0.5, nose_y + 0.5, nose_w * 0.22, 1.4, shade(face.skin, 0.5), n=10)


def draw_cheeks(painter: Painter, rng: random.Random, attrs: dict[str, bool], face: FaceGeometry) -> None:
    """Blush (rosy cheeks, or half the time with heavy make-up) and high-cheekbone contours."""
    fx, nose_y = face.feature_dx, face.nose_y
    if attrs["Rosy_Cheeks"] or (attrs["Heavy_Makeup"] and rng.random() < 0.5):
        for side in (-1, 1):
            painter.ellipse(side * (face.eye_spacing + 6) + fx, nose_y - 4, 9, 6, (230, 90, 100, 60))
    if attrs["High_Cheekbones"]:
        for side in (-1, 1):
            start, end = (60, 100) if side > 0 else (120, 80)
            painter.arc(side * (face.eye_spacing + 10) + fx, nose_y - 9, 8, 10, start, end,
                        shade(face.skin, 0.82) + (120,), 1.2)


def place_mouth(rng: random.Random, attrs: dict[str, bool], face: FaceGeometry) -> None:
    """The mouth's height and half-width, read by the beard and the mouth. A smile stretches the mouth
    by about half (CelebA's smiles are its widest mouths, and at 64×64 the width is what shows)."""
    face.mouth_y = face.nose_y + rng.uniform(10, 14)
    face.mouth_half_width = rng.uniform(10, 13) + (7 if attrs["Smiling"] else 0)


def draw_beard(painter: Painter, rng: random.Random, attrs: dict[str, bool], face: FaceGeometry) -> None:
    """A full beard along the jaw (most goatee + mustache faces) or a goatee; then the mustache."""
    ax, fx = face.half_width, face.feature_dx
    mouth_y, mouth_w = face.mouth_y, face.mouth_half_width
    beard_col = shade(face.hair, 0.85)
    if attrs["Goatee"] and attrs["Mustache"] and rng.random() < 0.6:
        painter.poly([(x, y) for x, y in face.outline if y > mouth_y - 14 and abs(x) < ax * 0.97] +
                     [(-ax * 0.9, mouth_y - 16)], beard_col)
        painter.ellipse(fx, mouth_y, mouth_w + 1, 4, face.skin)  # the mouth's opening in it
    elif attrs["Goatee"]:
        painter.poly([(fx - mouth_w * 0.6, mouth_y + 3), (fx + mouth_w * 0.6, mouth_y + 3),
                      (fx + 6, face.half_height - 1), (fx - 6, face.half_height - 1)], beard_col)
    if attrs["Mustache"]:
        painter.poly([(fx - mouth_w - 1, mouth_y - 1), (fx, mouth_y - 7),
                      (fx + mouth_w + 1, mouth_y - 1), (fx, mouth_y - 3.5)], beard_col)


def draw_mouth(painter: Painter, rng: random.Random, attrs: dict[str, bool], face: FaceGeometry) -> None:
    """Lips (lipstick red, or a darker skin tone), smiling or not, slightly open or not."""
    lip = jitter(rng, (190, 40, 60) if attrs["Wearing_Lipstick"] else mix(face.skin, (170, 70, 70), 0.45), 12)
    lip_h = rng.uniform(2.2, 3) + (1.5 if attrs["Big_Lips"] else 0)
    mx, mouth_y, mouth_w = face.feature_dx * 1.1, face.mouth_y, face.mouth_half_width
    if attrs["Smiling"]:
        curve = rng.uniform(3, 6)
        _draw_smile_folds(painter, face, mx, mouth_y, mouth_w)
        # Most CelebA smiles show the upper teeth: every open one here, and the broader closed ones
        # (chosen by the curve already drawn, so the smile costs no extra random draw): about 90 %.
        if attrs["Mouth_Slightly_Open"] or curve > 3.6:
            _draw_toothy_smile(painter, mx, mouth_y - curve * 0.5, mouth_w, curve + 8, lip, lip_h)
        else:  # closed: an upturned lip and the line between the lips
            painter.arc(mx, mouth_y - curve, mouth_w, curve + 1, 15, 165, lip, lip_h)
            painter.arc(mx, mouth_y - curve - 0.5, mouth_w, curve + 1, 15, 165, (90, 30, 35), 1.2)
    else:
        if attrs["Mouth_Slightly_Open"]:
            painter.ellipse(mx, mouth_y, mouth_w * 0.7, 2.2, (70, 20, 25), n=16)
        painter.poly(arc_points(mx, mouth_y - 0.5, mouth_w, lip_h * 0.9, 180, 360, 12), lip)  # upper lip
        painter.poly(arc_points(mx, mouth_y + 0.5, mouth_w * 0.9, lip_h * 1.2, 0, 180, 12), shade(lip, 1.08))  # lower
        painter.line([(mx - mouth_w, mouth_y), (mx, mouth_y + rng.uniform(-0.5, 0.5)), (mx + mouth_w, mouth_y)],
                     (90, 35, 40), 0.8)


def _draw_smile_folds(painter: Painter, face: FaceGeometry, mx: float, mouth_y: float, mouth_w: float) -> None:
    """The raised cheeks of a smile, catching the light, and the folds it pushes up from beside the nose
    to past the mouth's corners."""
    fold = shade(face.skin, 0.7) + (170,)
    for side in (-1, 1):
        painter.ellipse(side * (face.eye_spacing + 3) + face.feature_dx, face.nose_y - 3, 9, 6,
                        shade(face.skin, 1.25) + (110,))
        painter.line([(mx + side * mouth_w * 0.7, face.nose_y - 1), (mx + side * (mouth_w + 3), mouth_y - 2),
                      (mx + side * (mouth_w + 2), mouth_y + 5)], fold, 1.3)


def _draw_toothy_smile(painter: Painter, mx: float, corner_y: float, mouth_w: float, depth: float, lip: Color,
                       lip_h: float) -> None:
    """A wide open smile, its corners raised to ``corner_y``: a dark opening ``depth`` deep, the upper
    teeth as a bright band across most of it, a thin upper lip and a fuller lower one."""
    top = arc_points(mx, corner_y, mouth_w, 1.5, 0, 180, 12)  # right corner → left, sagging a little
    painter.poly(top + arc_points(mx, corner_y, mouth_w, depth, 180, 0, 14), (70, 20, 25))
    teeth_top = arc_points(mx, corner_y, mouth_w * 0.92, 1.5, 0, 180, 12)
    painter.poly(teeth_top + arc_points(mx, corner_y, mouth_w * 0.92, depth * 0.82, 180, 0, 14), (246, 243, 234))
    painter.line(top, lip, lip_h * 0.55)
    painter.arc(mx, corner_y, mouth_w, depth, 0, 180, lip, lip_h * 0.8)


def draw_glasses(painter: Painter, rng: random.Random, attrs: dict[str, bool], face: FaceGeometry) -> None:
    """Frames over everything else on the face (dark lenses 15 % of the time), temples and bridge."""
    if not attrs["Eyeglasses"]:
        return
    frame = jitter(rng, rng.choice(GLASSES_FRAME_COLORS), 10)
    sun = rng.random() < 0.15
    eye_y, eye_sep, fx = face.eye_y, face.eye_spacing, face.feature_dx
    gw, gh = face.eye_half_width * 1.5, face.eye_half_height * 2.2 + 2
    for side in (-1, 1):
        gx = side * eye_sep + fx
        box = [(gx - gw, eye_y - gh), (gx + gw, eye_y - gh), (gx + gw * 0.9, eye_y + gh),
               (gx - gw * 0.9, eye_y + gh), (gx - gw, eye_y - gh)]
        if sun:
            painter.poly(box[:4], (20, 20, 25, 215))
        painter.line(box, frame, 1.3)
        painter.line([(gx + side * gw, eye_y - gh + 1), (side * (face.half_width - 1), eye_y - 3)], frame, 1.1)
    painter.arc(fx, eye_y - gh + 3, eye_sep - gw, 2.5, 190, 350, frame, 1.2, n=8)
