"""Epoch accounting shared by every loader backend: who reads what, how many batches, in which order.

The split's N samples, in tar order, are cut into ``world_size`` contiguous parts the way DALI
shards a reader: rank r gets samples ``[floor(r·N/W), floor((r+1)·N/W))``. Per epoch a rank yields

* ``"partial"`` (eval default): every sample of its part once, last batch short;
* ``"drop"`` (train default): ``floor(floor(N/W) / B)`` full batches, the same count on every
  rank (so DDP ranks never wait on each other); at most ``B`` + 1 samples per rank are skipped;
* ``"pad"``: every sample once, the last batch filled up by repeating the part's last sample;
  ``ceil(ceil(N/W) / B)`` batches on every rank.

Shuffled loaders reshuffle every epoch: the tar order is permuted with ``(seed, epoch)`` (the
same permutation on every rank, so parts stay disjoint) and samples are shuffled within a
buffer of :data:`SHUFFLE_BUFFER` with ``(seed, epoch, rank)``. An epoch's order depends only on
those numbers, so a run resumed with ``set_epoch(e)`` sees the same batches as the original one.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from .errors import ConfigError
from .shards import ShardFile, SplitShards

#: Samples held by the shuffle buffer (DALI's ``initial_fill``; the webdataset loader uses the same).
SHUFFLE_BUFFER = 1024


def resolve_rank(rank: int | None = None, world_size: int | None = None) -> tuple[int, int]:
    """(rank, world_size): explicit values win; otherwise torch.distributed's, else 0 and 1.

    The one place a rank is decided: the loaders and the trainer's runtime both ask here."""
    import torch.distributed as dist

    initialized = dist.is_available() and dist.is_initialized()
    if world_size is None:
        world_size = dist.get_world_size() if initialized else 1
    if rank is None:
        rank = dist.get_rank() if initialized else 0
    if world_size < 1 or not 0 <= rank < world_size:
        raise ConfigError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
    return int(rank), int(world_size)


def rank_bounds(total: int, world_size: int, rank: int) -> tuple[int, int]:
    """[start, end) of rank's contiguous part of ``total`` samples, as DALI shards a reader."""
    return total * rank // world_size, total * (rank + 1) // world_size


@dataclass(frozen=True)
class EpochPlan:
    """What one rank yields per epoch: batch count, distinct samples, last-batch policy."""

    batch_size: int
    policy: str  # "drop" | "partial" | "pad"
    rank: int
    world_size: int
    total: int
    start: int = field(init=False)
    end: int = field(init=False)

    def __post_init__(self) -> None:
        start, end = rank_bounds(self.total, self.world_size, self.rank)
        object.__setattr__(self, "start", start)
        object.__setattr__(self, "end", end)

    @property
    def part(self) -> int:
        """Samples in this rank's part of the split."""
        return self.end - self.start

    @property
    def num_batches(self) -> int:
        if self.policy == "drop":
            return (self.total // self.world_size) // self.batch_size
        if self.policy == "pad":
            return math.ceil(math.ceil(self.total / self.world_size) / self.batch_size)
        return math.ceil(self.part / self.batch_size)

    @property
    def num_samples(self) -> int:
        """Distinct samples this rank yields per epoch (padding repeats are not counted)."""
        return self.num_batches * self.batch_size if self.policy == "drop" else self.part


def epoch_shard_order(split: SplitShards, seed: int, epoch: int, shuffle: bool) -> list[ShardFile]:
    """The split's tars in the order read this epoch: a (seed, epoch) permutation when shuffling."""
    shards = list(split.shards)
    if not shuffle:
        return shards
    perm = np.random.default_rng([seed, epoch, 0x5EED]).permutation(len(shards))
    return [shards[i] for i in perm]


def epoch_seed(seed: int, epoch: int, rank: int, worker: int = 0) -> int:
    """A 31-bit seed for the shuffle buffer / flips of one (epoch, rank, worker)."""
    return int(np.random.SeedSequence([seed, epoch, rank, worker]).generate_state(1)[0] & 0x7FFFFFFF)
