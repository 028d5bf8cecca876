"""The DALI backend: :mod:`pipeline.dali_pipeline` behind ``DALIGenericIterator`` and the loader contract.

``dali-gpu`` decodes with nvJPEG on the GPU (``device="mixed"``), ``dali-cpu`` with libjpeg-turbo
on CPU threads. A pipeline covers exactly one rank's part (``stick_to_shard``); a shuffled loader
builds a new pipeline per epoch (new seed, new tar order, see :mod:`pipeline.epoch`).
"""
from __future__ import annotations

from typing import Iterator

import torch

from .dali_errors import explain_dali_error
from .epoch import SHUFFLE_BUFFER, epoch_seed, epoch_shard_order
from .loader_base import LoaderBase

# What the pipeline itself outputs per asked dtype; others (bf16, fp64) are converted from float32.
_DALI_OUT = {torch.float16: "half", torch.uint8: "uint8"}


class DaliLoader(LoaderBase):
    """DALI pipeline + ``DALIGenericIterator`` behind the loader contract (see :mod:`pipeline.loader_base`)."""

    def __init__(self, *, decode_on_gpu: bool, num_threads: int, hw_decoder_load: float | None = None,
                 hybrid_huffman_threshold: int | None = None, **settings) -> None:
        super().__init__(**settings)
        self.backend = "dali-gpu" if decode_on_gpu else "dali-cpu"
        self._threads = num_threads
        self._hw_decoder_load = None if hw_decoder_load is None else float(hw_decoder_load)
        self._huffman_threshold = hybrid_huffman_threshold
        self._iterator = None
        self._pipe = None
        self._built_for: int | None = None
        self._clean = False  # the iterator sits at an epoch boundary and can be reused
        self._build()  # fail fast (bad tars, dead pipelines) at construction, not mid-training

    def close(self) -> None:
        """Release the pipeline (and its GPU memory)."""
        self._iterator = None
        self._pipe = None
        self._built_for = None

    def __iter__(self) -> Iterator:
        needs_new = self._iterator is None or not self._clean or (self._shuffle and self._built_for != self._epoch)
        if needs_new:
            self._build()
        return self._batches()

    def _build(self) -> None:
        from nvidia.dali.plugin.pytorch import DALIGenericIterator, LastBatchPolicy

        from .dali_pipeline import READER_NAME, celeba_pipeline, output_names

        self.close()
        order = epoch_shard_order(self.split, self._seed, self._epoch, self._shuffle)
        pipe = celeba_pipeline(
            [str(s.tar) for s in order], [str(s.index) for s in order],
            decode_device="mixed" if self.backend == "dali-gpu" else "cpu",
            shard_id=self.plan.rank, num_shards=self.plan.world_size,
            shuffle=self._shuffle, initial_fill=SHUFFLE_BUFFER,
            crop=self._crop, size=self._size, flip=self._flip, out_dtype=_DALI_OUT.get(self._dtype, "float"),
            channels_last=self._channels_last, with_keys=self._with_keys, hw_decoder_load=self._hw_decoder_load,
            hybrid_huffman_threshold=self._huffman_threshold,
            batch_size=self.plan.batch_size, num_threads=self._threads,
            device_id=self.device.index if self.backend == "dali-gpu" else None,
            prefetch_queue_depth=self._prefetch,
            seed=epoch_seed(self._seed, self._epoch, self.plan.rank),
        )
        self._order = order
        policy = LastBatchPolicy.FILL if self.plan.policy == "pad" else LastBatchPolicy.PARTIAL
        failure = None
        try:
            # DROP is done here, not by DALI: its DROP skips padded leftovers wrongly across
            # epochs when ranks' parts differ in size; PARTIAL + counting is exact.
            self._iterator = DALIGenericIterator(pipe, output_names(self._with_keys), reader_name=READER_NAME,
                                                 last_batch_policy=policy, auto_reset=True)
        except RuntimeError as err:
            failure = self._explain(err, batches_done=0)
        if failure is not None:
            del pipe
            raise failure
        self._pipe = pipe
        self._built_for = self._epoch
        self._clean = True

    def _batches(self) -> Iterator:
        from .dali_pipeline import SourceKeys

        self._clean = False
        want = self.plan.num_batches
        done = 0
        it = self._iterator
        out = None
        try:
            for out in it:
                if done == want:
                    continue  # drain the short/padded leftovers so the next epoch starts clean
                batch = out[0]
                images = batch["images"]
                if images.shape[0] == 0 or (self.plan.policy == "drop" and images.shape[0] < self.plan.batch_size):
                    continue
                if self._channels_last:
                    images = images.permute(0, 3, 1, 2)  # NHWC buffer → channels_last NCHW view
                done += 1
                # a copy: the iterator may reuse its buffer; decoded only when someone reads the keys
                yield self._emit(images, SourceKeys(batch["keys"].clone()) if self._with_keys else None)
        except RuntimeError as err:
            failure = self._explain(err, batches_done=done)
        else:
            failure = None
        if failure is not None:
            del it, out
            self.close()
            raise failure
        if done < want:  # never hand out a silently short epoch
            self.close()
            raise self._short_epoch(done)
        self._clean = True
        self._epoch += 1

    def _explain(self, err: RuntimeError, batches_done: int) -> BaseException:
        """DALI's 'Critical error in pipeline' as one DataError naming shard and key.

        The result is chained to a traceback-free copy of DALI's error: the original's
        traceback pins the dead pipeline, and a dead pipeline that is garbage-collected
        inside a forked DataLoader worker deadlocks there (its threads do not exist).
        """
        bs = self.plan.batch_size
        # Which samples may have been in flight: the failing batch, the prefetched ones,
        # and (when shuffling) whatever sat in the shuffle buffer.
        lead = SHUFFLE_BUFFER if self._shuffle else 0
        window = (max(0, batches_done * bs - 4 * lead), (batches_done + self._prefetch + 3) * bs + lead)
        explained = explain_dali_error(err, self._order, self.plan, window)
        detached = RuntimeError(str(err))
        if explained is None:
            return detached
        explained.__cause__ = detached
        return explained
