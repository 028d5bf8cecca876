"""The output directory's life cycle: no-op, resume or refuse; the resume log; the final manifest.

A run first asks :func:`finished_output` whether ``out`` already holds a complete result for the
same inputs (then nothing is written), else :func:`prepare_output` either resumes an interrupted
run from its state file (``.preshard-state.jsonl``: a fingerprint line, then one line per
finished shard, appended and fsynced as each shard is renamed into place) or starts afresh, and
refuses a directory holding anybody else's shards. :func:`commit_manifest` writes
``manifest.json`` last, so a killed run never looks complete.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from ..errors import DataError
from ..layout import MANIFEST, SPLITS
from ..lock import lock_name
from .tar_writer import SHARD_PREFIXES

STATE = ".preshard-state.jsonl"

#: Finished-shard log records per split: {"split", "shard" (manifest record or None), "next", "skipped"}.
Kept = dict[str, list[dict]]


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def intact(out: Path, record: dict, verify_hash: bool) -> bool:
    """Whether the shard of manifest ``record`` and its index exist with the recorded size (and hash)."""
    tar, idx = out / record["path"], out / record["index"]
    if not (tar.is_file() and idx.is_file()) or tar.stat().st_size != record["bytes"]:
        return False
    return not verify_hash or _sha256_file(tar) == record["sha256"]


def our_files(out: Path) -> list[Path]:
    """Shard and index files (finished or temporary) that preshard would write under ``out``, from either source."""
    files = []
    for split in SPLITS:
        d = out / split
        if d.is_dir():
            starts = tuple(f"{dot}{prefix}-{split}-" for prefix in SHARD_PREFIXES for dot in ("", "."))
            files += [p for p in d.iterdir() if p.name.startswith(starts)]
    return files


def refuse(out: Path, why: str) -> DataError:
    return DataError(f"{out} already holds {why}; pick another --out or delete that directory")


def finished_output(out: Path, fingerprint: str, on_bad: str, progress: bool) -> dict | None:
    """The manifest if ``out`` holds a finished run with this ``fingerprint`` (a no-op rerun), else None.

    Raises DataError for a manifest from other inputs, a listed shard that is missing or has the
    wrong size, or (with ``on_bad="error"``) a finished run that skipped images.
    """
    manifest_path = out / MANIFEST
    if not manifest_path.is_file():
        return None
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (ValueError, RecursionError):  # not JSON, not UTF-8, or nested beyond reason: not preshard's
        raise refuse(out, "an unreadable manifest.json") from None
    if not isinstance(manifest, dict) or "fingerprint" not in manifest:
        raise refuse(out, "a manifest.json that preshard did not write")
    if manifest.get("fingerprint") != fingerprint:
        raise refuse(out, "shards from a different source or options")
    try:
        records = [rec for split in manifest["splits"].values() for rec in split["shards"]]
        skipped = list(manifest["skipped"])
        for rec in records:
            if not intact(out, rec, verify_hash=False):
                raise DataError(f"{out / rec['path']} is missing or damaged although {MANIFEST} lists it; "
                                "delete that directory and rerun")
    except (KeyError, TypeError, AttributeError):  # the fingerprint matches but the rest was edited
        raise refuse(out, "a damaged manifest.json") from None
    if on_bad == "error" and skipped:
        first = skipped[0]
        raise DataError(f"{len(skipped)} bad image(s) were skipped in the existing shards in {out}, "
                        f"e.g. {first['key']}: {first['reason']}")
    (out / STATE).unlink(missing_ok=True)
    if progress:
        from rich.console import Console

        Console().print(f"{out} already holds these shards (same source and options): nothing to do")
    return manifest


def prepare_output(out: Path, fingerprint: str, progress: bool) -> Kept:
    """Create ``out`` or resume the interrupted run in it; return its finished shards' log records.

    Refuses a file, shards of an unfinished run with another fingerprint, and shard files
    without a state file. Rewrites the state file to hold only what is kept.
    """
    if out.exists() and not out.is_dir():
        raise DataError(f"--out {out} is a file; give a directory for the shards")
    out.mkdir(parents=True, exist_ok=True)
    if (out / STATE).is_file():
        kept = _load_state(out, fingerprint)
        if progress:
            from rich.console import Console

            n_kept = sum(1 for recs in kept.values() for r in recs if r.get("shard"))
            Console().print(f"resuming an interrupted run in {out}: {n_kept} finished shard(s) kept")
    else:
        if our_files(out):
            raise refuse(out, "shard files without a manifest (not written by this preshard)")
        others = _not_ours(out)
        if others:  # somebody's folder: preshard writes into a new or empty one, or one it wrote before
            shown = ", ".join(others[:3]) + (", …" if len(others) > 3 else "")
            raise refuse(out, f"files preshard did not write ({shown})")
        kept = {s: [] for s in SPLITS}
    _write_state(out, fingerprint, kept)
    return kept


#: What may already be in a fresh ``--out``: the lock, the record train.py's default data keeps beside its
#: shards (model/training/data.py), and preshard's own temporary files.
_MAY_BE_THERE = (lock_name("preshard"), ".synthetic.json", STATE + ".partial", MANIFEST + ".partial")


def _not_ours(out: Path) -> list[str]:
    """Entries of ``out`` (relative names) that a fresh preshard run did not make: anything but the above and
    empty split folders."""
    others = []
    for p in sorted(out.iterdir()):
        if p.name in _MAY_BE_THERE:
            continue
        if p.name in SPLITS and p.is_dir():
            others += [f"{p.name}/{q.name}" for q in sorted(p.iterdir())]
            continue
        others.append(p.name)
    return others


def _load_state(out: Path, fingerprint: str) -> Kept:
    """Finished shards of an interrupted run with the same inputs, verified; others are removed."""
    head: dict = {}
    records: list[dict] = []
    try:
        lines = (out / STATE).read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise refuse(out, f"an unreadable {STATE} (not written by preshard)") from None
    for i, line in enumerate(lines):
        try:
            item = json.loads(line)
        except (ValueError, RecursionError):
            break  # a half-written last line: the run was killed mid-append
        if not isinstance(item, dict):
            break
        if i == 0:
            head = item
        else:
            records.append(item)
    if head.get("fingerprint") != fingerprint:
        raise refuse(out, "shards of an unfinished run from a different source or options")
    kept: Kept = {s: [] for s in SPLITS}
    broken = set()
    for rec in records:
        split = rec.get("split")
        if split not in kept or split in broken:
            continue
        shard = rec.get("shard")
        if shard is None or _intact_record(out, shard):
            kept[split].append(rec)
        else:
            broken.add(split)  # keep only the prefix of intact shards
    keep_names = {out / r["shard"][k] for recs in kept.values() for r in recs if r.get("shard") for k in ("path", "index")}
    for p in our_files(out):
        if p not in keep_names:
            p.unlink()
    return kept


def _intact_record(out: Path, shard: object) -> bool:
    """:func:`intact` with hashing, for a state-file record that may be cut short or edited (then: not intact)."""
    try:
        return isinstance(shard, dict) and intact(out, shard, verify_hash=True)
    except (KeyError, TypeError):
        return False


def _write_state(out: Path, fingerprint: str, kept: Kept) -> None:
    tmp = out / (STATE + ".partial")
    lines = [json.dumps({"fingerprint": fingerprint})] + [json.dumps(r) for s in SPLITS for r in kept[s]]
    tmp.write_text("\n".join(lines) + "\n")
    os.replace(tmp, out / STATE)


def append_state(out: Path, record: dict) -> None:
    """Log one finished shard (or a run of skipped samples ending a split); fsynced before returning."""
    with open(out / STATE, "a") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())


def commit_manifest(out: Path, manifest: dict) -> None:
    """Write ``manifest.json`` atomically, then drop the state file: only now does ``out`` look complete."""
    tmp = out / (MANIFEST + ".partial")
    tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    os.replace(tmp, out / MANIFEST)  # last: only now does the output look complete
    (out / STATE).unlink(missing_ok=True)
