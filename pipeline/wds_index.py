"""DALI's WebDataset index files (wds2idx format v1.2): writing and parsing.

``fn.readers.webdataset(index_paths=...)`` needs one index per tar; without them DALI scans
every tar at start-up. The format, as DALI's ``wds2idx.IndexCreator`` writes it:

    v1.2 <number of samples>
    <ext> <data offset> <size> <member name> [<ext> <data offset> <size> <member name> ...]

one line per sample, one ``ext offset size name`` group per member, where the offset is the
byte offset of the member's *data* (its 512-byte header offset + 512). An index must match
its tar byte for byte (DALI reports "Underful sample detected at index file" otherwise), so
preshard writes both in the same step and never edits a tar afterwards.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from .errors import DataError
from .layout import PRESHARD_HINT

INDEX_VERSION = "v1.2"


@dataclass(frozen=True)
class IndexMember:
    """One tar member of a sample: extension, data offset, data size, member name."""

    ext: str
    offset: int
    size: int
    name: str


Sample = Sequence[IndexMember]


def format_index(samples: Sequence[Sample]) -> str:
    """The text of the index for ``samples`` (members in tar order), as wds2idx writes it."""
    lines = [f"{INDEX_VERSION} {len(samples)}\n"]
    for members in samples:
        if not members:
            raise ValueError("a sample needs at least one member")
        for m in members:
            if any(c.isspace() for c in m.name + m.ext) or not m.ext:
                raise ValueError(f"member name {m.name!r} cannot be indexed (whitespace or no extension)")
        lines.append(" ".join(f"{m.ext} {m.offset} {m.size} {m.name}" for m in members) + "\n")
    return "".join(lines)


def write_index(path: str | os.PathLike, samples: Sequence[Sample]) -> None:
    """Write the index for ``samples`` to ``path`` (the caller renames it into place)."""
    Path(path).write_text(format_index(samples), encoding="utf-8", newline="\n")


def read_index_header(path: str | os.PathLike) -> int:
    """The sample count in an index file's first line, reading nothing else (a cheap check at start-up)."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            # A header is short; a bounded read keeps a tar given as an index from being read whole.
            first = fh.readline(64).decode("utf-8", errors="replace")
    except OSError as err:
        raise DataError(f"cannot read index file {path}: {err}; {PRESHARD_HINT}") from None
    return _header_count(first, str(path))


def parse_index(path: str | os.PathLike) -> list[list[IndexMember]]:
    """Read a v1.2 index back; a malformed file raises DataError naming file and line."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"index file {path} is missing; {PRESHARD_HINT}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"cannot read index file {path}: {err}; {PRESHARD_HINT}") from None
    return parse_index_text(text, source=str(path))


def _header_count(line: str, source: str) -> int:
    """The sample count of the header line ``v1.2 <count>``; DataError naming ``source`` otherwise."""
    head = line.split()
    if len(head) != 2 or head[0] != INDEX_VERSION or not _is_count(head[1]):
        raise DataError(f"{source}:1: expected '{INDEX_VERSION} <count>', got {line.rstrip()[:40]!r}; {PRESHARD_HINT}")
    return int(head[1])


def _is_count(field: str) -> bool:
    # ASCII only: str.isdigit() also accepts digits such as '²' that int() refuses.
    return field.isascii() and field.isdigit()


def parse_index_text(text: str, source: str = "<index>") -> list[list[IndexMember]]:
    """Parse index text (see :func:`parse_index`)."""
    lines = text.splitlines()
    if not lines:
        raise DataError(f"{source}: empty index file; {PRESHARD_HINT}")
    count = _header_count(lines[0], source)
    body = [line for line in lines[1:] if line.strip()]
    if len(body) != count:
        raise DataError(f"{source}: header says {count} samples but {len(body)} lines follow; {PRESHARD_HINT}")
    samples: list[list[IndexMember]] = []
    for lineno, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        fields = line.split()
        if len(fields) % 4:
            raise DataError(f"{source}:{lineno}: expected groups of 'ext offset size name', got {line!r}; "
                            f"{PRESHARD_HINT}")
        members = []
        for i in range(0, len(fields), 4):
            ext, off, size, name = fields[i:i + 4]
            if not (_is_count(off) and _is_count(size)):
                raise DataError(f"{source}:{lineno}: offset and size must be integers, got {off!r} {size!r}; "
                                f"{PRESHARD_HINT}")
            members.append(IndexMember(ext, int(off), int(size), name))
        samples.append(members)
    return samples


def check_index_matches_tar(index: Iterable[Sample], tar_path: str | os.PathLike, source: str = "") -> None:
    """Cheap consistency check: offsets are 512-aligned, increasing, and inside the tar."""
    tar_size = Path(tar_path).stat().st_size
    last_end = 0
    for members in index:
        for m in members:
            if m.offset % 512 or m.offset < last_end or m.offset + m.size > tar_size:
                raise DataError(
                    f"{source or tar_path}: index entry {m.name} (offset {m.offset}, size {m.size}) does not match "
                    f"the tar ({tar_size} bytes); {PRESHARD_HINT}")
            last_end = m.offset + m.size
