"""Procedurally drawn faces in CelebA's layout: the embedded default data set.

``write_synthetic_celeba`` writes what CelebA ships (``img_align_celeba/000001.jpg``… or the
zip of that folder, ``list_eval_partition.txt``, ``list_attr_celeba.txt``), so every later
step runs with no download and the VAE still has real structure to learn: a face with skin
tone, eyes, brows, nose, mouth, hair, ears, neck and clothes, varied background, pose (roll,
yaw, scale, shift) and lighting. Attributes in the attribute file are the ones drawn where that
is cheap to know (Male, Smiling, Eyeglasses, hair colour, beard, hat, ...).

Every image is drawn from its own RNG seeded by ``(seed, image number)``, so the output is
identical whatever the worker count; the order of the random draws is part of that contract
(see ``face.py``), and ``GENERATOR_VERSION`` (tree.py) names the drawing: raise it with any change
to what is drawn, so that trees of the older drawing are not reused (the tree's record,
``.synthetic.json``, holds it).

Where things are:

    attributes.py  ATTRIBUTES (official order) and ``sample_attributes``
    tree.py        ``render_image``, ``partition_sizes``, ``write_synthetic_celeba`` (folder or zip, list files,
                   the record), ``read_record`` / ``write_record``, ``GENERATOR_VERSION``
    face.py        ``draw_face``: the drawing steps in order (= the order of the random draws)
    geometry.py    FaceGeometry: one face's sizes, positions and colours, read by the steps
    features.py    ears, head, eyes and brows, nose, cheeks, beard, mouth, glasses
    hair.py        hair (behind, cap and hairline, bald fringe, sideburns) and hats
    body.py        shoulders, neck, necktie, necklace
    scene.py       the background, then lighting and blur of the finished image
    canvas.py      image size, the pose transform and the painter (shapes in face coordinates, drawn at 2x)
    colors.py      colour helpers (mix, shade, jitter) and palettes
    cli.py         ``main``: ``python -m pipeline.synthetic`` / ``celeba-synthetic``
"""
from __future__ import annotations

from .attributes import ATTRIBUTES, sample_attributes
from .cli import main
from .face import draw_face
from .tree import (GENERATOR_VERSION, OFFICIAL_PARTITION, RECORD, partition_sizes, read_record, render_image,
                   write_record, write_synthetic_celeba)

__all__ = ["ATTRIBUTES", "GENERATOR_VERSION", "OFFICIAL_PARTITION", "RECORD", "draw_face", "main", "partition_sizes",
           "read_record", "render_image", "sample_attributes", "write_record", "write_synthetic_celeba"]
