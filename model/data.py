"""The trainer's side of the data: find (or, for the default run, build) the shards, open loaders.

All reading goes through ``pipeline`` (house rule); this module only decides which shards to use
and passes the runtime's device/rank/memory-format choices to ``pipeline.make_loader``.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pipeline.errors import DataError
from model.runtime import Runtime


def _manifest(shards: Path) -> dict[str, Any]:
    try:
        return json.loads((shards / "manifest.json").read_text())
    except json.JSONDecodeError as err:
        raise DataError(f"{shards / 'manifest.json'} is not valid JSON ({err}); re-run preshard") from None


def split_count(manifest: dict[str, Any], split: str) -> int:
    return int(manifest.get("splits", {}).get(split, {}).get("count", 0))


def check_shards(shards: str | Path) -> dict[str, Any]:
    """The manifest of a preshard output dir; DataError when the dir is missing, empty or not shards."""
    shards = Path(shards)
    hint = "create it with: python -m pipeline.preshard CELEBA_DIR " + str(shards)
    if not shards.exists():
        raise DataError(f"data directory {shards} does not exist; {hint}")
    if not shards.is_dir():
        raise DataError(f"data path {shards} is not a directory")
    if not (shards / "manifest.json").is_file():
        what = "is empty" if not any(shards.iterdir()) else "has no manifest.json (not preshard output)"
        raise DataError(f"data directory {shards} {what}; {hint}")
    manifest = _manifest(shards)
    if split_count(manifest, "train") == 0:
        raise DataError(f"data directory {shards} has no training samples (manifest lists none)")
    return manifest


def prepare_default_data(cfg: dict[str, Any], rt: Runtime, console: Any) -> Path:
    """Shards for the run: ``cfg["data"]`` if set, else the synthetic set, generated and presharded on first use.

    Under DDP rank 0 builds and the others wait at a barrier.
    """
    if cfg["data"] is not None:
        shards = Path(cfg["data"])
        check_shards(shards)
        return shards
    shards, src = Path(cfg["synthetic_shards"]), Path(cfg["synthetic_dir"])
    if rt.is_main and not (shards / "manifest.json").is_file():
        from pipeline.preshard import preshard
        from pipeline.synthetic import write_synthetic_celeba

        if not (src / "list_eval_partition.txt").is_file():
            console.print(f"[bold]data:[/] generating {cfg['synthetic_images']:,} synthetic faces in {src}")
            write_synthetic_celeba(src, cfg["synthetic_images"], seed=cfg["seed"], progress=True)
        console.print(f"[bold]data:[/] presharding {src} → {shards}")
        preshard(src, shards, progress=True)
    if rt.distributed:
        import torch.distributed as dist

        dist.barrier()
    manifest = check_shards(shards)
    if rt.is_main:
        counts = ", ".join(f"{s} {split_count(manifest, s):,}" for s in ("train", "val", "test"))
        console.print(f"[bold]data:[/] synthetic shards in {shards} ({counts})")
    return shards


def open_loader(cfg: dict[str, Any], rt: Runtime, shards: Path, split: str, *, train: bool = False,
                with_keys: bool = False, whole_split: bool = False):
    """``pipeline.make_loader`` with this run's settings. ``whole_split``: every sample on this process
    (rank 0 alone, e.g. for pictures), instead of this rank's share."""
    from pipeline import make_loader

    rank, world = (0, 1) if whole_split else (rt.rank, rt.world_size)
    return make_loader(
        shards, split, cfg["batch_size"] if train else cfg["eval_batch_size"],
        device=rt.device, backend=cfg["backend"], shuffle=train, drop_last=train,
        flip=bool(cfg["flip"]) and train, size=cfg["image_size"], channels_last=rt.channels_last,
        with_keys=with_keys, num_threads=cfg["num_threads"], seed=cfg["seed"], rank=rank, world_size=world,
    )
