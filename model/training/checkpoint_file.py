"""Why a checkpoint file cannot be read, in one wording for every reader (train.py --resume, python -m model).

``torch.load``'s own errors say what its unpickler or zip reader tripped over ("PytorchStreamReader failed
reading zip archive: failed finding central directory", "invalid load key, '\\xff'"), which tells a user
nothing about the file. So the file is looked at first (empty, a zip cut short, not a torch archive at
all, a member whose bytes no longer match their checksum), and whatever ``torch.load`` still raises on a
file that looked right is reported as damage.
"""
from __future__ import annotations

import zipfile
from pathlib import Path

from pipeline.errors import ConfigError

#: The start of every ``torch.save`` file: a zip (the format since PyTorch 1.6), or a pickle (the legacy one).
_ZIP_MAGIC = b"PK\x03\x04"
_PICKLE_MAGIC = b"\x80"


def damaged(path: str | Path) -> ConfigError:
    return ConfigError(f"cannot read checkpoint {path}: it is truncated or damaged (an incomplete copy?)")


def not_a_checkpoint(path: str | Path) -> ConfigError:
    return ConfigError(f"cannot read checkpoint {path}: it is not a PyTorch checkpoint (not a torch.save archive)")


def check_archive(path: str | Path) -> None:
    """ConfigError (one of the two above) unless ``path`` looks like a whole ``torch.save`` file."""
    path = Path(path)
    if not path.is_file():
        what = "a folder" if path.is_dir() else "not a regular file"
        raise ConfigError(f"cannot read checkpoint {path}: it is {what}")
    with open(path, "rb") as fh:
        head = fh.read(4)
    if not head:
        raise damaged(path)
    if head == _ZIP_MAGIC:
        if not zipfile.is_zipfile(path):  # a zip's table of contents is at its end: this one was cut short
            raise damaged(path)
        if not _checksums_match(path):
            raise damaged(path)
        return
    if not head.startswith(_PICKLE_MAGIC):
        raise not_a_checkpoint(path)


def _checksums_match(path: Path) -> bool:
    """Whether every member's bytes match the CRC-32 that ``torch.save`` recorded. ``torch.load`` does not look:
    a checkpoint damaged inside a tensor loads without complaint and serves wrong weights. (A CRC of 0 is what
    a save without checksums records: such members are not checked.)"""
    try:
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                if info.CRC == 0:
                    continue
                with zf.open(info) as member:  # zipfile compares the CRC when the member has been read whole
                    while member.read(1 << 22):
                        pass
    except (zipfile.BadZipFile, EOFError, ValueError, NotImplementedError):
        return False
    return True


def load_failed(path: str | Path, err: BaseException) -> ConfigError:
    """The line for ``torch.load`` failing on a file that passed :func:`check_archive`."""
    if isinstance(err, (ModuleNotFoundError, ImportError)) or (isinstance(err, AttributeError) and "module" in str(err)):
        return ConfigError(f"cannot read checkpoint {path}: it holds objects of code this environment lacks "
                           f"({str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__})")
    return damaged(path)
