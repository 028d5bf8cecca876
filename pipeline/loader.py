"""``make_loader``: preshard's shards of one split → batches of float images on the training device.

This module checks the arguments and chooses the backend (the one place that choice is made);
the backends share one contract (:mod:`pipeline.loader_base`) and one epoch accounting
(:mod:`pipeline.epoch`):

* DALI (``dali-gpu``: nvJPEG decode on the GPU; ``dali-cpu``: libjpeg-turbo on CPU threads),
  :mod:`pipeline.dali_loader` over the graph in :mod:`pipeline.dali_pipeline`;
* ``webdataset``: webdataset tar streaming + PIL + torch DataLoader workers,
  :mod:`pipeline.webdataset_loader`, for machines where DALI cannot be installed.
"""
from __future__ import annotations

import dataclasses
import os
import sys

import torch

from .cache import CACHES, CachedLoader, choose_cache
from .epoch import EpochPlan, resolve_rank
from .errors import ConfigError
from .parallel import usable_cores
from .shards import read_split

BACKENDS = ("auto", "dali", "dali-gpu", "dali-cpu", "webdataset")


def make_loader(
    shards: str | os.PathLike,
    split: str,
    batch_size: int,
    *,
    device: str | torch.device | None = None,
    backend: str = "auto",
    shuffle: bool | None = None,
    with_keys: bool = False,
    drop_last: bool | None = None,
    pad_last: bool = False,
    flip: bool | None = None,
    crop: int | None = 148,
    size: int = 64,
    dtype: torch.dtype = torch.float32,
    channels_last: bool = False,
    num_threads: int | None = None,
    prefetch: int = 2,
    seed: int = 0,
    rank: int | None = None,
    world_size: int | None = None,
    draft: bool = True,
    hw_decoder_load: float | None = None,
    hybrid_huffman_threshold: int | None = None,
    cache: str = "none",
):
    """A re-iterable loader over one split of preshard's output folder ``shards``.

    Iterating yields float images B×3×``size``×``size`` in [0, 1] on ``device`` as ``dtype``
    (``torch.uint8``: the pixels 0..255 unconverted), or ``(images, keys)`` with ``with_keys=True``. ``len(loader)`` is the number of batches
    per epoch for this rank, ``loader.num_samples`` the distinct samples it yields per epoch.

    Args:
        device: "cuda"/"cpu"/torch.device; None picks "cuda" when available.
        backend: "auto" (DALI when importable, else webdataset with a one-line notice),
            "dali" (GPU decode on CUDA, CPU decode otherwise), "dali-gpu", "dali-cpu"
            (CPU decode even on a GPU machine) or "webdataset".
        shuffle: None → ``split == "train"``. Reshuffled every epoch (see ``set_epoch``).
        drop_last: None → ``split == "train"``. False keeps the last short batch, or with
            ``pad_last=True`` fills it by repeating a sample (fixed shapes, equal batch counts
            across DDP ranks).
        flip: random horizontal flip; None → False.
        crop: side of the centred square crop before resizing (None: no crop).
        num_threads: DALI CPU threads, or DataLoader worker processes for the webdataset
            backend (0 = decode in the main process); None → all available cores.
        prefetch: batches prepared ahead (DALI queue depth / DataLoader prefetch factor).
        rank, world_size: None → torch.distributed's when initialised, else 0 and 1.
        draft: webdataset backend only: let libjpeg decode at reduced scale (DCT domain).
        hw_decoder_load: DALI-GPU only: share of the JPEGs decoded by the hardware JPEG engines
            (A100/H100), in [0, 1]; None → DALI's default (0.65).
        hybrid_huffman_threshold: DALI-GPU only: images with more pixels than this get their Huffman
            stage on the GPU, the others on CPU threads; None → DALI's default (1,000,000, above
            every CelebA image).
        cache: keep the decoded images after the first epoch (:mod:`pipeline.cache`): "none",
            "host" (RAM), "device" (GPU memory) or "auto" (device on CUDA, else host, when it fits;
            otherwise none, with a notice). A forced cache that does not fit is a ConfigError.
    """
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
    if backend not in BACKENDS:
        raise ConfigError(f"unknown loader backend {backend!r}: expected one of {', '.join(BACKENDS)}")
    if crop is not None and (not isinstance(crop, int) or crop < 1):
        raise ConfigError(f"crop must be a positive integer or None, got {crop!r}")
    if not isinstance(size, int) or size < 1:
        raise ConfigError(f"size must be a positive integer, got {size!r}")
    if dtype not in (torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.uint8):
        raise ConfigError(f"dtype must be a floating-point torch dtype or torch.uint8, got {dtype!r}")
    if not isinstance(prefetch, int) or prefetch < 1:
        raise ConfigError(f"prefetch must be >= 1, got {prefetch!r}")
    if num_threads is not None and (not isinstance(num_threads, int) or num_threads < 0):
        raise ConfigError(f"num_threads must be a non-negative integer, got {num_threads!r}")
    if hw_decoder_load is not None and (isinstance(hw_decoder_load, bool) or not isinstance(hw_decoder_load, (int, float))
                                        or not 0 <= hw_decoder_load <= 1):
        raise ConfigError(f"hw_decoder_load must be a number in [0, 1] or None, got {hw_decoder_load!r}")
    if hybrid_huffman_threshold is not None and (isinstance(hybrid_huffman_threshold, bool)
                                                 or not isinstance(hybrid_huffman_threshold, int)
                                                 or hybrid_huffman_threshold < 0):
        raise ConfigError(f"hybrid_huffman_threshold must be a non-negative integer (pixels) or None, "
                          f"got {hybrid_huffman_threshold!r}")
    if cache not in CACHES:
        raise ConfigError(f"unknown cache {cache!r}: expected one of {', '.join(CACHES)}")
    dev = resolve_device(device)
    rank, world_size = resolve_rank(rank, world_size)
    shuffle = split == "train" if shuffle is None else bool(shuffle)
    drop_last = split == "train" if drop_last is None else bool(drop_last)
    if drop_last and pad_last:
        raise ConfigError("drop_last=True and pad_last=True contradict each other: pick one")
    policy = "drop" if drop_last else ("pad" if pad_last else "partial")

    split_shards = read_split(shards, split)
    plan = EpochPlan(batch_size, policy, rank, world_size, split_shards.count)
    if plan.part == 0:
        raise ConfigError(f"split {split!r} has {split_shards.count} samples, fewer than world_size={world_size}: "
                          f"rank {rank} would get none; start fewer processes (torchrun --nproc_per_node) or use "
                          "more data")
    if plan.num_batches == 0:
        per_rank = split_shards.count // world_size
        raise ConfigError(f"batch size {batch_size} is larger than the {per_rank} samples "
                          f"{'per process ' if world_size > 1 else ''}of split {split!r}, and an epoch drops the last "
                          f"short batch, so it would have none: lower the batch size to at most {per_rank} "
                          f"(train.py: --batch_size {per_rank}), or use more data")

    kind = _resolve_backend(backend, dev)
    threads = _default_threads() if num_threads is None else num_threads
    if kind != "webdataset" and threads < 1:
        raise ConfigError("num_threads must be >= 1 for the DALI backends")
    where = choose_cache(cache, dev, split_shards.split, plan, size)
    settings = dict(split=split_shards, shuffle=shuffle, crop=crop, size=size, prefetch=prefetch, seed=int(seed))
    output = dict(device=dev, with_keys=with_keys, flip=bool(flip), dtype=dtype, channels_last=channels_last)
    if where == "none":
        return _backend(kind, threads, draft, hw_decoder_load, hybrid_huffman_threshold, plan=plan, **settings,
                        **output)
    # The cache's source: every sample of the rank's part once, as uint8 NHWC, unflipped, with keys; the
    # cache applies the policy, flips and converts (it does so whether it keeps the images or not).
    source = _backend(kind, threads, draft, hw_decoder_load, hybrid_huffman_threshold,
                      plan=dataclasses.replace(plan, policy="partial"), **settings,
                      device=dev if where == "device" or kind == "dali-gpu" else torch.device("cpu"),
                      with_keys=True, flip=False, dtype=torch.uint8, channels_last=True)
    source.raw_keys = True
    return CachedLoader(source, where, plan=plan, **settings, **output)


def _backend(kind: str, threads: int, draft: bool, hw_decoder_load: float | None,
             hybrid_huffman_threshold: int | None, **common):
    if kind == "webdataset":
        from .webdataset_loader import WebDatasetLoader

        return WebDatasetLoader(num_workers=threads, draft=draft, **common)
    from .dali_loader import DaliLoader

    return DaliLoader(decode_on_gpu=kind == "dali-gpu", num_threads=threads, hw_decoder_load=hw_decoder_load,
                      hybrid_huffman_threshold=hybrid_huffman_threshold, **common)


def resolve_device(device: str | torch.device | None) -> torch.device:
    """None → cuda when available, else cpu; a CUDA device without CUDA is a ConfigError."""
    if device is None:
        return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ConfigError(f"bad device {device!r}: {err}") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {str(device)!r} requested but CUDA is not available here; use device='cpu'")
        return torch.device("cuda", dev.index if dev.index is not None else torch.cuda.current_device())
    if dev.type != "cpu":
        raise ConfigError(f"unsupported loader device {str(device)!r}: use 'cuda' or 'cpu'")
    return dev


def _default_threads() -> int:
    return max(1, min(usable_cores(), 16))


def dali_import_error() -> str | None:
    """None when nvidia.dali and its PyTorch plugin import, else the reason."""
    try:
        import nvidia.dali  # noqa: F401
        import nvidia.dali.plugin.pytorch  # noqa: F401
    except Exception as err:  # ImportError, or a broken native library (OSError)
        return f"{type(err).__name__}: {err}".splitlines()[0]
    return None


def _resolve_backend(backend: str, device: torch.device) -> str:
    """THE place the loader backend is chosen: "dali-gpu" | "dali-cpu" | "webdataset"."""
    if backend == "webdataset":
        return "webdataset"
    reason = dali_import_error()
    if reason is not None:
        if backend != "auto":
            raise ConfigError(f"backend {backend!r} needs NVIDIA DALI, which does not import ({reason}); "
                              f"pip install nvidia-dali-cuda130, or use backend='webdataset'")
        print(f"notice: NVIDIA DALI is not available ({reason}); using the webdataset+PIL loader",
              file=sys.stderr)
        return "webdataset"
    if backend == "dali-gpu" and device.type != "cuda":
        raise ConfigError("backend 'dali-gpu' decodes on the GPU and needs a CUDA device")
    if backend == "dali-cpu":
        return "dali-cpu"
    return "dali-gpu" if device.type == "cuda" else "dali-cpu"
