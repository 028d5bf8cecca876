"""CelebA as distributed: the aligned images (folder or zip), the partition and attribute lists.

Accepted layouts (SRC is the folder holding them, or the zip itself):

- ``img_align_celeba/000001.jpg…`` or ``img_align_celeba.zip`` (members ``img_align_celeba/…``),
  also the nested ``img_align_celeba/img_align_celeba/`` of some mirrors;
- ``list_eval_partition.txt`` (``000001.jpg 0``; 0 train, 1 val, 2 test), required;
- ``list_attr_celeba.txt`` (count line, 40 names, then ``000001.jpg -1 1 …`` rows), optional;
- the same lists as ``.csv`` (Kaggle's copy), and the official Google-Drive folders
  ``Img/``, ``Eval/``, ``Anno/``.

Everything that is wrong with the source is found here, before any shard is written, and
reported as one :class:`DataError`.
"""
from __future__ import annotations

import hashlib
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from .errors import DataError
from .layout import SPLITS

IMAGE_DIR = "img_align_celeba"
PARTITION_NAMES = ("list_eval_partition.txt", "list_eval_partition.csv")
ATTRIBUTE_NAMES = ("list_attr_celeba.txt", "list_attr_celeba.csv")
_SUBDIRS = ("", "Img", "Eval", "Anno")


@dataclass(frozen=True)
class Entry:
    """One listed image: its file name, the shard key (file stem) and its split."""

    filename: str
    key: str
    split: str


class FolderStore:
    """Images in a folder; locators are absolute file paths."""

    kind = "folder"

    def __init__(self, root: Path):
        self.root = root

    def sizes(self) -> dict[str, int]:
        with os.scandir(self.root) as it:
            return {e.name: e.stat().st_size for e in it if e.is_file()}

    def locate(self, filename: str) -> str:
        return str(self.root / filename)

    @staticmethod
    def read(locator: str) -> bytes:
        with open(locator, "rb") as f:
            return f.read()

    def __str__(self) -> str:
        return str(self.root)


# One open ZipFile per (worker) process: parsing a 200k-entry central directory per read is slow.
_OPEN_ZIPS: dict[str, zipfile.ZipFile] = {}


class ZipStore:
    """Images inside a zip; locators are member names. Pickles as its path only."""

    kind = "zip"

    def __init__(self, path: Path):
        self.path = path
        self._members: dict[str, str] | None = None

    def __getstate__(self):
        return {"path": self.path, "_members": None}

    def _zip(self) -> zipfile.ZipFile:
        key = str(self.path)
        if key not in _OPEN_ZIPS:
            try:
                _OPEN_ZIPS[key] = zipfile.ZipFile(self.path)
            except (zipfile.BadZipFile, OSError) as err:
                raise DataError(f"{self.path} is not a readable zip ({err}); download it again") from None
        return _OPEN_ZIPS[key]

    def _member_map(self) -> dict[str, str]:
        if self._members is None:
            members: dict[str, str] = {}
            self._sizes: dict[str, int] = {}
            for info in self._zip().infolist():
                name = info.filename
                base = name.rsplit("/", 1)[-1]
                if info.is_dir() or not base or name.startswith("__MACOSX/") or base.startswith("._"):
                    continue
                if base in members:
                    raise DataError(f"{self.path} holds {base} twice ({members[base]} and {name}); "
                                    "use a zip with one img_align_celeba/ folder")
                members[base] = name
                self._sizes[base] = info.file_size
            self._members = members
        return self._members

    def sizes(self) -> dict[str, int]:
        self._member_map()
        return dict(self._sizes)

    def locate(self, filename: str) -> str:
        return self._member_map()[filename]

    def read(self, locator: str) -> bytes:
        return self._zip().read(locator)

    def __str__(self) -> str:
        return str(self.path)


@dataclass
class CelebASource:
    """A validated CelebA source: every listed image exists; attributes (if any) cover them all."""

    root: Path
    store: FolderStore | ZipStore
    entries: list[Entry]  # in partition-file order
    sizes: dict[str, int]  # file name → bytes, for the listed images
    partition_file: Path
    attributes_file: Path | None
    attribute_names: list[str] | None
    attributes: dict[str, int] | None  # file name → bitmask (bit i = attribute_names[i] present)

    def split(self, name: str) -> list[Entry]:
        return [e for e in self.entries if e.split == name]

    def fingerprint(self) -> str:
        """Hash of the lists and of every listed image's name and size: cheap, and changes with the data."""
        h = hashlib.sha256()
        h.update(self.partition_file.read_bytes())
        h.update(b"\0attributes\0")
        if self.attributes_file is not None:
            h.update(self.attributes_file.read_bytes())
        for e in self.entries:
            h.update(f"\0{e.filename}:{self.sizes[e.filename]}".encode())
        return h.hexdigest()

    def describe(self) -> dict:
        counts = {s: sum(1 for e in self.entries if e.split == s) for s in SPLITS}
        return {
            "path": str(self.root.resolve()),
            "layout": self.store.kind,
            "images": str(self.store),
            "partition_file": self.partition_file.name,
            "attributes_file": self.attributes_file.name if self.attributes_file else None,
            "listed": len(self.entries),
            "listed_per_split": counts,
            "fingerprint": self.fingerprint(),
        }


def open_celeba(src: str | os.PathLike) -> CelebASource:
    """Find, parse and check a CelebA source (folder or zip); raise DataError on anything wrong."""
    src = Path(src)
    if not src.exists():
        raise DataError(f"CelebA source {src} does not exist")
    root = src.parent if src.is_file() or src.name == IMAGE_DIR else src
    store = _find_images(src, root)
    partition_file = _find(root, PARTITION_NAMES)
    if partition_file is None:
        raise DataError(f"{root} has no list_eval_partition.txt (CelebA's train/val/test split); "
                        "put it beside img_align_celeba")
    entries = _parse_partition(partition_file)
    attributes_file = _find(root, ATTRIBUTE_NAMES)
    names, attrs = _parse_attributes(attributes_file) if attributes_file else (None, None)

    sizes_all = store.sizes()
    missing = [e.filename for e in entries if e.filename not in sizes_all]
    if missing:
        shown = ", ".join(missing[:5]) + (", …" if len(missing) > 5 else "")
        raise DataError(f"{len(missing)} image(s) listed in {partition_file.name} are missing from {store}: {shown}")
    if attrs is not None:
        no_row = [e.filename for e in entries if e.filename not in attrs]
        if no_row:
            shown = ", ".join(no_row[:5]) + (", …" if len(no_row) > 5 else "")
            raise DataError(f"{attributes_file.name} has no row for {len(no_row)} listed image(s): {shown}")
    sizes = {e.filename: sizes_all[e.filename] for e in entries}
    return CelebASource(root, store, entries, sizes, partition_file, attributes_file, names, attrs)


def _find(root: Path, names: Sequence[str]) -> Path | None:
    for sub in _SUBDIRS:
        for name in names:
            p = root / sub / name
            if p.is_file():
                return p
    return None


def _find_images(src: Path, root: Path) -> FolderStore | ZipStore:
    if src.is_file():
        if not zipfile.is_zipfile(src):
            raise DataError(f"{src} is not a zip file; pass the CelebA folder or img_align_celeba.zip")
        return ZipStore(src)
    for sub in _SUBDIRS:
        folder = root / sub / IMAGE_DIR
        if folder.is_dir():
            nested = folder / IMAGE_DIR
            return FolderStore(nested if nested.is_dir() and not any(folder.glob("*.jpg")) else folder)
        archive = root / sub / f"{IMAGE_DIR}.zip"
        if archive.is_file():
            if not zipfile.is_zipfile(archive):
                raise DataError(f"{archive} is not a valid zip (incomplete download?)")
            return ZipStore(archive)
    raise DataError(f"no {IMAGE_DIR}/ folder or {IMAGE_DIR}.zip found in {root}")


def _unreadable(path: Path, err: OSError | UnicodeDecodeError) -> str:
    if isinstance(err, UnicodeDecodeError):
        return (f"cannot read {path}: it is not UTF-8 text (byte {err.start} is {err.object[err.start]:#04x}); "
                "CelebA's lists are plain text: download them again or save them as UTF-8")
    return f"cannot read {path}: {err.strerror or err}"


def _check_name(name: str, where: str) -> str:
    stem, dot, ext = name.rpartition(".")
    if not dot or ext.lower() not in ("jpg", "jpeg") or not stem or "." in stem or "/" in name or "\\" in name:
        raise DataError(f"{where}: {name!r} is not a CelebA image name like 000001.jpg")
    return stem


def _parse_partition(path: Path) -> list[Entry]:
    """``000001.jpg 0`` per line (or ``image_id,partition`` CSV); contiguous with no duplicates."""
    entries: list[Entry] = []
    seen: set[str] = set()
    csv = path.suffix == ".csv"
    try:
        text = path.read_text(encoding="utf-8-sig")  # a byte-order mark (Excel's UTF-8) is no part of a name
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(_unreadable(path, err)) from None
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or (csv and lineno == 1 and not line[:1].isdigit()):
            continue
        fields = line.split(",") if csv else line.split()
        fields = [f.strip() for f in fields]
        if len(fields) != 2 or fields[1] not in ("0", "1", "2"):
            raise DataError(f"{path.name}:{lineno}: expected '<image>.jpg <0|1|2>', got {line.strip()!r}")
        name, part = fields
        key = _check_name(name, f"{path.name}:{lineno}")
        if name in seen:
            raise DataError(f"{path.name}:{lineno}: {name} is listed twice")
        seen.add(name)
        entries.append(Entry(name, key, SPLITS[int(part)]))
    if not entries:
        raise DataError(f"{path} lists no images: an empty source cannot be sharded")
    keys = {e.key for e in entries}
    if len(keys) != len(entries):
        raise DataError(f"{path.name}: two listed images share a key (file name without extension)")
    return entries


def _parse_attributes(path: Path) -> tuple[list[str], dict[str, int]]:
    """The attribute names and, per image, a bitmask of the attributes marked 1."""
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(_unreadable(path, err)) from None
    if path.suffix == ".csv":
        if not lines:
            raise DataError(f"{path.name} is empty")
        names = [n.strip() for n in lines[0].split(",")[1:]]
        rows = [(i, [f.strip() for f in line.split(",")]) for i, line in enumerate(lines[1:], start=2) if line.strip()]
    else:
        if len(lines) < 2 or not lines[0].strip().isdigit():
            raise DataError(f"{path.name}:1: expected the image count, then the attribute names")
        names = lines[1].split()
        rows = [(i, line.split()) for i, line in enumerate(lines[2:], start=3) if line.strip()]
        if int(lines[0]) != len(rows):
            raise DataError(f"{path.name}: says {int(lines[0])} images but has {len(rows)} rows")
    if not names or len(set(names)) != len(names):
        raise DataError(f"{path.name}: attribute names missing or repeated")
    attrs: dict[str, int] = {}
    for lineno, fields in rows:
        if len(fields) != len(names) + 1:
            raise DataError(f"{path.name}:{lineno}: expected an image name and {len(names)} values, got {len(fields) - 1}")
        mask = 0
        for i, v in enumerate(fields[1:]):
            if v == "1":
                mask |= 1 << i
            elif v not in ("-1", "0"):
                raise DataError(f"{path.name}:{lineno}: attribute values must be 1 or -1, got {v!r}")
        attrs[fields[0]] = mask
    return names, attrs
