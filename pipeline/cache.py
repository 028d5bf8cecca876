"""The decoded-image cache: decode each JPEG once, then train from the kept pixels.

At 64×64 a decoded CelebA image is 12,288 bytes; the whole train split (162,770 images) is 2.0 GB,
which fits in a GPU's or a host's memory, while decoding it again every epoch costs a share of the
training rate on a CPU and is what limits a GPU (bench/RESULTS.md: input efficiency, the cache). So a :class:`CachedLoader` reads its backend (DALI
or the fallback) once, keeping every sample's final uint8 image (after crop and resize, before flip
and float conversion) at its position in the rank's part, and serves later epochs from memory.

Which epoch reads what, so that a resumed run sees exactly the batches of an uninterrupted one:

* epoch 0 of a shuffled loader streams from the backend in its own (seed, epoch 0) order and fills
  the cache on the way; every later epoch is a (seed, epoch, rank) permutation of the cache. A loader
  whose first pass is a later epoch (a resumed run) fills the cache silently first.
* an unshuffled loader (val, test) yields the part in order whether it streams or reads the cache.
* each rank caches only its own part (epoch 0's), and permutes within it afterwards: across ranks an
  epoch still covers the split exactly, while each rank keeps to its share (DALI's ``stick_to_shard``).

Flips are drawn per sample from (seed, epoch, rank) and applied where the batch lives. The epoch plan
(drop / pad / partial, batches per rank) is the uncached loader's. Memory is checked before the first
epoch against a share of what is free (:data:`SHARES`); an out-of-memory while filling drops the cache
with a notice and the run goes on decoding.
"""
from __future__ import annotations

import os
import sys
from typing import Iterator

import numpy as np
import torch

from .epoch import EpochPlan, epoch_seed, epoch_shard_order
from .errors import ConfigError, DataError
from .layout import PRESHARD_HINT
from .loader_base import LoaderBase
from .shards import SplitShards, part_samples

CACHES = ("none", "auto", "host", "device")

#: Share of the free memory a cache may take: the rest is the model's, the optimizer's and the
#: backend's (DALI's buffers on the GPU; the DataLoader workers and the OS page cache on the host).
SHARES = {"device": 0.5, "host": 0.5}

# Seed tags of the cache's own random streams, apart from the backends' (see epoch.epoch_seed).
_ORDER_TAG, _FLIP_TAG = 0xCAC4E, 0xF11F

# Bytes promised to caches that exist but have not allocated yet, per memory ("host" or a CUDA
# device): loaders opened one after another (train, then val) must not each count the same free memory.
_promised: dict[str, int] = {}
# Memories an "auto" cache has been announced in (the notice says it once per process).
_announced: set[str] = set()


def needed_bytes(plan: EpochPlan, size: int) -> int:
    """Bytes of one rank's cache: its part's images as uint8 ``size``×``size``×3."""
    return plan.part * size * size * 3


def free_bytes(where: str, device: torch.device) -> int:
    """Free memory where a cache would live: the GPU's free memory, or the host's available RAM
    (the smaller of the kernel's MemAvailable and what the cgroup, if limited, still allows)."""
    if where == "device":
        return int(torch.cuda.mem_get_info(device)[0])
    avail = None
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    avail = int(line.split()[1]) * 1024
                    break
    except OSError:
        pass
    if avail is None:
        avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    try:
        with open("/sys/fs/cgroup/memory.max") as fh:
            limit = fh.read().strip()
        with open("/sys/fs/cgroup/memory.current") as fh:
            used = int(fh.read().strip())
        if limit != "max":
            avail = min(avail, int(limit) - used)
    except (OSError, ValueError):
        pass
    return max(0, avail)


def _memory_key(where: str, device: torch.device) -> str:
    return str(device) if where == "device" else "host"


def choose_cache(cache: str, device: torch.device, split: str, plan: EpochPlan, size: int) -> str:
    """Where this loader keeps its images: "none" | "host" | "device" (the one place that is decided).

    "auto" takes the device's memory on CUDA when the cache fits in its share, else the host's, else
    none, and says so in one line (rank 0). A forced "host"/"device" that does not fit is a ConfigError.
    """
    if cache == "none":
        return "none"
    if cache == "device" and device.type != "cuda":
        raise ConfigError("cache 'device' keeps the images in GPU memory and needs a CUDA device; "
                          "use cache 'host' or 'auto'")
    need = needed_bytes(plan, size)
    candidates = [cache] if cache != "auto" else (["device", "host"] if device.type == "cuda" else ["host"])
    refusals = []
    for where in candidates:
        free = free_bytes(where, device)
        budget = SHARES[where] * free - _promised.get(_memory_key(where, device), 0)
        memory = "GPU memory" if where == "device" else "host memory"
        if need <= budget:
            if cache == "auto" and where not in _announced:  # once per process: train, val and test alike
                _announced.add(where)
                _notice(plan, f"decoded images are kept in {memory} after their first epoch (split {split!r}: "
                              f"{_size(need)} for {plan.part:,} images, {_size(free)} free)")
            return where
        refusals.append(f"{_size(need)} for {plan.part:,} images is more than {SHARES[where]:.0%} of the "
                        f"{_size(free)} of {memory} still free")
    if cache != "auto":
        raise ConfigError(f"cache {cache!r}: split {split!r} does not fit ({refusals[0]}); "
                          f"use cache 'auto' or 'none'")
    _notice(plan, f"split {split!r} is not cached ({'; '.join(refusals)}): it is decoded every epoch")
    return "none"


def _notice(plan: EpochPlan, text: str) -> None:
    if plan.rank == 0:
        print(f"notice: {text}", file=sys.stderr)


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1000
    raise AssertionError


def _padded(images: torch.Tensor, keys: list[str], bs: int) -> tuple[torch.Tensor, list[str]]:
    """A short batch filled up to ``bs`` by repeating its last sample (the "pad" policy)."""
    fill = bs - len(keys)
    return torch.cat([images, images[-1:].expand(fill, *images.shape[1:])]), list(keys) + [keys[-1]] * fill


def _is_oom(err: BaseException) -> bool:
    return isinstance(err, (torch.cuda.OutOfMemoryError, MemoryError)) or "out of memory" in str(err).lower()


class CachedLoader(LoaderBase):
    """A backend loader read once, then served from memory (see the module docstring).

    ``source`` must yield every sample of the rank's part once per pass ("partial" policy) as uint8,
    channels_last, unflipped, with keys; this loader applies the plan's policy, flips and conversion.
    """

    def __init__(self, source: LoaderBase, where: str, **settings) -> None:
        super().__init__(**settings)
        self.backend = source.backend
        self.cache = where
        self._source = source
        self._memory = torch.device("cpu") if where == "host" else self.device
        self._images: torch.Tensor | None = None
        self._slot: np.ndarray | None = None  # part order → storage row (see _source_pass)
        self._keys = [s.key for s in part_samples(epoch_shard_order(self.split, self._seed, 0, self._shuffle),
                                                  self.plan.start, self.plan.end)]
        self._position = {key: i for i, key in enumerate(self._keys)}
        if len(self._position) != len(self._keys):
            raise DataError(f"split {self.split.split!r} holds the same key twice; {PRESHARD_HINT}")
        self._promise = (_memory_key(where, self.device), needed_bytes(self.plan, self._size))
        _promised[self._promise[0]] = _promised.get(self._promise[0], 0) + self._promise[1]

    @property
    def filled(self) -> bool:
        return self._images is not None

    @property
    def cache_bytes(self) -> int:
        return 0 if self._images is None else self._images.numel()

    def close(self) -> None:
        """Release the backend and the cached images."""
        self._source.close()
        self._images = None
        self._settle_promise()

    def __iter__(self) -> Iterator:
        epoch = self._epoch
        if self.filled:
            return self._cached(epoch)
        if self.cache == "none" or epoch == 0 or not self._shuffle:
            return self._streamed(epoch, keep=self.cache != "none")
        return self._filled_then_cached(epoch)

    # ------------------------------------------------------------------ the three kinds of pass

    def _streamed(self, epoch: int, keep: bool) -> Iterator:
        """Epoch ``epoch`` as the backend reads it, filling the cache on the way when ``keep``."""
        bs, want, policy = self.plan.batch_size, self.plan.num_batches, self.plan.policy
        flips = self._flips(epoch)
        done, last = 0, None
        for images, keys in self._source_pass(epoch, keep):
            if done == want:
                continue  # "drop" leaves the part's last samples out of the epoch, not out of the cache
            if len(keys) < bs and policy == "pad":
                images, keys = _padded(images, keys, bs)
            elif len(keys) < bs and policy == "drop":
                continue
            last = (images[-1:].clone(), keys[-1:])  # a copy: a backend may refill its buffers while draining
            yield self._hand_over(images, keys, flips, done * bs)
            done += 1
        while policy == "pad" and done < want and last is not None:
            # a part one sample shorter than the longest has one batch less: padding alone evens the count
            yield self._hand_over(*_padded(*last, bs), flips, done * bs)
            done += 1
        if done < want:
            raise self._short_epoch(done)
        self._epoch = epoch + 1

    def _cached(self, epoch: int) -> Iterator:
        """Epoch ``epoch`` from memory: a (seed, epoch, rank) permutation of the part, or its order."""
        bs, want, n = self.plan.batch_size, self.plan.num_batches, self.plan.part
        order = (np.random.default_rng([self._seed, epoch, self.plan.rank, _ORDER_TAG]).permutation(n)
                 if self._shuffle else np.arange(n))
        if self.plan.policy == "pad" and want * bs > n:
            order = np.concatenate([order, np.full(want * bs - n, order[-1])])
        index = torch.from_numpy(self._slot[order])  # where each sample was stored
        if self._memory.type == "cuda":  # once per epoch, and still without waiting: pinned, non-blocking
            index = index.pin_memory()
        index = index.to(self._memory, non_blocking=True)
        flips = self._flips(epoch)
        images = self._images
        for b in range(want):
            rows = order[b * bs:(b + 1) * bs]
            keys = [self._keys[i] for i in rows] if self._with_keys else None
            yield self._hand_over(images[index[b * bs:(b + 1) * bs]], keys, flips, b * bs)
        self._epoch = epoch + 1

    def _filled_then_cached(self, epoch: int) -> Iterator:
        """A first pass at a later epoch (a resumed run): fill from epoch 0's reading, then read the cache."""
        for _ in self._source_pass(0, keep=True):
            pass
        yield from (self._cached(epoch) if self.filled else self._streamed(epoch, keep=False))

    # ------------------------------------------------------------------ pieces

    def _source_pass(self, epoch: int, keep: bool) -> Iterator[tuple[torch.Tensor, list[str]]]:
        """The backend's batches of ``epoch`` as (uint8 NHWC, keys), stored on the way when ``keep``.

        Samples are stored in the order they arrive (a slice per batch: no index to build or copy per
        batch) and their keys are read once, when the pass is complete: ``_slot`` then maps each sample's
        place in the part's key order (what the cached epochs permute) to where it was stored."""
        self._source.set_epoch(epoch)
        store = self._allocate() if keep else None
        arrived: list = []  # each batch's keys, as the backend hands them (decoded only at the end)
        stored = 0
        for batch, keys in self._source:
            images = batch.permute(0, 2, 3, 1)  # the channels_last NCHW view of an NHWC buffer
            if store is not None:
                n = len(keys)
                try:
                    if stored + n > store.shape[0]:
                        raise DataError(f"split {self.split.split!r} gave more samples than its part holds "
                                        f"({store.shape[0]}); {PRESHARD_HINT}")
                    # non_blocking only towards the GPU: a GPU → host copy must be complete before it is stored
                    store[stored:stored + n] = images.to(self._memory, non_blocking=self._memory.type == "cuda")
                    arrived.append(keys)
                    stored += n
                except (RuntimeError, MemoryError) as err:
                    if not _is_oom(err):
                        raise
                    store = self._drop(f"out of memory while filling: {str(err).splitlines()[0]}")
            yield images, keys
        if store is not None and stored == self.plan.part:
            slot = np.full(self.plan.part, -1, dtype=np.int64)
            for i, key in enumerate(k for keys in arrived for k in keys):
                position = self._position.get(key)
                if position is None or slot[position] >= 0:
                    raise DataError(f"split {self.split.split!r} gave key {key!r} "
                                    f"{'twice' if position is not None else 'that its index does not list'}; "
                                    f"{PRESHARD_HINT}")
                slot[position] = i
            self._images, self._slot = store, slot
            self._settle_promise()

    def _allocate(self) -> torch.Tensor | None:
        try:
            return torch.empty((self.plan.part, self._size, self._size, 3), dtype=torch.uint8, device=self._memory)
        except (RuntimeError, MemoryError) as err:
            if not _is_oom(err):
                raise
            return self._drop(f"out of memory allocating {_size(needed_bytes(self.plan, self._size))}")

    def _drop(self, why: str) -> None:
        """Give the cache up (an out-of-memory): one notice, and the loader streams from now on."""
        _notice(self.plan, f"decoded-image cache of split {self.split.split!r} dropped ({why}); "
                           f"decoding every epoch instead")
        self.cache = "none"
        self._images = None
        self._settle_promise()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        return None

    def _settle_promise(self) -> None:
        """The promised bytes are no longer outstanding: allocated, or never to be."""
        if self._promise is not None:
            key, n = self._promise
            _promised[key] -= n
            self._promise = None

    def _flips(self, epoch: int) -> torch.Tensor | None:
        """One mirror decision per sample position of the epoch, drawn from (seed, epoch, rank)."""
        if not self._flip:
            return None
        g = torch.Generator().manual_seed(epoch_seed(self._seed, epoch, self.plan.rank, _FLIP_TAG))
        return (torch.rand(self.plan.num_batches * self.plan.batch_size, generator=g) < 0.5).to(self._memory)

    def _hand_over(self, images: torch.Tensor, keys: list[str] | None, flips: torch.Tensor | None, at: int):
        """An NHWC uint8 batch, mirrored where drawn, converted as the contract hands it out."""
        if flips is not None:
            mirror = flips[at:at + images.shape[0]].to(images.device).view(-1, 1, 1, 1)
            images = torch.where(mirror, images.flip(2), images)
        return self._emit(images.permute(0, 3, 1, 2), keys)
