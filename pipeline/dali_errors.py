"""DALI's errors explained: a dead pipeline's message → one DataError naming shard and key.

One undecodable JPEG or a truncated tar kills a DALI pipeline ("Critical error in pipeline ...").
DALI's message names the sample only for some failures ("... TAR:OFFSET:KEY"); for the others
(e.g. "nvImageCodec failure") the culprit is found here by decoding the samples that were in
flight with PIL, then the rest of the rank's part.
"""
from __future__ import annotations

import io
import re
import sys
from pathlib import Path
from typing import Sequence

from .epoch import EpochPlan
from .errors import DataError
from .layout import PRESHARD_HINT
from .shards import IndexedSample, ShardFile, part_samples

_MALFORMED_INDEX = re.compile(r'Malformed index file at "(?P<index>[^"]+)" line (?P<line>\d+)')
_SOURCE_INFO = re.compile(r"(?P<tar>[^\s'\"]+\.tar):(?P<offset>\d+):(?P<member>[^\s'\"]+)")


def explain_dali_error(err: RuntimeError, order: Sequence[ShardFile], plan: EpochPlan,
                       window: tuple[int, int]) -> DataError | None:
    """A DataError naming shard and key for a dead DALI pipeline; None if not about the data.

    ``window``: positions in this rank's part that may have been in flight, searched first.
    """
    msg = str(err)
    if "Critical error in pipeline" not in msg:
        return None
    found = _MALFORMED_INDEX.search(msg)
    if found:
        index = Path(found["index"])
        line = int(found["line"])
        return DataError(f"shard {index.with_suffix('.tar')} ends before sample {_index_line_key(index, line)} "
                         f"(line {line} of its index file): the tar is truncated or was changed after indexing; "
                         f"{PRESHARD_HINT}")
    found = _SOURCE_INFO.search(msg)
    if found:
        key = found["member"].split(".", 1)[0]
        return DataError(f"corrupt JPEG {key} in {found['tar']} (offset {found['offset']}): {PRESHARD_HINT}")
    detail = _dali_reason(msg)
    if "decoder" in msg or "nvImageCodec" in msg or "decode" in msg.lower():
        bad = find_undecodable(part_samples(order, plan.start, plan.end), window)
        if bad is not None:
            return DataError(f"corrupt JPEG {bad.key} in {bad.shard.tar} (offset {bad.offset}; DALI: {detail}): "
                             f"{PRESHARD_HINT}")
        return DataError(f"DALI could not decode a JPEG of split {order[0].tar.parent.name!r} ({detail}), and PIL "
                         f"decodes all of them, so the culprit is unknown; {PRESHARD_HINT}")
    return DataError(f"reading the shards of {order[0].tar.parent} failed in DALI ({detail}); {PRESHARD_HINT}")


def _index_line_key(index: Path, line: int) -> str:
    """The sample key on 1-based ``line`` of a v1.2 index file (line 1 is the header), or '?'."""
    try:
        with open(index) as fh:
            for n, text in enumerate(fh, start=1):
                if n == line:
                    names = [p for p in text.split() if "." in p]
                    return names[0].split(".", 1)[0] if names else "?"
    except OSError:
        pass
    return "?"


def _dali_reason(msg: str) -> str:
    """The line DALI puts after 'encountered:' (the actual cause), else the message's last line."""
    lines = [ln.strip() for ln in msg.splitlines() if ln.strip()]
    for i, line in enumerate(lines):
        if line == "encountered:" and i + 1 < len(lines):
            return lines[i + 1]
    skip = ("Current pipeline object is no longer valid.",)
    meaningful = [ln for ln in lines if ln not in skip]
    return meaningful[-1] if meaningful else msg


def find_undecodable(samples: Sequence[IndexedSample], window: tuple[int, int]) -> IndexedSample | None:
    """The first sample PIL cannot decode, trying the positions in ``window`` first."""
    from PIL import Image, UnidentifiedImageError

    lo, hi = max(0, window[0]), min(len(samples), window[1])
    candidates = list(range(lo, hi)) + list(range(0, lo)) + list(range(hi, len(samples)))
    handles: dict[Path, object] = {}
    try:
        for n, i in enumerate(candidates):
            if n == hi - lo and n < len(candidates):
                print(f"notice: searching all {len(samples)} samples of this rank for the undecodable JPEG ...",
                      file=sys.stderr)
            s = samples[i]
            fh = handles.get(s.shard.tar) or handles.setdefault(s.shard.tar, open(s.shard.tar, "rb"))
            fh.seek(s.offset)
            data = fh.read(s.size)
            try:
                with Image.open(io.BytesIO(data)) as img:
                    img.load()
            except (OSError, ValueError, UnidentifiedImageError, SyntaxError):
                return s
    finally:
        for fh in handles.values():
            fh.close()
    return None
