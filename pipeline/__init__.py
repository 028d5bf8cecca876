"""The one way in for data: CelebA (or synthetic faces) → WebDataset shards → image batches.

Where things are:

    layout.py            SPLITS, manifest format, the re-shard hint (shared names)
    errors.py            UserError / DataError / ConfigError and ``cli_entry`` (every CLI's wrapper)
    parallel.py          core count, ordered process-pool map, progress bar
    celeba.py            CelebA as distributed (folder or zip, partition and attribute lists)
    image_folder.py      any folder of JPEG/PNG/WebP faces: listing, split by path hash, shard keys
    synthetic/           procedurally drawn faces in CelebA's layout (the embedded default)
    preshard/            CelebA or a folder → validated WebDataset tars + DALI index files + manifest.json
    wds_index.py         DALI's index format (write, parse)
    shards.py            reading the manifest and index files of one split
    epoch.py             rank parts, batches per epoch, per-epoch shuffle order and seeds
    transforms.py        the crop + resize contract in PIL
    images.py            image files (JPEG/PNG) prepared the loader's way, for `python -m model`
    loader.py            ``make_loader``: checks its arguments, picks a backend and a cache
    loader_base.py       what every backend shares (settings, epoch plan, batch hand-over)
    dali_pipeline.py     the DALI graph; dali_loader.py its loader; dali_errors.py its errors explained
    webdataset_loader.py webdataset + PIL + DataLoader workers, for machines without DALI
    cache.py             the decoded-image cache: epoch 0 decodes and keeps, later epochs permute

Heavy imports (torch, DALI) happen lazily so that ``python -m pipeline.preshard`` and
``python -m pipeline.synthetic`` start fast and need neither. Nothing here imports ``kernels``,
``model``, ``train`` or ``bench``.
"""
from __future__ import annotations

from .errors import ConfigError, DataError, UserError
from .parallel import usable_cores

__all__ = ["make_loader", "preshard", "write_synthetic_celeba", "usable_cores", "DataError", "ConfigError",
           "UserError"]

_LAZY = {
    "make_loader": ("pipeline.loader", "make_loader"),
    "preshard": ("pipeline.preshard", "preshard"),
    "write_synthetic_celeba": ("pipeline.synthetic", "write_synthetic_celeba"),
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'pipeline' has no attribute {name!r}")
