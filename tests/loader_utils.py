"""What the loader tests share: the backends to run, one pass of a loader, a split's keys and JPEG bytes."""
from __future__ import annotations

import pytest
import torch

from pipeline import make_loader
from pipeline.shards import part_samples, read_split

BACKENDS = ["dali-cpu", "webdataset"]
CUDA = torch.cuda.is_available()
gpu = pytest.mark.skipif(not CUDA, reason="needs CUDA")


def split_keys(shards, split):
    s = read_split(shards, split)
    return [x.key for x in part_samples(s.shards, 0, s.count)]


def jpeg_bytes(shards, split):
    s = read_split(shards, split)
    out = {}
    for x in part_samples(s.shards, 0, s.count):
        with open(x.shard.tar, "rb") as fh:
            fh.seek(x.offset)
            out[x.key] = fh.read(x.size)
    return out


def epoch(loader):
    """(keys, batch sizes) of one pass."""
    keys, sizes = [], []
    for images, k in loader:
        assert images.shape[0] == len(k)
        keys += k
        sizes.append(len(k))
    return keys, sizes


def loader(shards, split, bs, backend, **kw):
    kw.setdefault("num_threads", 1)
    return make_loader(shards, split, bs, device="cpu", backend=backend, with_keys=True, **kw)


def one_line(err):
    """The message of a ``pytest.raises`` result, checked to be one line without a traceback."""
    msg = str(err.value)
    assert "\n" not in msg and "Traceback" not in msg
    return msg
