"""Colours: blending helpers and the palettes faces are drawn from."""
from __future__ import annotations

import random
from typing import Sequence

Color = tuple[int, int, int]
RGBA = tuple[int, int, int, int]

SKIN_TONES: tuple[Color, ...] = (  # pale to dark; a skin colour is interpolated between neighbours
    (255, 226, 204), (243, 201, 164), (228, 178, 138), (206, 146, 106),
    (170, 112, 78), (128, 82, 56), (92, 60, 42),
)
HAIR_COLORS: dict[str, Color] = {
    "black": (28, 22, 20), "brown": (96, 60, 34), "blond": (214, 178, 112),
    "gray": (168, 166, 162), "auburn": (136, 62, 32),
}
EYE_COLORS: tuple[Color, ...] = (
    (62, 38, 22), (92, 60, 30), (58, 96, 150), (70, 110, 70), (110, 100, 60), (90, 96, 104),
)
EYESHADOW_COLORS: tuple[Color, ...] = ((120, 70, 110), (70, 90, 140), (110, 80, 60))
CLOTHES_COLORS: tuple[Color, ...] = (  # also hats
    (30, 30, 36), (240, 240, 236), (160, 30, 40), (40, 60, 130), (60, 110, 70),
    (200, 160, 60), (120, 120, 130), (90, 50, 90), (200, 110, 130), (30, 90, 110),
)
NECKTIE_COLORS: tuple[Color, ...] = ((150, 20, 30), (20, 40, 110), (40, 40, 40), (120, 90, 30))
GLASSES_FRAME_COLORS: tuple[Color, ...] = ((20, 20, 20), (90, 60, 30), (170, 170, 180), (120, 20, 30))


def mix(a: Sequence[float], b: Sequence[float], t: float) -> Color:
    """``a`` moved a fraction ``t`` of the way towards ``b``."""
    return tuple(int(round(a[i] + (b[i] - a[i]) * t)) for i in range(3))  # type: ignore[return-value]


def shade(c: Sequence[float], f: float) -> Color:
    """``c`` darkened (``f`` < 1) or brightened (``f`` > 1), clipped to 0..255; alpha dropped."""
    return tuple(max(0, min(255, int(round(v * f)))) for v in c[:3])  # type: ignore[return-value]


def jitter(rng: random.Random, c: Color, amount: int) -> Color:
    """``c`` with each channel moved by a random integer in ``[-amount, amount]``."""
    return tuple(max(0, min(255, v + rng.randint(-amount, amount))) for v in c)  # type: ignore[return-value]


def sample_skin(rng: random.Random, pale: bool) -> Color:
    """A skin colour along ``SKIN_TONES`` (only the palest end when ``pale``), jittered."""
    t = rng.random() * 0.12 if pale else rng.betavariate(1.6, 2.2)
    pos = t * (len(SKIN_TONES) - 1)
    i = min(int(pos), len(SKIN_TONES) - 2)
    return jitter(rng, mix(SKIN_TONES[i], SKIN_TONES[i + 1], pos - i), 6)


def sample_hair(rng: random.Random, label: str | None) -> Color:
    """Hair of the labelled colour (a key of ``HAIR_COLORS``), jittered; unlabelled hair (``None``)
    comes out auburn: jittered auburn, or plain auburn where the draw fell on brown, so that it
    never looks like a labelled colour."""
    hair = jitter(rng, HAIR_COLORS[label if label is not None else "auburn" if rng.random() < 0.5 else "brown"], 12)
    if label is None and hair[0] < 120:
        hair = HAIR_COLORS["auburn"]
    return hair
