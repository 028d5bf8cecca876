"""Attribute directions: for each CelebA attribute, mean μ of the faces with it minus mean μ of those without.

Adding a direction to a face's code moves it, on average, from "without" to "with" (amount 1 is
the whole average difference). An attribute needs ``min_count`` faces on both sides, or its mean is
mostly one face's identity; those are named and skipped. Directions are saved beside the
checkpoint (``attributes.pt``) with the fingerprint of the weights they were computed from, so an
edit never uses directions of another checkpoint.
"""
from __future__ import annotations

import difflib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from model.evaluation.outputs import write_atomic
from pipeline.errors import ConfigError

FORMAT = "celeba-vae-attributes/1"
FILE_NAME = "attributes.pt"


@dataclass
class Directions:
    """Directions of the attributes with enough faces on both sides, and what was skipped."""

    names: list[str]  # every attribute of the shards, in file order
    vectors: dict[str, torch.Tensor]  # kept attribute → direction [D]
    positives: dict[str, int]  # every attribute → faces with it
    count: int  # faces encoded
    min_count: int
    separation: dict[str, float] = field(default_factory=dict)  # kept → balanced accuracy of the projection
    source: dict[str, Any] = field(default_factory=dict)  # shards, split, checkpoint, step, fingerprint

    @property
    def skipped(self) -> dict[str, int]:
        """Attributes without a direction → their positives."""
        return {n: self.positives[n] for n in self.names if n not in self.vectors}

    def resolve(self, name: str) -> str:
        """The attribute called ``name`` (see :func:`resolve_name`); ConfigError when it has no direction."""
        found = resolve_name(name, self.names)
        if found not in self.vectors:
            pos = self.positives[found]
            raise ConfigError(f"attribute {found!r} has no direction: {pos} of {self.count} faces have it and "
                              f"{self.count - pos} do not, fewer than --min-count {self.min_count} on one side")
        return found


def resolve_name(name: str, names: Sequence[str]) -> str:
    """The attribute of ``names`` called ``name``, ignoring case; ConfigError naming the closest one."""
    by_lower = {n.lower(): n for n in names}
    found = by_lower.get(name.lower())
    if found is None:
        close = difflib.get_close_matches(name.lower(), by_lower, n=1, cutoff=0.5)
        hint = f"did you mean {by_lower[close[0]]!r}?" if close else f"known: {', '.join(names)}"
        raise ConfigError(f"unknown attribute {name!r} ({hint})")
    return found


def compute_directions(mu: torch.Tensor, table: np.ndarray, names: Sequence[str], *, min_count: int,
                       source: dict[str, Any]) -> Directions:
    """Directions from codes ``mu`` [N, D] and an attribute table [N, A] (bool, columns = ``names``)."""
    present = torch.from_numpy(np.ascontiguousarray(table)).bool()
    n = mu.shape[0]
    vectors, separation, positives = {}, {}, {}
    for j, name in enumerate(names):
        has = present[:, j]
        pos = int(has.sum())
        positives[name] = pos
        if min(pos, n - pos) < min_count:
            continue
        mean_with, mean_without = mu[has].mean(0), mu[~has].mean(0)
        d = mean_with - mean_without
        vectors[name] = d
        # Projection on d, thresholded halfway between the two means: how well d alone tells them apart.
        score = (mu - (mean_with + mean_without) / 2) @ d
        separation[name] = 0.5 * (float((score[has] > 0).float().mean()) + float((score[~has] <= 0).float().mean()))
    return Directions(list(names), vectors, positives, n, min_count, separation, dict(source))


def save_directions(d: Directions, path: Path) -> Path:
    doc = asdict(d)
    doc["vectors"] = {k: v.contiguous() for k, v in d.vectors.items()}
    return write_atomic(path, lambda tmp: torch.save({"format": FORMAT, **doc}, tmp))


def load_directions(path: Path, fingerprint: str) -> Directions:
    """Directions saved by :func:`save_directions`; ConfigError when foreign or from other weights."""
    not_ours = f"{path} is not an attribute-directions file of this project (format {FORMAT}, written by `python -m " \
               "model attributes`)"
    try:
        doc = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # torch's own text (a zip error, an unpickling refusal) is long and says less than this
        raise ConfigError(not_ours) from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ConfigError(not_ours)
    doc.pop("format")
    try:
        d = Directions(**doc)
    except TypeError as err:  # a field missing or unknown: another version's file, or an edited one
        raise ConfigError(f"{path} is damaged: its fields do not match {FORMAT} ({err})") from None
    if not (_is_map(d.vectors, str, torch.Tensor) and _is_map(d.positives, str, int) and isinstance(d.source, dict)
            and isinstance(d.names, list) and set(d.vectors) <= set(d.positives) == set(d.names)):
        raise ConfigError(f"{path} is damaged: its names, vectors and counts do not fit together ({FORMAT})")
    made_from = d.source.get("fingerprint")
    if made_from != fingerprint:
        raise ConfigError(f"{path} holds directions of other weights (checkpoint {d.source.get('checkpoint')}, step "
                          f"{d.source.get('step')})")
    return d


def _is_map(value: Any, key_type: type, value_type: type) -> bool:
    return isinstance(value, dict) and all(isinstance(k, key_type) and isinstance(v, value_type)
                                           for k, v in value.items())


def parse_amount(spec: str) -> tuple[str, float]:
    """``NAME=AMOUNT`` (``--add Smiling=1.5``) → (name, amount); a bare NAME means amount 1."""
    name, sep, value = spec.partition("=")
    if not name.strip():
        raise ConfigError(f"--add {spec!r}: expected NAME=AMOUNT, e.g. Smiling=1.5")
    if not sep:
        return name.strip(), 1.0
    try:
        amount = float(value)
    except ValueError:
        raise ConfigError(f"--add {spec!r}: {value!r} is not a number (expected NAME=AMOUNT, e.g. Smiling=1.5)") from None
    if not np.isfinite(amount):
        raise ConfigError(f"--add {spec!r}: the amount must be finite")
    return name.strip(), amount
