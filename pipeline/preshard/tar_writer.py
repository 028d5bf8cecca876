"""Deterministic tar + DALI index writing: one shard at a time, atomically.

Every header field that could vary (mtime, owner, mode) is fixed and members are written in a
fixed order, so the same samples always give the same bytes. A shard is written under
temporary names and renamed into place index first, so a ``.tar`` never exists without its
``.idx``. Shards are named after their source (``celeba-train-000000.tar``,
``images-train-000000.tar``) so that a folder of shards says where they came from.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
from pathlib import Path
from typing import Sequence

from ..celeba import Entry
from ..image_folder import Source
from ..wds_index import IndexMember, write_index

TAR_BLOCK = 512
TAR_RECORD = 20 * TAR_BLOCK  # tar's default blocking factor; end-of-archive is padded to it
#: Shard name prefixes, one per source kind (``python -m pipeline.preshard --celeba`` / ``--images``).
SHARD_PREFIXES = ("celeba", "images")


def _padded(n: int) -> int:
    return (n + TAR_BLOCK - 1) // TAR_BLOCK * TAR_BLOCK


def tar_header(name: str, size: int) -> bytes:
    """A ustar header with every varying field fixed (mtime 0, uid/gid 0, no user names, mode 0644).

    Built by hand because only name and size vary and ``tarfile.TarInfo.tobuf`` costs more than
    the JPEG check per sample; the tests compare it with tarfile's output byte for byte.
    """
    raw = name.encode("utf-8")
    if len(raw) > 100:
        raise ValueError(f"tar member name too long for a ustar header: {name!r}")
    head = raw.ljust(100, b"\0") + b"0000644\0" + b"0000000\0" * 2 + b"%011o\0" % size + b"00000000000\0"
    tail = b"0" + b"\0" * 100 + b"ustar\x0000" + b"\0" * (64 + 16 + 167)  # no device numbers, no prefix
    checksum = sum(head) + sum(tail) + 8 * 32  # the checksum field counts as eight spaces
    return head + b"%06o\0 " % checksum + tail


class ShardWriter:
    """Streams samples into ``<name>.tar`` (+ ``.idx``) under temporary names; ``finish`` renames them."""

    def __init__(self, out: Path, split: str, seq: int, prefix: str = "celeba"):
        if prefix not in SHARD_PREFIXES:
            raise ValueError(f"shard prefix must be one of {SHARD_PREFIXES}, got {prefix!r}")
        self.out = out
        self.split_dir = out / split
        self.split_dir.mkdir(parents=True, exist_ok=True)
        self.name = f"{prefix}-{split}-{seq:06d}"
        self.tmp_tar = self.split_dir / f".{self.name}.tar.partial"
        self.tmp_idx = self.split_dir / f".{self.name}.idx.partial"
        self.file = open(self.tmp_tar, "wb")
        self.sha = hashlib.sha256()
        self.bytes = 0
        self.count = 0
        self.index: list[list[IndexMember]] = []

    @staticmethod
    def sample_bytes(members: Sequence[tuple[str, bytes]]) -> int:
        return sum(TAR_BLOCK + _padded(len(data)) for _, data in members)

    @staticmethod
    def closing_bytes(size: int) -> int:
        """Bytes the end-of-archive marker (two zero blocks, padded to a full record) adds to ``size``."""
        end = size + 2 * TAR_BLOCK
        return (end + TAR_RECORD - 1) // TAR_RECORD * TAR_RECORD - size

    def _write(self, data: bytes) -> None:
        self.file.write(data)
        self.sha.update(data)
        self.bytes += len(data)

    def add(self, key: str, members: Sequence[tuple[str, bytes]]) -> None:
        group = []
        for ext, data in members:
            name = f"{key}.{ext}"
            self._write(tar_header(name, len(data)))
            group.append(IndexMember(ext, self.bytes, len(data), name))
            self._write(data)
            self._write(b"\0" * (_padded(len(data)) - len(data)))
        self.index.append(group)
        self.count += 1

    def finish(self) -> dict:
        """Close the tar, write the index, fsync, rename both into place; return the manifest record."""
        self._write(b"\0" * self.closing_bytes(self.bytes))
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        write_index(self.tmp_idx, self.index)
        tar_path, idx_path = self.split_dir / f"{self.name}.tar", self.split_dir / f"{self.name}.idx"
        os.replace(self.tmp_idx, idx_path)  # index first: a .tar never exists without its .idx
        os.replace(self.tmp_tar, tar_path)
        return {"path": tar_path.relative_to(self.out).as_posix(), "index": idx_path.relative_to(self.out).as_posix(),
                "count": self.count, "bytes": self.bytes, "sha256": self.sha.hexdigest()}

    def abort(self) -> None:
        self.file.close()
        for p in (self.tmp_tar, self.tmp_idx):
            p.unlink(missing_ok=True)


def sample_members(entry: Entry, data: bytes, source: Source) -> list[tuple[str, bytes]]:
    """Tar members of one sample, in order: KEY.jpg, then KEY.cls and KEY.json when attributes exist.

    KEY.jpg is the member both loaders read (DALI's reader is built with ``ext=["jpg"]``); for a
    folder of photos it may hold PNG bytes, which both decoders recognise by content.
    """
    members = [("jpg", data)]
    if source.attributes is not None:
        cls, js = attribute_members(source.attributes[entry.filename], tuple(source.attribute_names or ()))
        members += [("cls", cls), ("json", js)]
    return members


@functools.lru_cache(maxsize=65536)
def attribute_members(mask: int, names: tuple[str, ...]) -> tuple[bytes, bytes]:
    """``.cls``: the bitmask as ASCII decimal; ``.json``: ``{"attributes": {name: 0/1}}`` in file order."""
    attrs = {name: (mask >> i) & 1 for i, name in enumerate(names)}
    return str(mask).encode(), json.dumps({"attributes": attrs}, separators=(",", ":")).encode()
