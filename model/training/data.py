"""The trainer's side of the data: find (or, for the default run, build) the shards, open loaders.

All reading goes through ``pipeline`` (house rule); this module only decides which shards to use
and passes the runtime's device/rank/memory-format choices to ``pipeline.make_loader``.
"""
from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path
from typing import Any, Callable

from model.training.runtime import Runtime
from pipeline.errors import DataError
from pipeline.layout import MANIFEST
from pipeline.synthetic.tree import PARTITION_LIST, RECORD, read_record, write_record


def check_shards(shards: str | Path) -> dict[str, int]:
    """Samples per split of a preshard output folder, after ``pipeline``'s own checks (missing or
    empty folder, no manifest, missing tars or index files, an empty split: one DataError each)."""
    from pipeline.layout import SPLITS
    from pipeline.shards import read_split

    return {split: read_split(shards, split).count for split in SPLITS}


def prepare_default_data(cfg: dict[str, Any], rt: Runtime, console: Any) -> Path:
    """Shards for the run: ``cfg["data"]`` if set, else the synthetic set of ``synthetic_images`` faces drawn
    with ``seed``, generated and presharded on first use (and again when the config or the generator changes).

    Under DDP rank 0 builds and the others wait at a barrier.
    """
    if cfg["data"] is not None:
        shards = Path(cfg["data"])
        check_shards(shards)
        return shards
    shards, src = Path(cfg["synthetic_shards"]), Path(cfg["synthetic_dir"])
    if rt.is_main:
        synthetic_shards(src, shards, cfg["synthetic_images"], seed=cfg["seed"], console=console)
    if rt.distributed:
        import torch.distributed as dist

        dist.barrier()
    counts = check_shards(shards)
    if rt.is_main:
        counts = ", ".join(f"{split} {n:,}" for split, n in counts.items())
        console.print(f"[bold]data:[/] synthetic shards in {shards} ({counts})")
    return shards


def synthetic_shards(src: Path, shards: Path, n: int, seed: int = 0, console: Any = None) -> Path:
    """Shards of ``n`` synthetic faces drawn with ``seed``: drawn into ``src`` and presharded into ``shards``
    on first use, reused while they hold what is asked for, rebuilt (with one notice line saying why) when
    they hold another set.

    What each folder holds is in its record, ``.synthetic.json``: the tree's is written by the generator
    (images, seed, :data:`pipeline.synthetic.GENERATOR_VERSION`, complete or not), the shards' here
    before presharding (images, seed, generator version, source folder). A folder without a record is
    rebuilt only where it is recognisably an older version's output (the generator's or preshard's
    files only; shards whose manifest names ``src``); anything else is refused with one line, before
    anything is deleted. An interrupted build or rebuild leaves a record that the next call acts on:
    it continues the same set (the generator and preshard both resume) or clears another one."""
    from pipeline.synthetic import GENERATOR_VERSION

    want = {"images": n, "seed": seed, "generator": GENERATOR_VERSION}
    shards_want = {**want, "source": str(src.resolve())}
    shards_rec = read_record(shards)
    if shards_rec == shards_want and (shards / MANIFEST).is_file():
        return shards
    # Decide about both folders before touching either: a refusal must leave everything as it was.
    tree_rec = read_record(src)
    tree_state = ("done" if _tree_matches(tree_rec, want, complete=True) and (src / PARTITION_LIST).is_file()
                  else "same" if _tree_matches(tree_rec, want) else _other_or_foreign(src, tree_rec, _ours_tree))
    if tree_state == "done" and shards_rec == shards_want:
        shards_state = "same"  # an interrupted preshard of this very tree: preshard resumes it
    else:
        shards_state = _other_or_foreign(shards, shards_rec, lambda d: _ours_shards(d, src))
    for folder, state in ((src, tree_state), (shards, shards_state)):
        if state == "foreign":
            raise DataError(f"{folder} holds files that the synthetic default data did not make (it has no "
                            f"{RECORD}); move it away, or pass --data to train on shards of your own")
    if "other" in (tree_state, shards_state):
        rec, folder = (tree_rec, src) if tree_state == "other" else (shards_rec, shards)
        print(f"notice: rebuilding the synthetic data in {src} and {shards}: {folder} holds {_describe(rec)}, "
              f"the run asks for {_describe(want)}", file=sys.stderr, flush=True)

    from pipeline.preshard import preshard
    from pipeline.synthetic import write_synthetic_celeba

    if tree_state != "done":
        if tree_state == "other":
            _clear(src)
        if console is not None:
            console.print(f"[bold]data:[/] generating {n:,} synthetic faces in {src}")
        write_synthetic_celeba(src, n, seed=seed, progress=True)  # resumes a tree of the same record
    if shards_state == "other":
        _clear(shards)
    shards.mkdir(parents=True, exist_ok=True)
    write_record(shards, shards_want)
    if console is not None:
        console.print(f"[bold]data:[/] presharding {src} → {shards}")
    preshard(src, shards, progress=True)  # manifest.json last: complete only now
    return shards


def _tree_matches(record: dict | None, want: dict, *, complete: bool = False) -> bool:
    if record is None or record.get("layout") != "folder" or (complete and record.get("complete") is not True):
        return False
    return all(record.get(k) == v for k, v in want.items())


def _other_or_foreign(folder: Path, record: dict | None, ours: Callable[[Path], bool]) -> str:
    """"empty" (absent or empty), "other" (ours, holding something else: cleared) or "foreign"."""
    if not folder.exists() or (folder.is_dir() and not any(folder.iterdir())):
        return "empty"
    if not folder.is_dir():
        return "foreign"
    return "other" if record is not None or ours(folder) else "foreign"


def _ours_tree(folder: Path) -> bool:
    """A tree from before records: only the generator's files (images named like ``000001.jpg``)."""
    names = {"img_align_celeba", "img_align_celeba.zip", "list_eval_partition.txt", "list_attr_celeba.txt",
             ".synthetic-partial.json", ".synthetic.lock"}  # the lock file: left behind by a kill -9
    if not all(p.name in names or _temp(p.name) for p in folder.iterdir()):
        return False
    images = folder / "img_align_celeba"
    return not images.is_dir() or all(re.fullmatch(r"\.?\d{6}\.jpg(\.tmp)?", p.name) for p in images.iterdir())


def _ours_shards(folder: Path, src: Path) -> bool:
    """Shards from before records: only preshard's files, and a manifest naming ``src`` as their source."""
    from pipeline.layout import SPLITS
    from pipeline.preshard.state import our_files

    names = {MANIFEST, *SPLITS, ".preshard-state.jsonl", ".preshard.lock"}  # the lock file: left by a kill -9
    if not all(p.name in names or p.name.endswith(".partial") for p in folder.iterdir()):
        return False
    files = [p for split in SPLITS if (folder / split).is_dir() for p in (folder / split).iterdir()]
    if set(files) != set(our_files(folder)):
        return False
    try:
        source = json.loads((folder / MANIFEST).read_text())["source"]["path"]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return source == str(src.resolve())


def _temp(name: str) -> bool:
    return name.startswith(".") and name.endswith(".tmp")


def _describe(record: dict | None) -> str:
    if not record or not isinstance(record.get("images"), int):  # no record, or one edited by hand
        return "a set made by an older version of this project (no record; its faces are drawn differently)"
    return (f"{record['images']:,} faces (seed {record.get('seed')}, generator version {record.get('generator', 1)}"
            f"{', unfinished' if record.get('complete') is False else ''})")


def _clear(folder: Path) -> None:
    """Empty ``folder`` (ours: checked by the caller). The record goes first and comes back as a marker that
    matches nothing, so a clear that is interrupted is finished by the next call, never taken for a set."""
    write_record(folder, {"clearing": True})
    for p in folder.iterdir():
        if p.name == RECORD:
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink()


def open_loader(cfg: dict[str, Any], rt: Runtime, shards: Path, split: str, *, train: bool = False,
                with_keys: bool = False, whole_split: bool = False, read_once: bool = False):
    """``pipeline.make_loader`` with this run's settings. ``whole_split``: every sample on this process
    (rank 0 alone, e.g. for pictures), instead of this rank's share. ``read_once``: no decoded-image cache
    (a loader read once, or only in part, would pay its fill for nothing)."""
    from pipeline.loader import make_loader

    rank, world = (0, 1) if whole_split else (rt.rank, rt.world_size)
    return make_loader(
        shards, split, cfg["batch_size"] if train else cfg["eval_batch_size"],
        device=rt.device, backend=cfg["backend"], shuffle=train, drop_last=train,
        flip=bool(cfg["flip"]) and train, size=cfg["image_size"], channels_last=rt.channels_last,
        with_keys=with_keys, num_threads=cfg["num_threads"], seed=cfg["seed"], rank=rank, world_size=world,
        hw_decoder_load=cfg["hw_decoder_load"], hybrid_huffman_threshold=cfg["hybrid_huffman_threshold"],
        cache="none" if read_once else cfg["cache"], crop=cfg["crop"],
    )
