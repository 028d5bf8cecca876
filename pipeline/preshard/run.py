"""The preshard run: check the options, decide what the output directory needs, write every split.

Two sources feed the same writer: CelebA (:mod:`pipeline.celeba`, its own split, attributes) and
any folder of photos (:mod:`pipeline.image_folder`, split by a hash of each path, no attributes).
Either is a list of entries (split, key, file) plus optional attributes; the source kind only
picks how an image is validated (:mod:`pipeline.preshard.validate`) and the shards' name prefix,
so resuming, atomic shards, the state file and the manifest are one code path for both.

Samples are written split by split in :func:`split_plan` order; a shard closes before it would
exceed ``shard_bytes`` or when it holds ``max_samples_per_shard`` samples, and each finished
shard is logged in the state file, so a rerun resumes after the last one. The options and the
source's fingerprint make up the run's fingerprint, which decides no-op, resume or refusal.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
from pathlib import Path

from ..celeba import Entry, open_celeba
from ..errors import ConfigError, DataError, writing_to
from ..image_folder import Source, open_image_folder
from ..layout import MANIFEST_FORMAT, SPLITS
from ..lock import one_writer
from ..parallel import ProgressBar, usable_cores
from .state import append_state, commit_manifest, finished_output, prepare_output
from .tar_writer import ShardWriter, sample_members
from .validate import Prepare, keep_jpeg, prepare_image, validated

#: Source kind → how each image is checked and what is stored (see :mod:`pipeline.preshard.validate`).
PREPARE: dict[str, Prepare] = {"celeba": keep_jpeg, "images": prepare_image}
#: A folder's default share of val and of test images.
DEFAULT_FRACTION = 0.05


def _check_options(shard_bytes: int, max_samples_per_shard: int | None, on_bad: str, workers: int | None) -> None:
    if not isinstance(shard_bytes, int) or shard_bytes < 64 * 1024:
        raise ConfigError(f"shard size must be at least 64 KiB, got {shard_bytes!r} bytes")
    if max_samples_per_shard is not None and (not isinstance(max_samples_per_shard, int) or max_samples_per_shard < 1):
        raise ConfigError(f"max samples per shard must be a positive integer, got {max_samples_per_shard!r}")
    if on_bad not in ("skip", "error"):
        raise ConfigError(f"on_bad must be 'skip' or 'error', got {on_bad!r}")
    if workers is not None and (not isinstance(workers, int) or workers < 1):
        raise ConfigError(f"workers must be a positive integer, got {workers!r}")


def split_plan(source: Source, split: str, seed: int) -> list[Entry]:
    """The order samples are written in: train shuffled with ``seed``, val/test in file (CelebA) or key order."""
    entries = source.split(split)
    if split == "train":
        random.Random(seed).shuffle(entries)
    return entries


def open_source(kind: str, src: str | os.PathLike, val: float | None, test: float | None) -> tuple[Source, dict]:
    """The source and the options it adds to the run's (the split fractions of a folder)."""
    if kind == "celeba":
        if val is not None or test is not None:
            raise ConfigError("--val and --test apply to --images only (CelebA's list_eval_partition.txt "
                              "decides its splits)")
        return open_celeba(src), {}
    if kind == "images":
        val = DEFAULT_FRACTION if val is None else val
        test = DEFAULT_FRACTION if test is None else test
        return open_image_folder(src, val, test), {"val": val, "test": test}
    raise ConfigError(f"source kind must be 'celeba' or 'images', got {kind!r}")


def preshard(src: str | os.PathLike, out: str | os.PathLike, *, kind: str = "celeba", val: float | None = None,
             test: float | None = None, shard_bytes: int = 100_000_000, max_samples_per_shard: int | None = None,
             seed: int = 0, workers: int | None = None, on_bad: str = "skip", progress: bool = True) -> dict:
    """Shard ``src`` into ``out``; return the manifest (also written to ``out/manifest.json``).

    ``kind="celeba"``: ``src`` is a CelebA folder or zip. ``kind="images"``: any folder of
    JPEG/PNG/WebP images, split by a hash of each relative path into ``val`` and ``test``
    fractions (default 0.05 each) and train. A shard closes before it would exceed ``shard_bytes``
    or when it holds ``max_samples_per_shard`` samples. Bad images are skipped and listed under
    ``"skipped"`` (``on_bad="skip"``) or raise DataError (``on_bad="error"``). Rerunning into a
    finished ``out`` with the same inputs is a no-op; into an interrupted one it resumes; into one
    with other shards it raises DataError, and so does a second run on ``out`` while one is writing it
    (``OUT/.preshard.lock``). An empty train split (nothing listed in it, or every image of it bad) is a
    DataError too: such shards train nothing (:func:`empty_split_notes` for val and test).
    """
    _check_options(shard_bytes, max_samples_per_shard, on_bad, workers)
    workers = workers or usable_cores()
    source, split_options = open_source(kind, src, val, test)
    _refuse_empty_splits(source, kind, split_options)
    desc = {"kind": kind, **source.describe()}
    options = {"shard_bytes": shard_bytes, "max_samples_per_shard": max_samples_per_shard, "seed": seed,
               **split_options}
    fingerprint = hashlib.sha256(json.dumps([desc["fingerprint"], options], sort_keys=True).encode()).hexdigest()
    out = Path(out)
    if os.path.lexists(out) and not out.is_dir():
        raise DataError(f"--out {out} is a file; give a directory for the shards")
    out.mkdir(parents=True, exist_ok=True)
    with one_writer(out, "preshard"), writing_to(out):
        return _preshard_into(out, source, kind, src, desc, options, fingerprint, seed, shard_bytes,
                              max_samples_per_shard, on_bad, workers, progress)


def _refuse_empty_splits(source: Source, kind: str, split_options: dict) -> None:
    """DataError naming the fix when the source puts no image in train: such shards train nothing. (An empty
    val or test split is written, and said in a note: python -m model can use the other splits.)"""
    counts = {split: len(source.split(split)) for split in SPLITS}
    if counts["train"]:
        return
    listed = ", ".join(f"{s} {n:,}" for s, n in counts.items())
    if kind == "images":
        raise DataError(f"no image of {source.root} falls in the train split ({listed}; --val "
                        f"{split_options['val']:g}, --test {split_options['test']:g}): add images or lower --val/--test")
    raise DataError(f"{source.partition_file} puts no image in train ({listed}; 0 train, 1 val, 2 test): "
                    "training needs at least one")


def empty_split_notes(manifest: dict) -> list[str]:
    """One note per split the shards lack (nothing listed in it, or every image of it bad), saying who needs it."""
    notes = []
    for split in SPLITS:
        if split not in manifest["splits"]:
            bad = sum(1 for s in manifest["skipped"] if s["split"] == split)
            why = f"all {bad} of its images were bad" if bad else "the source puts no image in it"
            fix = ("raise --val/--test or add images" if manifest["source"].get("kind") == "images"
                   else "check list_eval_partition.txt")
            notes.append(f"note: the {split} split is empty ({why}); train.py needs train, val and test: {fix}")
    return notes


def _preshard_into(out: Path, source: Source, kind: str, src, desc: dict, options: dict, fingerprint: str, seed: int,
                   shard_bytes: int, max_samples_per_shard: int | None, on_bad: str, workers: int,
                   progress: bool) -> dict:
    """The run itself, holding ``out``'s lock."""
    manifest = finished_output(out, fingerprint, on_bad, progress)
    if manifest is not None:
        return manifest
    kept = prepare_output(out, fingerprint, progress)

    splits: dict[str, dict] = {}
    skipped: list[dict] = []
    with ProgressBar(progress, "validating + sharding", total=len(source.entries)) as bar:
        for split in SPLITS:
            plan = split_plan(source, split, seed)
            done = kept[split]
            shards = [r["shard"] for r in done if r.get("shard")]
            for r in done:
                skipped += r["skipped"]
            start = done[-1]["next"] if done else 0
            bar.advance(start)
            shards += _write_split(source, kind, plan, start, out, split, len(shards), skipped, shard_bytes,
                                   max_samples_per_shard, on_bad, workers, bar)
            count = sum(s["count"] for s in shards)
            if count:
                splits[split] = {"count": count, "shards": shards}
    if not splits:
        raise DataError(f"no valid image in {src}: all {len(source.entries)} listed images were skipped "
                        f"(e.g. {skipped[0]['key']}: {skipped[0]['reason']})")
    if "train" not in splits:
        bad = [s for s in skipped if s["split"] == "train"]
        raise DataError(f"every image of the train split of {src} was skipped as bad ({len(bad)}, e.g. "
                        f"{bad[0]['key']}: {bad[0]['reason']}): the shards would train nothing; replace those images")

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
    commit_manifest(out, manifest)
    return manifest


def _write_split(source: Source, kind: str, plan: list[Entry], start: int, out: Path, split: str, seq: int,
                 skipped: list[dict], shard_bytes: int, max_samples: int | None, on_bad: str, workers: int,
                 bar: ProgressBar) -> list[dict]:
    """Write plan[start:] into shards numbered from ``seq``; log each finished shard in the state file."""
    shards: list[dict] = []
    pending_skips: list[dict] = []
    writer: ShardWriter | None = None
    try:
        for pos, entry, data, reason in validated(source, plan, start, workers, PREPARE[kind]):
            bar.advance()
            if reason is not None:
                if on_bad == "error":
                    raise DataError(f"bad image {entry.filename} (key {entry.key}, {split}) in {source.store}: {reason}; "
                                    "replace or remove it, or rerun with --on-bad skip")
                pending_skips.append({"key": entry.key, "file": entry.filename, "split": split, "reason": reason})
                continue
            members = sample_members(entry, data, source)
            size = ShardWriter.sample_bytes(members)
            if writer is not None and (writer.count == max_samples or
                                       writer.bytes + size + ShardWriter.closing_bytes(writer.bytes + size) > shard_bytes):
                shards.append(_finish(out, writer, split, pos, pending_skips, skipped))
                pending_skips = []
                writer = None
            if writer is None:
                writer = ShardWriter(out, split, seq + len(shards), prefix=kind)
            writer.add(entry.key, members)
        if writer is not None:
            shards.append(_finish(out, writer, split, len(plan), pending_skips, skipped))
            writer = None
        elif pending_skips:  # every remaining sample was bad: remember that too
            append_state(out, {"split": split, "shard": None, "next": len(plan), "skipped": pending_skips})
            skipped += pending_skips
    finally:
        if writer is not None:
            writer.abort()
    return shards


def _finish(out: Path, writer: ShardWriter, split: str, next_pos: int, pending_skips: list[dict],
            skipped: list[dict]) -> dict:
    record = writer.finish()
    append_state(out, {"split": split, "shard": record, "next": next_pos, "skipped": pending_skips})
    skipped += pending_skips
    return record
