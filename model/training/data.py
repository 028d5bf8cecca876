"""The trainer's side of the data: find (or, for the default run, build) the shards, open loaders.

All reading goes through ``pipeline`` (house rule); this module only decides which shards to use
and passes the runtime's device/rank/memory-format choices to ``pipeline.make_loader``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from model.training.runtime import Runtime


def check_shards(shards: str | Path) -> dict[str, int]:
    """Samples per split of a preshard output folder, after ``pipeline``'s own checks (missing or
    empty folder, no manifest, missing tars or index files, an empty split: one DataError each)."""
    from pipeline.layout import SPLITS
    from pipeline.shards import read_split

    return {split: read_split(shards, split).count for split in SPLITS}


def prepare_default_data(cfg: dict[str, Any], rt: Runtime, console: Any) -> Path:
    """Shards for the run: ``cfg["data"]`` if set, else the synthetic set, generated and presharded on first use.

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
    """Shards of ``n`` synthetic faces: drawn into ``src`` and presharded into ``shards`` on first use,
    reused afterwards. Each step's output looks complete only once it is (the list files and
    manifest.json are written last), so an interrupted step is picked up by the next call."""
    if (shards / "manifest.json").is_file():
        return shards
    from pipeline.preshard import preshard
    from pipeline.synthetic import write_synthetic_celeba

    if not (src / "list_eval_partition.txt").is_file():
        if console is not None:
            console.print(f"[bold]data:[/] generating {n:,} synthetic faces in {src}")
        write_synthetic_celeba(src, n, seed=seed, progress=True)
    if console is not None:
        console.print(f"[bold]data:[/] presharding {src} → {shards}")
    preshard(src, shards, progress=True)
    return shards


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
