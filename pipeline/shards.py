"""Preshard's output as the loaders see it: the manifest of one split, its tars and index files.

:func:`read_split` checks cheaply (sizes and index headers, no hashing) that what the manifest
lists is on disk and consistent, so a damaged folder fails at start-up with one line instead of
mid-epoch inside DALI. :func:`read_index` and :func:`part_samples` say where each sample's JPEG
sits, for the webdataset loader (which seeks to it) and for DALI's error diagnosis.
:func:`read_members` reads one member of chosen samples by key (a face for ``python -m model``),
and :func:`read_attributes` every sample's CelebA attributes (the ``KEY.cls`` bitmasks).
"""
from __future__ import annotations

import difflib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Collection, Iterator, Sequence

import numpy as np

from .errors import ConfigError, DataError
from .layout import MANIFEST, MANIFEST_FORMAT, PRESHARD_HINT, SPLITS
from .wds_index import IndexMember, parse_index, read_index_header


@dataclass(frozen=True)
class ShardFile:
    """One tar of a split and its DALI index, as the manifest describes them."""

    tar: Path
    index: Path
    count: int
    bytes: int


@dataclass(frozen=True)
class SplitShards:
    """The validated shards of one split, in manifest order."""

    root: Path
    split: str
    shards: tuple[ShardFile, ...]

    @property
    def count(self) -> int:
        return sum(s.count for s in self.shards)


def read_split(shards: str | os.PathLike, split: str) -> SplitShards:
    """Read ``manifest.json`` and check the split's tars and index files cheaply (no hashing).

    Raises DataError for a missing or empty folder, a missing manifest, a missing or resized tar,
    a missing index file or one whose sample count disagrees with the manifest, and for an empty split.
    """
    if split not in SPLITS:
        raise ConfigError(f"unknown split {split!r}: expected one of {', '.join(SPLITS)}")
    root = Path(shards)
    manifest_path = root / MANIFEST
    make_it = (f"create it with: python -m pipeline.preshard --celeba CELEBA_DIR --out {root} "
               f"(or --images FOLDER for any folder of faces)")
    if not root.is_dir():
        raise DataError(f"shards folder {root} {'is not a folder' if root.exists() else 'does not exist'}; {make_it}")
    if not manifest_path.is_file():
        if not any(root.iterdir()):
            raise DataError(f"shards folder {root} is empty; {make_it}")
        raise DataError(f"no {MANIFEST} in {root}: is this preshard's output folder? {PRESHARD_HINT}")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8-sig"))
    except RecursionError:
        raise DataError(f"cannot read {manifest_path}: nested too deeply to be preshard's; {PRESHARD_HINT}") from None
    except (OSError, ValueError) as err:
        raise DataError(f"cannot read {manifest_path}: {err}; {PRESHARD_HINT}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        raise DataError(f"{manifest_path} has format {found!r}, expected {MANIFEST_FORMAT!r}; {PRESHARD_HINT}")
    entry = (manifest.get("splits") or {}).get(split)
    if not entry or not entry.get("count") or not entry.get("shards"):
        have = [s for s, e in (manifest.get("splits") or {}).items() if e and e.get("count")]
        raise DataError(f"split {split!r} is empty in {manifest_path} (splits with samples: "
                        f"{', '.join(have) or 'none'}); check list_eval_partition.txt (--celeba) or --val/--test "
                        f"(--images) and {PRESHARD_HINT}")
    files = []
    try:
        for s in entry["shards"]:
            files.append(ShardFile(root / s["path"], root / s["index"], int(s["count"]), int(s["bytes"])))
    except (KeyError, TypeError, ValueError) as err:
        raise DataError(f"malformed shard entry in {manifest_path} ({err!r}); {PRESHARD_HINT}") from None
    for f in files:
        _check_shard(f)
    split_shards = SplitShards(root, split, tuple(files))
    if split_shards.count != int(entry["count"]):
        raise DataError(f"{manifest_path}: split {split!r} says {entry['count']} samples but its shards hold "
                        f"{split_shards.count}; {PRESHARD_HINT}")
    return split_shards


def _check_shard(f: ShardFile) -> None:
    if not f.tar.is_file():
        raise DataError(f"missing shard {f.tar} (listed in {MANIFEST}); {PRESHARD_HINT}")
    size = f.tar.stat().st_size
    if size != f.bytes:
        raise DataError(f"shard {f.tar} has {size} bytes, {MANIFEST} says {f.bytes}: truncated or rewritten; "
                        f"{PRESHARD_HINT}")
    if not f.index.is_file():
        raise DataError(f"missing index file {f.index} for shard {f.tar.name}; {PRESHARD_HINT}")
    count = read_index_header(f.index)
    if count != f.count:
        raise DataError(f"index file {f.index} lists {count} samples, {MANIFEST} says {f.count}; {PRESHARD_HINT}")


@dataclass(frozen=True)
class IndexedSample:
    """Where one sample's JPEG sits in its tar (from the index file)."""

    key: str
    shard: ShardFile
    offset: int
    size: int


def read_index(shard: ShardFile) -> list[IndexedSample]:
    """Every sample of a shard with its JPEG member's byte range, in tar order."""
    out = []
    for line_no, key, members in _indexed(shard):
        jpg = _member(shard, line_no, key, members, "jpg")
        out.append(IndexedSample(key, shard, jpg.offset, jpg.size))
    return out


def _indexed(shard: ShardFile) -> Iterator[tuple[int, str, list[IndexMember]]]:
    """(line number in the index file, sample key, members) of every sample of a shard, in tar order."""
    for line_no, members in enumerate(parse_index(shard.index), start=2):
        yield line_no, members[0].name.rsplit(".", 1)[0], members


def _member(shard: ShardFile, line_no: int, key: str, members: list[IndexMember], ext: str) -> IndexMember:
    """The sample's ``KEY.ext`` member; DataError naming the index line when it has none."""
    found = next((m for m in members if m.ext == ext), None)
    if found is None:
        raise DataError(f"index file {shard.index} line {line_no}: sample {key} has no .{ext} member; {PRESHARD_HINT}")
    return found


def part_samples(order: Sequence[ShardFile], start: int, end: int) -> list[IndexedSample]:
    """Samples ``[start, end)`` of the concatenation of ``order``'s tars (one rank's part)."""
    out: list[IndexedSample] = []
    pos = 0
    for shard in order:
        if pos + shard.count > start and pos < end:
            samples = read_index(shard)
            out.extend(samples[max(0, start - pos):end - pos])
        pos += shard.count
    return out


def read_members(split: SplitShards, ext: str, keys: Collection[str] | None = None) -> dict[str, bytes]:
    """The bytes of each sample's ``KEY.ext`` member (all samples, or only ``keys``), in index order.

    Reads at the offsets the index files give, one open file per tar. A key that is not in the
    split raises DataError naming the closest key and the split that holds it, if another does.
    """
    wanted = None if keys is None else set(keys)
    out: dict[str, bytes] = {}
    seen: list[str] = []
    for shard in split.shards:
        entries = []
        for line_no, key, members in _indexed(shard):
            seen.append(key)
            if wanted is None or key in wanted:
                entries.append((key, _member(shard, line_no, key, members, ext)))
        if not entries:
            continue
        with open(shard.tar, "rb") as fh:
            for key, member in entries:
                fh.seek(member.offset)
                data = fh.read(member.size)
                if len(data) != member.size:
                    raise DataError(f"shard {shard.tar} ends inside {member.name}: truncated; {PRESHARD_HINT}")
                out[key] = data
    missing = [k for k in (keys or ()) if k not in out]
    if missing:
        raise DataError(_missing_key_message(split, missing[0], seen))
    return out


def _missing_key_message(split: SplitShards, key: str, seen: list[str]) -> str:
    where = ""
    for other in SPLITS:
        if other != split.split and (split.root / other).is_dir():
            try:
                if key in _split_keys(read_split(split.root, other)):
                    where = f"; it is in split {other!r}"
                    break
            except DataError:
                continue
    close = difflib.get_close_matches(key, seen, n=1)
    hint = f" (closest: {close[0]})" if close and not where else ""
    span = f"{seen[0]} … {seen[-1]}" if seen else "none"
    return (f"sample key {key!r} is not in split {split.split!r} of {split.root} ({len(seen)} samples, keys "
            f"{span}){hint}{where}")


def _split_keys(split: SplitShards) -> set[str]:
    return {key for shard in split.shards for _, key, _ in _indexed(shard)}


@dataclass(frozen=True)
class SplitAttributes:
    """The CelebA attributes of every sample of a split: ``masks[i]`` bit j = ``names[j]`` present."""

    names: tuple[str, ...]
    keys: tuple[str, ...]
    masks: tuple[int, ...]

    def table(self, keys: Sequence[str] | None = None) -> np.ndarray:
        """A bool matrix, one row per key (``keys`` order, default the split's), one column per name."""
        row = dict(zip(self.keys, self.masks))
        order = self.keys if keys is None else keys
        masks = np.array([row[k] for k in order], dtype=np.uint64)
        return (masks[:, None] >> np.arange(len(self.names), dtype=np.uint64)[None, :]) & np.uint64(1) == 1


def read_attributes(shards: str | os.PathLike, split: str, *, required: bool = True) -> SplitAttributes | None:
    """Every sample's attribute bitmask (its ``KEY.cls`` member) and the attribute names (manifest).

    Shards written without an attribute list raise DataError (or give None when not ``required``);
    so does a ``.cls`` member that is not an ASCII decimal within the bits the names allow.
    """
    split_shards = read_split(shards, split)
    manifest = json.loads((split_shards.root / MANIFEST).read_text())
    names = manifest.get("attributes")
    if not names:
        if not required:
            return None
        if (manifest.get("source") or {}).get("kind") == "images":
            raise DataError(f"the shards in {split_shards.root} carry no attributes: they were made from a folder "
                            "of images (preshard --images), which has no attribute list")
        raise DataError(f"the shards in {split_shards.root} carry no attributes (preshard found no "
                        f"list_attr_celeba.txt beside the images); put it in the CelebA folder and {PRESHARD_HINT}")
    raw = read_members(split_shards, "cls")
    masks = []
    for key, data in raw.items():
        text = data.decode("ascii", errors="replace").strip()
        if not text.isdigit() or int(text) >> len(names):
            raise DataError(f"sample {key} of split {split!r} in {split_shards.root} has a malformed attribute "
                            f"member {data[:20]!r}; {PRESHARD_HINT}")
        masks.append(int(text))
    return SplitAttributes(tuple(names), tuple(raw), tuple(masks))
