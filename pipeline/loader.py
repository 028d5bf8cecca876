"""``make_loader``: preshard's shards of one split → batches of float images on the training device.

Two backends share one contract and one epoch accounting:

* DALI (``dali-gpu``: nvJPEG decode on the GPU; ``dali-cpu``: libjpeg-turbo on CPU threads),
  see :mod:`pipeline.dali_pipeline`, exposed through DALI's ``DALIGenericIterator``;
* ``webdataset``: webdataset tar streaming + PIL + torch DataLoader workers, see
  :mod:`pipeline.fallback`, for machines where DALI cannot be installed.

Epoch accounting (both backends). The split's N samples, in tar order, are cut into
``world_size`` contiguous parts the way DALI shards a reader: rank r gets samples
``[floor(r·N/W), floor((r+1)·N/W))``. Per epoch a rank yields

* ``"partial"`` (eval default): every sample of its part once, last batch short;
* ``"drop"`` (train default): ``floor(floor(N/W) / B)`` full batches, the same count on every
  rank (so DDP ranks never wait on each other); at most ``B`` + 1 samples per rank are skipped;
* ``"pad"``: every sample once, the last batch filled up by repeating the part's last sample;
  ``ceil(ceil(N/W) / B)`` batches on every rank.

Shuffled loaders reshuffle every epoch: the tar order is permuted with ``(seed, epoch)`` (the
same permutation on every rank, so parts stay disjoint) and samples are shuffled within a
buffer with ``(seed, epoch, rank)``. An epoch's order depends only on those numbers, so a run
resumed with ``set_epoch(e)`` sees the same batches as the original one.
"""
from __future__ import annotations

import json
import math
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch

from . import usable_cores
from .errors import ConfigError, DataError

SPLITS = ("train", "val", "test")
BACKENDS = ("auto", "dali", "dali-gpu", "dali-cpu", "webdataset")
MANIFEST_FORMAT = "celeba-wds/1"
# Samples held by the shuffle buffer (DALI's ``initial_fill``; the fallback uses the same).
SHUFFLE_BUFFER = 1024
_PRESHARD_HINT = "re-run preshard (it validates every image and writes tars and index files together)"


# ----------------------------------------------------------------------------- shards on disk


@dataclass(frozen=True)
class ShardFile:
    """One tar of a split and its DALI index, as the manifest describes them."""

    tar: Path
    index: Path
    count: int
    bytes: int


@dataclass(frozen=True)
class SplitShards:
    """The validated shards of one split, in manifest order."""

    root: Path
    split: str
    shards: tuple[ShardFile, ...]

    @property
    def count(self) -> int:
        return sum(s.count for s in self.shards)


def read_split(shards: str | os.PathLike, split: str) -> SplitShards:
    """Read ``manifest.json`` and check the split's tars and index files cheaply (no hashing).

    Raises DataError for a missing or empty folder, a missing manifest, a missing or resized tar,
    a missing index file or one whose sample count disagrees with the manifest, and for an empty split.
    """
    if split not in SPLITS:
        raise ConfigError(f"unknown split {split!r}: expected one of {', '.join(SPLITS)}")
    root = Path(shards)
    manifest_path = root / "manifest.json"
    make_it = f"create it with: python -m pipeline.preshard --celeba CELEBA_DIR --out {root}"
    if not root.is_dir():
        raise DataError(f"shards folder {root} {'is not a folder' if root.exists() else 'does not exist'}; {make_it}")
    if not manifest_path.is_file():
        if not any(root.iterdir()):
            raise DataError(f"shards folder {root} is empty; {make_it}")
        raise DataError(f"no manifest.json in {root}: is this preshard's output folder? {_PRESHARD_HINT}")
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, ValueError) as err:
        raise DataError(f"cannot read {manifest_path}: {err}; {_PRESHARD_HINT}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        raise DataError(f"{manifest_path} has format {found!r}, expected {MANIFEST_FORMAT!r}; {_PRESHARD_HINT}")
    entry = (manifest.get("splits") or {}).get(split)
    if not entry or not entry.get("count") or not entry.get("shards"):
        have = [s for s, e in (manifest.get("splits") or {}).items() if e and e.get("count")]
        raise DataError(f"split {split!r} is empty in {manifest_path} (splits with samples: "
                        f"{', '.join(have) or 'none'}); check list_eval_partition.txt and {_PRESHARD_HINT}")
    files = []
    try:
        for s in entry["shards"]:
            files.append(ShardFile(root / s["path"], root / s["index"], int(s["count"]), int(s["bytes"])))
    except (KeyError, TypeError, ValueError) as err:
        raise DataError(f"malformed shard entry in {manifest_path} ({err!r}); {_PRESHARD_HINT}") from None
    for f in files:
        _check_shard(f)
    split_shards = SplitShards(root, split, tuple(files))
    if split_shards.count != int(entry["count"]):
        raise DataError(f"{manifest_path}: split {split!r} says {entry['count']} samples but its shards hold "
                        f"{split_shards.count}; {_PRESHARD_HINT}")
    return split_shards


def _check_shard(f: ShardFile) -> None:
    if not f.tar.is_file():
        raise DataError(f"missing shard {f.tar} (listed in manifest.json); {_PRESHARD_HINT}")
    size = f.tar.stat().st_size
    if size != f.bytes:
        raise DataError(f"shard {f.tar} has {size} bytes, manifest.json says {f.bytes}: truncated or rewritten; "
                        f"{_PRESHARD_HINT}")
    if not f.index.is_file():
        raise DataError(f"missing index file {f.index} for shard {f.tar.name}; {_PRESHARD_HINT}")
    with open(f.index, "rb") as fh:
        header = fh.readline().split()
    if len(header) != 2 or not header[0].startswith(b"v1.") or not header[1].isdigit():
        raise DataError(f"index file {f.index} has no 'v1.x <count>' header; {_PRESHARD_HINT}")
    if int(header[1]) != f.count:
        raise DataError(f"index file {f.index} lists {int(header[1])} samples, manifest.json says {f.count}; "
                        f"{_PRESHARD_HINT}")


@dataclass(frozen=True)
class IndexedSample:
    """Where one sample's JPEG sits in its tar (from the index file)."""

    key: str
    shard: ShardFile
    offset: int
    size: int


def read_index(shard: ShardFile) -> list[IndexedSample]:
    """Every sample of a shard with its JPEG member's byte range, in tar order (v1.2 index)."""
    out = []
    with open(shard.index) as fh:
        version = fh.readline().split()[0]
        # v1.2 lines are groups of "ext offset size name"; v1.1 groups carry no name.
        step = 4 if version == "v1.2" else 3
        for line_no, line in enumerate(fh, start=2):
            parts = line.split()
            for i in range(0, len(parts) - step + 1, step):
                if parts[i] == "jpg":
                    name = parts[i + 3] if step == 4 else f"{shard.tar.stem}#{line_no - 2}.jpg"
                    out.append(IndexedSample(name.rsplit(".", 1)[0], shard, int(parts[i + 1]), int(parts[i + 2])))
                    break
            else:
                raise DataError(f"index file {shard.index} line {line_no}: sample has no .jpg member; {_PRESHARD_HINT}")
    return out


def part_samples(order: Sequence[ShardFile], start: int, end: int) -> list[IndexedSample]:
    """Samples ``[start, end)`` of the concatenation of ``order``'s tars (one rank's part)."""
    out: list[IndexedSample] = []
    pos = 0
    for shard in order:
        if pos + shard.count > start and pos < end:
            samples = read_index(shard)
            out.extend(samples[max(0, start - pos):end - pos])
        pos += shard.count
    return out


# ----------------------------------------------------------------------------- epoch accounting


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


def finish_batch(images: torch.Tensor, device: torch.device, dtype: torch.dtype, channels_last: bool) -> torch.Tensor:
    """Move a B×3×H×W batch (float in [0,1], or uint8 0..255) to ``device``/``dtype``/layout."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    if images.dtype == torch.uint8:
        # Re-layout and transfer at 1 byte a value, then convert where the batch lives:
        # converting a strided view first costs ~7x more on the CPU.
        images = images.contiguous(memory_format=fmt).to(device, non_blocking=True)
        return images.to(dtype).div_(255)
    return images.to(device=device, dtype=dtype, non_blocking=True).contiguous(memory_format=fmt)


# ----------------------------------------------------------------------------- entry point


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
):
    """A re-iterable loader over one split of preshard's output folder ``shards``.

    Iterating yields float images B×3×``size``×``size`` in [0, 1] on ``device`` as ``dtype``
    (or ``(images, keys)`` with ``with_keys=True``). ``len(loader)`` is the number of batches
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
    """
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
    if backend not in BACKENDS:
        raise ConfigError(f"unknown loader backend {backend!r}: expected one of {', '.join(BACKENDS)}")
    if crop is not None and (not isinstance(crop, int) or crop < 1):
        raise ConfigError(f"crop must be a positive integer or None, got {crop!r}")
    if not isinstance(size, int) or size < 1:
        raise ConfigError(f"size must be a positive integer, got {size!r}")
    if dtype not in (torch.float32, torch.float16, torch.bfloat16, torch.float64):
        raise ConfigError(f"dtype must be a floating-point torch dtype, got {dtype!r}")
    if not isinstance(prefetch, int) or prefetch < 1:
        raise ConfigError(f"prefetch must be >= 1, got {prefetch!r}")
    if num_threads is not None and (not isinstance(num_threads, int) or num_threads < 0):
        raise ConfigError(f"num_threads must be a non-negative integer, got {num_threads!r}")
    if hw_decoder_load is not None and (isinstance(hw_decoder_load, bool) or not isinstance(hw_decoder_load, (int, float))
                                        or not 0 <= hw_decoder_load <= 1):
        raise ConfigError(f"hw_decoder_load must be a number in [0, 1] or None, got {hw_decoder_load!r}")
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
                          f"rank {rank} would get none")
    if plan.num_batches == 0:
        raise ConfigError(f"batch_size={batch_size} is larger than the {split_shards.count // world_size} samples per "
                          f"rank of split {split!r}, so drop_last leaves no batch: lower batch_size or set drop_last=False")

    common = dict(split=split_shards, plan=plan, device=dev, shuffle=shuffle, with_keys=with_keys,
                  flip=bool(flip), crop=crop, size=size, dtype=dtype, channels_last=channels_last,
                  prefetch=prefetch, seed=int(seed))
    kind = _resolve_backend(backend, dev)
    if kind == "webdataset":
        from .fallback import WebDatasetLoader

        workers = _default_threads() if num_threads is None else num_threads
        return WebDatasetLoader(num_workers=workers, draft=draft, **common)
    threads = _default_threads() if num_threads is None else num_threads
    if threads < 1:
        raise ConfigError("num_threads must be >= 1 for the DALI backends")
    return DaliLoader(decode_on_gpu=kind == "dali-gpu", num_threads=threads, hw_decoder_load=hw_decoder_load, **common)


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


def resolve_rank(rank: int | None, world_size: int | None) -> tuple[int, int]:
    """Explicit values win; otherwise torch.distributed's rank/world size, else 0 and 1."""
    dist = torch.distributed
    initialized = dist.is_available() and dist.is_initialized()
    if world_size is None:
        world_size = dist.get_world_size() if initialized else 1
    if rank is None:
        rank = dist.get_rank() if initialized else 0
    if world_size < 1 or not 0 <= rank < world_size:
        raise ConfigError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
    return int(rank), int(world_size)


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


# ----------------------------------------------------------------------------- DALI backend


class LoaderBase:
    """What every backend shares: its settings, the epoch plan and the contract around them.

    Subclasses set ``backend`` and implement ``__iter__`` (one epoch per pass)."""

    backend: str

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


class DaliLoader(LoaderBase):
    """DALI pipeline + ``DALIGenericIterator`` behind the loader contract (see module doc)."""

    def __init__(self, *, decode_on_gpu: bool, num_threads: int, hw_decoder_load: float | None = None,
                 **settings) -> None:
        super().__init__(**settings)
        self.backend = "dali-gpu" if decode_on_gpu else "dali-cpu"
        self._threads = num_threads
        self._hw_decoder_load = None if hw_decoder_load is None else float(hw_decoder_load)
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

    # -- internals ------------------------------------------------------------------------
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
            crop=self._crop, size=self._size, flip=self._flip, half=self._dtype == torch.float16,
            channels_last=self._channels_last, with_keys=self._with_keys, hw_decoder_load=self._hw_decoder_load,
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
        from .dali_pipeline import keys_from_source_info

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
                images = finish_batch(images, self.device, self._dtype, self._channels_last)
                done += 1
                if self._with_keys:
                    yield images, keys_from_source_info(batch["keys"])
                else:
                    yield images
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
            raise DataError(f"the shards of split {self.split.split!r} gave {done} of the {want} batches their index "
                            f"files promise for rank {self.plan.rank}; {_PRESHARD_HINT}")
        self._clean = True
        self._epoch += 1

    def _explain(self, err: RuntimeError, batches_done: int) -> BaseException:
        """Turn DALI's 'Critical error in pipeline' into one DataError naming shard and key.

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


_MALFORMED_INDEX = re.compile(r'Malformed index file at "(?P<index>[^"]+)" line (?P<line>\d+)')
_SOURCE_INFO = re.compile(r"(?P<tar>[^\s'\"]+\.tar):(?P<offset>\d+):(?P<member>[^\s'\"]+)")


def explain_dali_error(err: RuntimeError, order: Sequence[ShardFile], plan: EpochPlan,
                       window: tuple[int, int]) -> DataError | None:
    """A DataError naming shard and key for a dead DALI pipeline; None if not about the data.

    DALI's message names the sample only for some failures ("... TAR:OFFSET:KEY"); for the
    others (e.g. "nvImageCodec failure") the loader finds the undecodable JPEG itself by
    decoding the samples that were in flight (``window``, positions in this rank's part), then
    the rest of the part.
    """
    msg = str(err)
    if "Critical error in pipeline" not in msg:
        return None
    found = _MALFORMED_INDEX.search(msg)
    if found:
        index = Path(found["index"])
        line = int(found["line"])
        return DataError(f"shard {index.with_suffix('.tar')} ends before sample {_index_line_key(index, line)} "
                         f"(line {line} of its index file): the tar is truncated or was changed after indexing; "
                         f"{_PRESHARD_HINT}")
    found = _SOURCE_INFO.search(msg)
    if found:
        key = found["member"].split(".", 1)[0]
        return DataError(f"corrupt JPEG {key} in {found['tar']} (offset {found['offset']}): "
                         f"re-run preshard (it validates every image)")
    detail = _dali_reason(msg)
    if "decoder" in msg or "nvImageCodec" in msg or "decode" in msg.lower():
        bad = find_undecodable(part_samples(order, plan.start, plan.end), window)
        if bad is not None:
            return DataError(f"corrupt JPEG {bad.key} in {bad.shard.tar} (offset {bad.offset}; DALI: {detail}): "
                             f"re-run preshard (it validates every image)")
        return DataError(f"DALI could not decode a JPEG of split {order[0].tar.parent.name!r} ({detail}), and PIL "
                         f"decodes all of them, so the culprit is unknown; {_PRESHARD_HINT}")
    return DataError(f"reading the shards of {order[0].tar.parent} failed in DALI ({detail}); {_PRESHARD_HINT}")


def _index_line_key(index: Path, line: int) -> str:
    """The sample key on 1-based ``line`` of a v1.2 index file (line 1 is the header), or '?'."""
    try:
        with open(index) as fh:
            for n, text in enumerate(fh, start=1):
                if n == line:
                    names = [p for p in text.split() if "." in p]
                    return names[0].split(".", 1)[0] if names else "?"
    except OSError:
        pass
    return "?"


def _dali_reason(msg: str) -> str:
    """The line DALI puts after 'encountered:' (the actual cause), else the message's last line."""
    lines = [ln.strip() for ln in msg.splitlines() if ln.strip()]
    for i, line in enumerate(lines):
        if line == "encountered:" and i + 1 < len(lines):
            return lines[i + 1]
    skip = ("Current pipeline object is no longer valid.",)
    meaningful = [ln for ln in lines if ln not in skip]
    return meaningful[-1] if meaningful else msg


def find_undecodable(samples: Sequence[IndexedSample], window: tuple[int, int]) -> IndexedSample | None:
    """The first sample PIL cannot decode, trying the positions in ``window`` first."""
    from PIL import Image, UnidentifiedImageError
    import io

    lo, hi = max(0, window[0]), min(len(samples), window[1])
    candidates = list(range(lo, hi)) + list(range(0, lo)) + list(range(hi, len(samples)))
    handles: dict[Path, object] = {}
    try:
        for n, i in enumerate(candidates):
            if n == hi - lo and n < len(candidates):
                print(f"notice: searching all {len(samples)} samples of this rank for the undecodable JPEG ...",
                      file=sys.stderr)
            s = samples[i]
            fh = handles.get(s.shard.tar) or handles.setdefault(s.shard.tar, open(s.shard.tar, "rb"))
            fh.seek(s.offset)
            data = fh.read(s.size)
            try:
                with Image.open(io.BytesIO(data)) as img:
                    img.load()
            except (OSError, ValueError, UnidentifiedImageError, SyntaxError):
                return s
    finally:
        for fh in handles.values():
            fh.close()
    return None
