"""Any folder of face photos as a preshard source: the listing, a split that survives new files, shard keys.

CelebA ships its split (``list_eval_partition.txt``); a folder of photos has none, and keeping a
partition file in step with a growing folder is exactly what people get wrong. So the split is a
pure function of each file's relative path: sha1 of the POSIX path, read as a number in [0, 1),
below ``test`` → test, below ``test + val`` → val, else train. Adding, removing or renaming other
files never moves a photo between splits, so a test face can never leak into train later.

Keys must survive three readers that split member names differently: webdataset (key = name up to
the first dot), DALI's reader (the same) and DALI's index format (space-separated fields). So a key
is the relative path without its extension with every character outside ``[A-Za-z0-9_-]`` made
``_`` (``alice/2019/img 1.png`` → ``alice_2019_img_1``). Paths that would share a key, and keys too
long for a ustar member name, get ``_`` + 8 hex digits of the path's sha1: still derived from the
path alone, so a file's key never depends on the order files were found in.

Listing rules: ``.jpg .jpeg .png .webp`` in any case, recursively; names starting with ``.`` (files
and folders: ``.DS_Store``, ``.git/``, macOS ``._x.jpg``) are skipped; symlinked files are read,
symlinked folders are not entered (a link cycle would never end). Nothing here decodes an image:
that is preshard's validation, in worker processes.
"""
from __future__ import annotations

import hashlib
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Union

from .celeba import CelebASource, Entry, FolderStore
from .errors import ConfigError, DataError
from .layout import SPLITS

EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp")
#: Longest key: its longest member name (KEY.json) must fit a ustar header's 100 bytes, with room to spare.
KEY_MAX = 80
_HASH_DIGITS = 8
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")
#: What the manifest says about the ``KEY.jpg`` member of such shards (both loaders sniff the content).
JPG_MEMBER = ("JPEG bytes as found (baseline/progressive, RGB or greyscale, no EXIF rotation), otherwise PNG "
              "(8-bit RGB, EXIF rotation applied); both decoders identify the format from the bytes")


def _raw(rel: str) -> bytes:
    """The path's bytes as on disk (a name that is not UTF-8 reaches Python with surrogate escapes)."""
    return rel.encode("utf-8", "surrogateescape")


def _sha1(rel: str) -> str:
    return hashlib.sha1(_raw(rel)).hexdigest()


def split_point(rel: str) -> float:
    """Where the relative POSIX path ``rel`` falls in [0, 1): the first 64 bits of its sha1."""
    return int(_sha1(rel)[:16], 16) / 2.0 ** 64


def split_of(rel: str, val: float, test: float) -> str:
    """The split of the file at ``rel``: test below ``test``, val below ``test + val``, else train."""
    x = split_point(rel)
    return "test" if x < test else "val" if x < test + val else "train"


def check_fractions(val: float, test: float) -> None:
    """ConfigError unless both are numbers in [0, 1) leaving something for train."""
    for name, v in (("--val", val), ("--test", test)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not 0 <= v < 1:
            raise ConfigError(f"{name} must be a fraction in [0, 1), got {v!r}")
    if val + test >= 1:
        raise ConfigError(f"--val + --test must be below 1 so that train keeps some images, got {val} + {test}")


def make_keys(paths: list[str]) -> dict[str, str]:
    """Relative path → shard key, unique, from the path alone (see the module docstring)."""
    def tagged(base: str, rel: str) -> str:
        return f"{base[:KEY_MAX - _HASH_DIGITS - 1]}_{_sha1(rel)[:_HASH_DIGITS]}"

    first: dict[str, str] = {}
    for rel in paths:
        p = PurePosixPath(rel)
        base = _UNSAFE.sub("_", str(p.with_suffix("")))
        first[rel] = base if len(base) <= KEY_MAX else tagged(base, rel)
    users: dict[str, int] = {}
    for key in first.values():
        users[key] = users.get(key, 0) + 1
    keys = {rel: tagged(key, rel) if users[key] > 1 else key for rel, key in first.items()}
    if len(set(keys.values())) != len(keys):  # only if a file is literally named like another's tagged key
        seen: dict[str, str] = {}
        for rel, key in sorted(keys.items()):
            if key in seen:
                raise DataError(f"{seen[key]} and {rel} map to the same shard key {key!r}; rename one of them")
            seen[key] = rel
    return keys


def list_images(root: Path) -> dict[str, int]:
    """Relative POSIX path → size in bytes (-1 if it cannot be stat'ed) of every image under ``root``."""
    found: dict[str, int] = {}
    stack = [root]
    while stack:
        folder = stack.pop()
        try:
            with os.scandir(folder) as it:
                items = list(it)
        except OSError as err:
            raise DataError(f"cannot list {folder}: {err.strerror or err}") from None
        for item in items:
            if item.name.startswith("."):
                continue
            if item.is_dir(follow_symlinks=False):
                stack.append(Path(item.path))
            elif os.path.splitext(item.name)[1].lower() in EXTENSIONS and not item.is_dir():
                rel = Path(item.path).relative_to(root).as_posix()
                try:
                    found[rel] = item.stat().st_size
                except OSError:  # a dangling link: listed, then reported as unreadable by validation
                    found[rel] = -1
    return found


@dataclass
class ImageFolderSource:
    """A folder of images with a split and a key for each; no attributes. Quacks like CelebASource."""

    root: Path
    store: FolderStore  # locators are absolute paths; Entry.filename is the relative path
    entries: list[Entry]  # sorted by key
    sizes: dict[str, int]  # relative path → bytes
    val: float
    test: float
    attribute_names: None = field(default=None, init=False)
    attributes: None = field(default=None, init=False)

    def split(self, name: str) -> list[Entry]:
        return [e for e in self.entries if e.split == name]

    def fingerprint(self) -> str:
        """Hash of every image's relative path and size (as for CelebA: cheap, and changes with the data)."""
        h = hashlib.sha256(b"images\0")
        for rel in sorted(self.sizes):
            h.update(_raw(f"{rel}:{self.sizes[rel]}\0"))
        return h.hexdigest()

    def describe(self) -> dict:
        return {
            "path": str(self.root.resolve()),
            "layout": "folder",
            "images": str(self.root),
            "extensions": list(EXTENSIONS),
            "split_rule": "sha1 of the relative POSIX path as a number in [0, 1): below test → test, "
                          "below test + val → val, else train",
            "jpg_member": JPG_MEMBER,
            "listed": len(self.entries),
            "listed_per_split": {s: sum(1 for e in self.entries if e.split == s) for s in SPLITS},
            "fingerprint": self.fingerprint(),
        }


#: What preshard's writer accepts.
Source = Union[CelebASource, ImageFolderSource]


def open_image_folder(src: str | os.PathLike, val: float = 0.05, test: float = 0.05) -> ImageFolderSource:
    """List ``src`` and assign splits and keys; DataError for a missing folder or one without images."""
    check_fractions(val, test)
    root = Path(src)
    if not root.exists():
        raise DataError(f"image folder {root} does not exist")
    if not root.is_dir():
        raise DataError(f"{root} is not a folder; --images takes a folder of JPEG/PNG/WebP images")
    sizes = list_images(root)
    if not sizes:
        raise DataError(f"no image ({' '.join(EXTENSIONS)}) under {root}; hidden files and folders are skipped")
    keys = make_keys(sorted(sizes))
    entries = sorted((Entry(rel, keys[rel], split_of(rel, val, test)) for rel in sizes), key=lambda e: e.key)
    return ImageFolderSource(root, FolderStore(root), entries, sizes, val, test)
