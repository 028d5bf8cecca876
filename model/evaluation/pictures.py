"""Labelled tables of faces: interpolation strips, reconstructions with their error, edit grids.

The run directory's pictures (model/training/observe.py) have fixed layouts; the commands need
rows and columns that each carry a label (a key and its MSE, an attribute and its amount). The
table is composed directly with PIL, each face enlarged ``SCALE``× without smoothing (the model's
own pixels) and the labels set in matplotlib's DejaVu Sans (it has μ, →, −): a table of hundreds of
faces takes a fraction of a second, where a matplotlib axes per face takes many seconds, and the
picture's size follows from the table alone.
"""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Sequence

import torch

from model.evaluation.outputs import to_uint8, write_atomic

Cell = torch.Tensor | None  # 3×H×W in [0, 1], or an empty cell
#: Each face is shown SCALE× its size, PAD pixels apart; labels and titles use these font sizes.
SCALE, PAD, LABEL_PX, TITLE_PX = 2, 6, 11, 13


@functools.lru_cache(maxsize=None)
def _font(size: int):
    from PIL import ImageFont

    try:
        from matplotlib import font_manager

        return ImageFont.truetype(font_manager.findfont("DejaVu Sans"), size)
    except (ImportError, OSError, ValueError):  # no matplotlib font: PIL's own
        return ImageFont.load_default(size)


def _size(row_lines: Sequence[int], n_cols: int, face: tuple[int, int], left: int, title_width: int) -> tuple[int, int]:
    """(width, height) in pixels of a table of faces of ``face`` = (height, width), with
    ``row_lines[i]`` lines of labels over row i."""
    width = max(left + n_cols * (face[1] * SCALE + PAD), title_width + 2 * PAD)
    return width, TITLE_PX + 2 * PAD + sum(_band(n) + face[0] * SCALE + PAD for n in row_lines)


def _band(lines: int) -> int:
    return lines * (LABEL_PX + 3)


def plot_table(rows: Sequence[Sequence[Cell]], path: str | Path, *, title: str,
               cell_labels: Sequence[Sequence[str]] | None = None, row_labels: Sequence[str] | None = None) -> Path:
    """One PNG: ``rows`` of images, an optional label over each cell and before each row."""
    from PIL import Image, ImageDraw

    label_font, title_font = _font(LABEL_PX), _font(TITLE_PX)
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    h, w = next(c for r in rows for c in r if c is not None).shape[-2:]
    cw, ch = w * SCALE, h * SCALE
    n_cols = max(len(r) for r in rows)
    row_lines = [max((lab.count("\n") + 1 for lab in labels if lab), default=0)
                 for labels in (cell_labels or [[]] * len(rows))]
    left = PAD + (max(measure.textlength(lab, font=label_font) for lab in row_labels) + PAD if row_labels else 0)
    width, height = _size(row_lines, n_cols, (h, w), int(left), int(measure.textlength(title, font=title_font)))
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((width // 2, PAD), title, fill="black", font=title_font, anchor="ma")
    y = TITLE_PX + 2 * PAD
    for i, row in enumerate(rows):
        band = _band(row_lines[i])
        for j, image in enumerate(row):
            x = int(left) + j * (cw + PAD)
            label = cell_labels[i][j] if cell_labels and j < len(cell_labels[i]) else ""
            if label:
                draw.multiline_text((x + cw // 2, y), _fit(label, label_font, cw + PAD, measure), fill="black",
                                    font=label_font, anchor="ma", align="center", spacing=3)
            if image is not None:
                face = Image.fromarray(to_uint8(image[None])[0]).resize((cw, ch), Image.Resampling.NEAREST)
                canvas.paste(face, (x, y + band))
        if row_labels:
            draw.text((int(left) - PAD, y + band + ch // 2), row_labels[i], fill="black", font=label_font, anchor="rm")
        y += band + ch + PAD
    return write_atomic(path, lambda tmp: canvas.save(tmp, "PNG"))


def _fit(label: str, font, width: int, measure) -> str:
    """Each line of ``label`` shortened with … until it fits ``width`` pixels."""
    out = []
    for line in label.split("\n"):
        while len(line) > 1 and measure.textlength(line, font=font) > width:
            line = line[:-2] + "…"
        out.append(line)
    return "\n".join(out)


def chunked(items: Sequence, width: int) -> list[Sequence]:
    """``items`` in rows of at most ``width``."""
    return [items[i:i + width] for i in range(0, len(items), width)]
