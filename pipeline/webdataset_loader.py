"""The loader without DALI: webdataset tar streaming + PIL decode + torch DataLoader workers.

Same contract and epoch accounting as the DALI path (see :mod:`pipeline.epoch`): rank r
reads its contiguous part of the split; the part is cut again into one contiguous sub-range
per DataLoader worker, so samples are neither duplicated nor lost whatever the worker count.
Each worker seeks straight to its first sample with the index file and streams the tar from
there with webdataset's tar iterator. Workers hand over small uint8 chunks; the main
process re-batches them into exact ``batch_size`` batches and applies the last-batch policy.
Stop signals are the main process's to handle: it finishes its step, checkpoints, and under torchrun
the ranks agree on the stop only every log_interval steps, reading batches all that time. A Ctrl-C
reaches every process of the terminal's group and a scheduler's SIGTERM every process of the job,
so workers ignore both: one that left would fail the main process's next batch ("worker exited
unexpectedly") before it could checkpoint. They end with their parent instead: when it shuts the
DataLoader down, when it dies (torch's workers watch for that), or when it sends SIGTERM itself,
as multiprocessing does to leftover workers at exit (a worker deaf to that would hang the exit).
"""
from __future__ import annotations

import functools
import gc
import os
import signal
import sys
import tarfile
import threading
from typing import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from .epoch import SHUFFLE_BUFFER, EpochPlan, epoch_seed, epoch_shard_order
from .errors import DataError
from .layout import PRESHARD_HINT
from .loader_base import LoaderBase
from .shards import IndexedSample, ShardFile, part_samples
from .transforms import decode_crop_resize

_TAR_HEADER = 512
# Samples per worker → main-process hand-over: big enough to amortise IPC, small enough
# that the re-batching main process is never starved.
_CHUNK = 32


class _WorkerError:
    """An error raised in a worker, carried to the main process as data so it stays one line."""

    def __init__(self, message: str) -> None:
        self.message = message


class PartStream(IterableDataset):
    """One rank's part of one epoch, split across DataLoader workers; yields (uint8 N×H×W×3 array, keys)."""

    def __init__(self, order: Sequence[ShardFile], plan: EpochPlan, *, shuffle: bool, seed: int, epoch: int,
                 crop: int | None, size: int, flip: bool, draft: bool) -> None:
        self.order, self.plan = list(order), plan
        self.shuffle, self.seed, self.epoch = shuffle, seed, epoch
        self.crop, self.size, self.flip, self.draft = crop, size, flip, draft

    def __iter__(self) -> Iterator:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        part = self.plan.part
        lo = self.plan.start + part * worker // workers
        hi = self.plan.start + part * (worker + 1) // workers
        rng = np.random.default_rng(epoch_seed(self.seed, self.epoch, self.plan.rank, worker + 1))
        images: list[np.ndarray] = []
        keys: list[str] = []
        try:
            for key, data, shard in self._shuffled(self._stream(lo, hi), rng):
                try:
                    flip = bool(self.flip and rng.random() < 0.5)
                    images.append(decode_crop_resize(data, self.crop, self.size, draft=self.draft, flip=flip))
                except (OSError, ValueError, SyntaxError) as err:
                    raise DataError(f"corrupt JPEG {key} in {shard.tar} ({str(err).split(' <')[0]}): "
                                    f"{PRESHARD_HINT}") from None
                keys.append(key)
                if len(images) == _CHUNK:
                    yield np.stack(images), keys
                    images, keys = [], []
            if images:
                yield np.stack(images), keys
        except DataError as err:
            yield _WorkerError(str(err))

    def _stream(self, lo: int, hi: int) -> Iterator[tuple[str, bytes, ShardFile]]:
        """(key, jpeg bytes, shard) for samples [lo, hi) of the epoch's tar order."""
        from webdataset.tariterators import tar_file_iterator

        if hi <= lo:
            return
        wanted = part_samples(self.order, lo, hi)
        i = 0
        while i < len(wanted):
            first = wanted[i]
            n = 1
            while i + n < len(wanted) and wanted[i + n].shard is first.shard:
                n += 1
            with open(first.shard.tar, "rb") as fh:
                fh.seek(first.offset - _TAR_HEADER)
                got = 0
                members = tar_file_iterator(fh)
                while got < n:
                    try:
                        member = next(members)
                    except StopIteration:
                        break
                    except (tarfile.TarError, OSError) as err:
                        key = wanted[i + got].key
                        reason = str(err).split(" @ ")[0]
                        raise DataError(f"shard {first.shard.tar} is unreadable at sample {key} ({reason}): "
                                        f"truncated or damaged; {PRESHARD_HINT}") from None
                    stem, _, ext = member["fname"].partition(".")
                    if ext != "jpg":
                        continue
                    expected: IndexedSample = wanted[i + got]
                    if stem != expected.key:
                        raise DataError(f"shard {first.shard.tar} does not match its index file {first.shard.index} "
                                        f"(found {stem!r} where the index has {expected.key!r}); {PRESHARD_HINT}")
                    yield stem, member["data"], first.shard
                    got += 1
                if got < n:
                    raise DataError(f"shard {first.shard.tar} ends after {got} of the {n} samples its index promises "
                                    f"from {first.key} on: truncated; {PRESHARD_HINT}")
            i += n

    def _shuffled(self, stream: Iterator, rng: np.random.Generator) -> Iterator:
        """Buffer shuffle (as DALI's reader does), or the stream unchanged."""
        if not self.shuffle:
            yield from stream
            return
        buf: list = []
        for item in stream:
            if len(buf) < SHUFFLE_BUFFER:
                buf.append(item)
                continue
            j = int(rng.integers(len(buf)))
            buf[j], item = item, buf[j]
            yield item
        rng.shuffle(buf)
        yield from buf


def _worker_signals(parent: int, worker_id: int) -> None:
    """DataLoader worker_init_fn (bound to the main process's pid): ignore Ctrl-C, and SIGTERM unless
    ``parent`` sends it (see the module docstring). A handler cannot tell who sent a signal, so SIGTERM
    is blocked and a thread takes it with sigwaitinfo, which says."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if not hasattr(signal, "sigwaitinfo"):  # macOS: leave on any SIGTERM with status 0, torch reports no crash
        signal.signal(signal.SIGTERM, lambda signum, frame: os._exit(0))
        return
    # Blocked before the worker starts any other thread: they all inherit the mask, so every SIGTERM
    # waits for sigwaitinfo instead of reaching a handler.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    threading.Thread(target=_leave_on_sigterm_from, args=(parent,), daemon=True, name="sigterm-from-parent").start()


def _leave_on_sigterm_from(parent: int) -> None:
    while signal.sigwaitinfo({signal.SIGTERM}).si_pid != parent:
        pass
    os._exit(0)  # status 0, as torch's own worker handler for its parent's SIGTERM: no crash reported


def _as_is(chunk):
    """DataLoader's per-item conversion, disabled: numpy chunks travel pickled through the
    worker pipe, which is ~10x cheaper than torch's shared-memory hand-over of many small
    tensors (a file descriptor and an authenticated connection each)."""
    return chunk


class WebDatasetLoader(LoaderBase):
    """webdataset + PIL + DataLoader workers behind the loader contract (see :mod:`pipeline.loader_base`).
    Workers live only while an epoch is being iterated, so there is nothing to release in close()."""

    backend = "webdataset"

    def __init__(self, *, num_workers: int, draft: bool, **settings) -> None:
        super().__init__(**settings)
        self._workers, self._draft = num_workers, draft

    def __iter__(self) -> Iterator:
        order = epoch_shard_order(self.split, self._seed, self._epoch, self._shuffle)
        stream = PartStream(order, self.plan, shuffle=self._shuffle, seed=self._seed, epoch=self._epoch,
                            crop=self._crop, size=self._size, flip=self._flip, draft=self._draft)
        # Never more workers than samples: an idle worker would only cost a fork.
        workers = min(self._workers, self.plan.part)
        if workers and "nvidia.dali" in sys.modules:
            # A DALI pipeline left in cyclic garbage would be destroyed by the GC of a forked
            # worker, where its threads are gone: it deadlocks. Collect it here, where they live.
            gc.collect()
        chunks = DataLoader(stream, batch_size=None, num_workers=workers, collate_fn=_as_is,
                            prefetch_factor=self._prefetch if workers else None,
                            worker_init_fn=functools.partial(_worker_signals, os.getpid()) if workers else None)
        return self._batches(chunks)

    def _batches(self, chunks: Iterator) -> Iterator:
        # Re-batching is done in numpy on purpose: torch.cat on this 2-core box spins up
        # intra-op threads that fight the decoding workers (bench/RESULTS.md, "Loader accuracy" has the figures).
        bs, want, policy = self.plan.batch_size, self.plan.num_batches, self.plan.policy
        pending: list[np.ndarray] = []
        keys: list[str] = []
        have = done = 0
        last: tuple[np.ndarray, str] | None = None  # the most recent sample: padding repeats it
        for chunk in chunks:
            if isinstance(chunk, _WorkerError):
                raise DataError(chunk.message)
            images, chunk_keys = chunk
            pending.append(images)
            keys += chunk_keys
            have += len(chunk_keys)
            last = (images[-1], chunk_keys[-1])
            while have >= bs and done < want:
                stacked = np.concatenate(pending) if len(pending) > 1 else pending[0]
                pending, have = [stacked[bs:]], have - bs
                batch_keys, keys = keys[:bs], keys[bs:]
                done += 1
                yield self._emit(stacked[:bs], batch_keys)
        if policy != "drop" and done < want and last is not None:
            rest = np.concatenate(pending) if len(pending) > 1 else pending[0]
            while done < want:
                if policy == "pad" and len(rest) < bs:
                    fill = bs - len(rest)
                    rest = np.concatenate([rest, np.repeat(last[0][None], fill, axis=0)])
                    keys = keys + [last[1]] * fill
                if not len(rest):
                    break
                done += 1
                yield self._emit(rest, keys)
                rest, keys = rest[:0], []
        if done < want:  # never hand out a silently short epoch
            raise self._short_epoch(done)
        self._epoch += 1

    def _emit(self, images: np.ndarray, keys: list[str]):
        return super()._emit(torch.from_numpy(images).permute(0, 3, 1, 2), keys)
