"""CelebA → WebDataset shards with DALI index files, every JPEG validated on the way.

``python -m pipeline.preshard --celeba SRC --out DIR`` writes

    DIR/{train,val,test}/celeba-{split}-NNNNNN.tar   KEY.jpg (original bytes), KEY.cls, KEY.json
    DIR/{train,val,test}/celeba-{split}-NNNNNN.idx   DALI wds2idx v1.2 index of that tar
    DIR/manifest.json                                 counts, sha256 per shard, skipped keys

Properties the rest of the project relies on:

- Deterministic: fixed tar header fields, fixed member order, train order shuffled with the
  seed, no timestamps: the same input and options give byte-identical output.
- Validated: each JPEG gets a header check and a full decode in a process pool (DALI kills the
  whole pipeline on one undecodable image), so no shard holds an image DALI cannot decode.
- Atomic and resumable: each shard and its index are written under temporary names and
  renamed (index first, so a tar never exists without its index); finished shards are logged
  in ``DIR/.preshard-state.jsonl``; ``manifest.json`` is written last. A killed run never
  looks complete, and rerunning the same command resumes after the last finished shard.
"""
from __future__ import annotations

import argparse
import functools
import hashlib
import io
import json
import os
import random
import time
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Iterator, Sequence

from . import usable_cores
from .celeba import SPLITS, CelebASource, Entry, FolderStore, ZipStore, open_celeba
from .errors import ConfigError, DataError, UserError, cli_entry
from .wds_index import IndexMember, write_index

MANIFEST_FORMAT = "celeba-wds/1"
MANIFEST = "manifest.json"
STATE = ".preshard-state.jsonl"
TAR_BLOCK = 512
TAR_RECORD = 20 * TAR_BLOCK  # tar's default blocking factor; end-of-archive is padded to it
_CHUNK = 64  # images per validation task: large enough to amortise IPC, small enough to stream


# ----------------------------------------------------------------------------------------------
# JPEG validation (runs in worker processes)
# ----------------------------------------------------------------------------------------------

def check_jpeg(data: bytes) -> str | None:
    """Why DALI's decoder would fail on ``data``, or None if it is a complete, decodable JPEG."""
    if not data:
        return "empty file (0 bytes)"
    if not data.startswith(b"\xff\xd8\xff"):
        return f"not a JPEG (starts with {data[:8]!r})"
    # Entropy-coded data never holds FF DA / FF D9 (FF is byte-stuffed), so the image is
    # complete only if an end-of-image marker follows the last start-of-scan.
    sos = data.rfind(b"\xff\xda")
    if sos < 0:
        return "JPEG without image data (no start-of-scan marker)"
    if data.find(b"\xff\xd9", sos) < 0:
        return f"truncated JPEG (no end-of-image marker; {len(data)} bytes)"
    from PIL import Image, ImageFile

    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        with Image.open(io.BytesIO(data)) as im:
            if im.format != "JPEG":
                return f"not a JPEG (decodes as {im.format})"
            im.load()
            if im.width < 1 or im.height < 1:
                return "JPEG with zero width or height"
    except Exception as err:  # PIL raises many types for corrupt data; all mean "undecodable"
        return f"does not decode: {type(err).__name__}: {err}"
    return None


def _check_chunk(store: FolderStore | ZipStore, items: Sequence[tuple[int, str]]) -> list[tuple[int, bytes | None, str | None]]:
    """Worker: read and validate images; return (position, bytes or None, reason or None)."""
    out = []
    for pos, locator in items:
        try:
            data = store.read(locator)
        except Exception as err:  # vanished or unreadable after listing: a bad sample like any other
            out.append((pos, None, f"unreadable: {type(err).__name__}: {err}"))
            continue
        reason = check_jpeg(data)
        out.append((pos, None if reason else data, reason))
    return out


def _validated(source: CelebASource, plan: Sequence[Entry], start: int, workers: int
               ) -> Iterator[tuple[int, Entry, bytes | None, str | None]]:
    """Yield (position, entry, bytes, reason) for plan[start:], in order, validating in a process pool.

    At most ``4 × workers`` chunks are in flight, so memory stays bounded on the full data set.
    """
    store = source.store
    chunks = [[(pos, store.locate(plan[pos].filename)) for pos in range(lo, min(lo + _CHUNK, len(plan)))]
              for lo in range(start, len(plan), _CHUNK)]
    if workers <= 1 or len(chunks) <= 1:
        for items in chunks:
            for pos, data, reason in _check_chunk(store, items):
                yield pos, plan[pos], data, reason
        return
    import multiprocessing as mp

    # spawn, not fork: the caller may hold threads (torch, rich's refresh thread).
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn"))
    try:
        todo = iter(chunks)
        pending: deque = deque()
        for items in todo:
            pending.append(pool.submit(_check_chunk, store, items))
            if len(pending) >= 4 * workers:
                break
        while pending:
            try:
                results = pending.popleft().result()
            except BrokenProcessPool:
                raise UserError("a validation worker process died. When calling preshard() from a script, put the "
                                "call under `if __name__ == '__main__':` (workers are spawned and re-import the "
                                "script), or pass workers=1") from None
            nxt = next(todo, None)
            if nxt is not None:
                pending.append(pool.submit(_check_chunk, store, nxt))
            for pos, data, reason in results:
                yield pos, plan[pos], data, reason
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


# ----------------------------------------------------------------------------------------------
# Deterministic tar + index writing
# ----------------------------------------------------------------------------------------------

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

    def __init__(self, out: Path, split: str, seq: int):
        self.out = out
        self.split_dir = out / split
        self.split_dir.mkdir(parents=True, exist_ok=True)
        self.name = f"celeba-{split}-{seq:06d}"
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


def sample_members(entry: Entry, data: bytes, source: CelebASource) -> list[tuple[str, bytes]]:
    """Tar members of one sample, in order: KEY.jpg, then KEY.cls and KEY.json when attributes exist."""
    members = [("jpg", data)]
    if source.attributes is not None:
        cls, js = _attribute_members(source.attributes[entry.filename], tuple(source.attribute_names or ()))
        members += [("cls", cls), ("json", js)]
    return members


@functools.lru_cache(maxsize=65536)
def _attribute_members(mask: int, names: tuple[str, ...]) -> tuple[bytes, bytes]:
    """``.cls``: the bitmask as ASCII decimal; ``.json``: ``{"attributes": {name: 0/1}}`` in file order."""
    attrs = {name: (mask >> i) & 1 for i, name in enumerate(names)}
    return str(mask).encode(), json.dumps({"attributes": attrs}, separators=(",", ":")).encode()


# ----------------------------------------------------------------------------------------------
# Output directory: no-op, resume, or refuse
# ----------------------------------------------------------------------------------------------

def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _intact(out: Path, record: dict, verify_hash: bool) -> bool:
    tar, idx = out / record["path"], out / record["index"]
    if not (tar.is_file() and idx.is_file()) or tar.stat().st_size != record["bytes"]:
        return False
    return not verify_hash or _sha256_file(tar) == record["sha256"]


def _our_files(out: Path) -> list[Path]:
    files = []
    for split in SPLITS:
        d = out / split
        if d.is_dir():
            files += [p for p in d.iterdir() if p.name.startswith((f"celeba-{split}-", f".celeba-{split}-"))]
    return files


def _refuse(out: Path, why: str) -> DataError:
    return DataError(f"{out} already holds {why}; pick another --out or delete that directory")


def _load_state(out: Path, fingerprint: str) -> dict[str, list[dict]]:
    """Finished shards of an interrupted run with the same inputs, verified; others are removed."""
    head: dict = {}
    records: list[dict] = []
    for i, line in enumerate((out / STATE).read_text().splitlines()):
        try:
            item = json.loads(line)
        except json.JSONDecodeError:
            break  # a half-written last line: the run was killed mid-append
        if i == 0:
            head = item
        else:
            records.append(item)
    if head.get("fingerprint") != fingerprint:
        raise _refuse(out, "shards of an unfinished run from a different source or options")
    kept: dict[str, list[dict]] = {s: [] for s in SPLITS}
    broken = set()
    for rec in records:
        split = rec.get("split")
        if split not in kept or split in broken:
            continue
        shard = rec.get("shard")
        if shard is None or _intact(out, shard, verify_hash=True):
            kept[split].append(rec)
        else:
            broken.add(split)  # keep only the prefix of intact shards
    keep_names = {out / r["shard"][k] for recs in kept.values() for r in recs if r.get("shard") for k in ("path", "index")}
    for p in _our_files(out):
        if p not in keep_names:
            p.unlink()
    return kept


def _write_state(out: Path, fingerprint: str, kept: dict[str, list[dict]]) -> None:
    tmp = out / (STATE + ".partial")
    lines = [json.dumps({"fingerprint": fingerprint})] + [json.dumps(r) for s in SPLITS for r in kept[s]]
    tmp.write_text("\n".join(lines) + "\n")
    os.replace(tmp, out / STATE)


def _append_state(out: Path, record: dict) -> None:
    with open(out / STATE, "a") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())


# ----------------------------------------------------------------------------------------------
# preshard
# ----------------------------------------------------------------------------------------------

def _check_options(shard_bytes: int, max_samples_per_shard: int | None, on_bad: str, workers: int | None) -> None:
    if not isinstance(shard_bytes, int) or shard_bytes < 64 * 1024:
        raise ConfigError(f"shard size must be at least 64 KiB, got {shard_bytes!r} bytes")
    if max_samples_per_shard is not None and (not isinstance(max_samples_per_shard, int) or max_samples_per_shard < 1):
        raise ConfigError(f"max samples per shard must be a positive integer, got {max_samples_per_shard!r}")
    if on_bad not in ("skip", "error"):
        raise ConfigError(f"on_bad must be 'skip' or 'error', got {on_bad!r}")
    if workers is not None and (not isinstance(workers, int) or workers < 1):
        raise ConfigError(f"workers must be a positive integer, got {workers!r}")


def split_plan(source: CelebASource, split: str, seed: int) -> list[Entry]:
    """The order samples are written in: train shuffled with ``seed``, val/test in file order."""
    entries = source.split(split)
    if split == "train":
        random.Random(seed).shuffle(entries)
    return entries


def preshard(src: str | os.PathLike, out: str | os.PathLike, *, shard_bytes: int = 100_000_000,
             max_samples_per_shard: int | None = None, seed: int = 0, workers: int | None = None,
             on_bad: str = "skip", progress: bool = True) -> dict:
    """Shard the CelebA source ``src`` into ``out``; return the manifest (also written to ``out/manifest.json``).

    A shard closes before it would exceed ``shard_bytes`` or when it holds ``max_samples_per_shard``
    samples. Bad JPEGs are skipped and listed under ``"skipped"`` (``on_bad="skip"``) or raise
    DataError (``on_bad="error"``). Rerunning into a finished ``out`` with the same inputs is a
    no-op; into an interrupted one it resumes; into one with other shards it raises DataError.
    """
    _check_options(shard_bytes, max_samples_per_shard, on_bad, workers)
    workers = workers or usable_cores()
    source = open_celeba(src)
    desc = source.describe()
    options = {"shard_bytes": shard_bytes, "max_samples_per_shard": max_samples_per_shard, "seed": seed}
    fingerprint = hashlib.sha256(json.dumps([desc["fingerprint"], options], sort_keys=True).encode()).hexdigest()
    out = Path(out)

    manifest_path = out / MANIFEST
    if manifest_path.is_file():
        try:
            manifest = json.loads(manifest_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise _refuse(out, "an unreadable manifest.json") from None
        if manifest.get("fingerprint") != fingerprint:
            raise _refuse(out, "shards from a different source or options")
        for split in manifest["splits"].values():
            for rec in split["shards"]:
                if not _intact(out, rec, verify_hash=False):
                    raise DataError(f"{out / rec['path']} is missing or damaged although {MANIFEST} lists it; "
                                    "delete that directory and rerun")
        if on_bad == "error" and manifest["skipped"]:
            first = manifest["skipped"][0]
            raise DataError(f"{len(manifest['skipped'])} bad image(s) were skipped in the existing shards in {out}, "
                            f"e.g. {first['key']}: {first['reason']}")
        (out / STATE).unlink(missing_ok=True)
        if progress:
            from rich.console import Console

            Console().print(f"{out} already holds these shards (same source and options): nothing to do")
        return manifest

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
        if _our_files(out):
            raise _refuse(out, "shard files without a manifest (not written by this preshard)")
        kept = {s: [] for s in SPLITS}
    _write_state(out, fingerprint, kept)

    bar = _progress(progress, len(source.entries))
    splits: dict[str, dict] = {}
    skipped: list[dict] = []
    try:
        for split in SPLITS:
            plan = split_plan(source, split, seed)
            done = kept[split]
            shards = [r["shard"] for r in done if r.get("shard")]
            for r in done:
                skipped += r["skipped"]
            start = done[-1]["next"] if done else 0
            if bar:
                bar.advance(bar.task_ids[0], start)
            shards += _write_split(source, plan, start, out, split, len(shards), skipped, shard_bytes,
                                   max_samples_per_shard, on_bad, workers, bar)
            count = sum(s["count"] for s in shards)
            if count:
                splits[split] = {"count": count, "shards": shards}
    finally:
        if bar:
            bar.stop()
    if not splits:
        raise DataError(f"no valid image in {src}: all {len(source.entries)} listed images were skipped "
                        f"(e.g. {skipped[0]['key']}: {skipped[0]['reason']})")

    manifest = {
        "format": MANIFEST_FORMAT,
        "source": desc,
        "options": options,
        "fingerprint": fingerprint,
        "extensions": ["jpg", "cls", "json"] if source.attributes is not None else ["jpg"],
        "splits": splits,
        "skipped": skipped,
        "attributes": source.attribute_names,
    }
    tmp = out / (MANIFEST + ".partial")
    tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    os.replace(tmp, manifest_path)  # last: only now does the output look complete
    (out / STATE).unlink(missing_ok=True)
    return manifest


def _write_split(source: CelebASource, plan: list[Entry], start: int, out: Path, split: str, seq: int,
                 skipped: list[dict], shard_bytes: int, max_samples: int | None, on_bad: str, workers: int,
                 bar) -> list[dict]:
    """Write plan[start:] into shards numbered from ``seq``; log each finished shard in the state file."""
    shards: list[dict] = []
    pending_skips: list[dict] = []
    writer: ShardWriter | None = None
    try:
        for pos, entry, data, reason in _validated(source, plan, start, workers):
            if bar:
                bar.advance(bar.task_ids[0])
            if reason is not None:
                if on_bad == "error":
                    raise DataError(f"bad image {entry.filename} (key {entry.key}, {split}) in {source.store}: {reason}; "
                                    "replace or remove it, or rerun with --on-bad skip")
                pending_skips.append({"key": entry.key, "split": split, "reason": reason})
                continue
            members = sample_members(entry, data, source)
            size = ShardWriter.sample_bytes(members)
            if writer is not None and (writer.count == max_samples or
                                       writer.bytes + size + ShardWriter.closing_bytes(writer.bytes + size) > shard_bytes):
                shards.append(_finish(out, writer, split, pos, pending_skips, skipped))
                pending_skips = []
                writer = None
            if writer is None:
                writer = ShardWriter(out, split, seq + len(shards))
            writer.add(entry.key, members)
        if writer is not None:
            shards.append(_finish(out, writer, split, len(plan), pending_skips, skipped))
            writer = None
        elif pending_skips:  # every remaining sample was bad: remember that too
            _append_state(out, {"split": split, "shard": None, "next": len(plan), "skipped": pending_skips})
            skipped += pending_skips
    finally:
        if writer is not None:
            writer.abort()
    return shards


def _finish(out: Path, writer: ShardWriter, split: str, next_pos: int, pending_skips: list[dict],
            skipped: list[dict]) -> dict:
    record = writer.finish()
    _append_state(out, {"split": split, "shard": record, "next": next_pos, "skipped": pending_skips})
    skipped += pending_skips
    return record


def _progress(enabled: bool, total: int):
    if not enabled:
        return None
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    bar = Progress(TextColumn("validating + sharding"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    bar.add_task("shard", total=total)
    bar.start()
    return bar


# ----------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------

@cli_entry
def main(argv: Sequence[str] | None = None) -> int:
    """CLI: ``python -m pipeline.preshard --celeba SRC --out DIR [--shard-mb 100] [--max-samples N] ...``."""
    from rich.console import Console
    from rich.table import Table

    parser = argparse.ArgumentParser(prog="python -m pipeline.preshard",
                                     description="Shard CelebA (folder or zip) into WebDataset tars with DALI index files.")
    parser.add_argument("--celeba", required=True, help="CelebA folder (img_align_celeba/ or .zip + list files) or the zip")
    parser.add_argument("--out", required=True, help="output directory for {train,val,test}/*.tar and manifest.json")
    parser.add_argument("--shard-mb", type=float, default=100.0, help="target shard size in MB (default 100)")
    parser.add_argument("--max-samples", type=int, default=None, help="also close a shard after N samples")
    parser.add_argument("--seed", type=int, default=0, help="seed of the train-order shuffle")
    parser.add_argument("--workers", type=int, default=None, help="validation processes (default: all cores)")
    parser.add_argument("--on-bad", choices=("skip", "error"), default="skip",
                        help="bad JPEG: skip it (listed in the manifest) or stop with an error")
    args = parser.parse_args(argv)
    if not args.shard_mb > 0:
        raise ConfigError(f"--shard-mb must be positive, got {args.shard_mb}")

    console = Console()
    t0 = time.perf_counter()
    manifest = preshard(args.celeba, args.out, shard_bytes=int(args.shard_mb * 1_000_000),
                        max_samples_per_shard=args.max_samples, seed=args.seed, workers=args.workers,
                        on_bad=args.on_bad, progress=True)
    dt = time.perf_counter() - t0

    table = Table(title=f"preshard → {args.out}")
    for col in ("split", "samples", "shards", "MB", "skipped"):
        table.add_column(col, justify="left" if col == "split" else "right")
    for split in SPLITS:
        info = manifest["splits"].get(split, {"count": 0, "shards": []})
        n_skip = sum(1 for s in manifest["skipped"] if s["split"] == split)
        table.add_row(split, f"{info['count']:,}", str(len(info["shards"])),
                      f"{sum(s['bytes'] for s in info['shards']) / 1e6:,.1f}", str(n_skip))
    total = sum(v["count"] for v in manifest["splits"].values())
    table.caption = f"{total:,} images in {dt:.1f} s ({total / max(dt, 1e-9):,.0f} images/s)"
    console.print(table)
    if manifest["skipped"]:
        bad = Table(title=f"skipped {len(manifest['skipped'])} bad image(s) (listed in manifest.json)")
        bad.add_column("key")
        bad.add_column("split")
        bad.add_column("reason")
        for s in manifest["skipped"][:20]:
            bad.add_row(s["key"], s["split"], s["reason"])
        if len(manifest["skipped"]) > 20:
            bad.caption = f"… and {len(manifest['skipped']) - 20} more"
        console.print(bad)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
