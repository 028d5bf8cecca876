"""What every loader backend shares: its settings, the epoch plan, and the batch hand-over.

A backend subclasses :class:`LoaderBase`, sets ``backend`` and implements ``__iter__`` (one
epoch per pass); the contract (``len``, ``num_samples``, ``set_epoch``, never a silently short
epoch, batches as float B×3×H×W in [0, 1] on the device) is written here once.
"""
from __future__ import annotations

from typing import Sequence

import torch

from .epoch import EpochPlan
from .errors import DataError
from .layout import PRESHARD_HINT
from .shards import SplitShards


def finish_batch(images: torch.Tensor, device: torch.device, dtype: torch.dtype, channels_last: bool) -> torch.Tensor:
    """Move a B×3×H×W batch (float in [0,1], or uint8 0..255) to ``device``/``dtype``/layout.
    ``dtype=torch.uint8`` hands uint8 batches over as they are (0..255)."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    if dtype == torch.uint8:
        return images.contiguous(memory_format=fmt).to(device, non_blocking=True)
    if images.dtype == torch.uint8:
        # Re-layout and transfer at 1 byte a value, then convert where the batch lives:
        # converting a strided view first costs ~7x more on the CPU.
        images = images.contiguous(memory_format=fmt).to(device, non_blocking=True)
        return images.to(dtype).div_(255)
    return images.to(device=device, dtype=dtype, non_blocking=True).contiguous(memory_format=fmt)


class LoaderBase:
    """The settings and contract every backend shares (see the module docstring)."""

    backend: str
    cache: str = "none"  # where decoded images are kept between epochs (see pipeline.cache)
    filled: bool = False  # whether they are all kept by now
    cache_bytes: int = 0  # the memory they take
    raw_keys: bool = False  # a cache's source: keys handed on as the backend has them (see _emit)

    def __init__(self, *, split: SplitShards, plan: EpochPlan, device: torch.device, shuffle: bool, with_keys: bool,
                 flip: bool, crop: int | None, size: int, dtype: torch.dtype, channels_last: bool, prefetch: int,
                 seed: int) -> None:
        self.split, self.plan, self.device = split, plan, device
        self._shuffle, self._with_keys, self._flip = shuffle, with_keys, flip
        self._crop, self._size, self._dtype, self._channels_last = crop, size, dtype, channels_last
        self._prefetch, self._seed = prefetch, seed
        self._epoch = 0

    @property
    def num_samples(self) -> int:
        return self.plan.num_samples

    @property
    def batch_size(self) -> int:
        return self.plan.batch_size

    @property
    def epoch(self) -> int:
        return self._epoch

    def __len__(self) -> int:
        return self.plan.num_batches

    def set_epoch(self, epoch: int) -> None:
        """Make the next pass epoch ``epoch`` (its shuffle order depends only on seed and epoch)."""
        self._epoch = int(epoch)

    def close(self) -> None:
        """Release what the backend holds between epochs (nothing, unless overridden)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _emit(self, images: torch.Tensor, keys: Sequence[str] | None):
        """A finished batch (NCHW view, uint8 or float) as the contract hands it out: keys as a list, except
        from a cache's source (``raw_keys``), whose keys stay undecoded until the cache reads them."""
        images = finish_batch(images, self.device, self._dtype, self._channels_last)
        if not self._with_keys:
            return images
        return images, (keys if self.raw_keys else list(keys))

    def _short_epoch(self, done: int) -> DataError:
        """The error for an epoch that ended before the batches the index files promise."""
        return DataError(f"the shards of split {self.split.split!r} gave {done} of the {self.plan.num_batches} "
                         f"batches their index files promise for rank {self.plan.rank}; {PRESHARD_HINT}")
