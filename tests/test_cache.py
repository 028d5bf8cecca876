"""The decoded-image cache against the uncached loader: same images per epoch, same batch counts for
every rank / world size / last-batch policy, exact resume, the memory check and its notices, an
out-of-memory while filling, and a corrupt JPEG met while filling.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

import pipeline.cache as cache_mod
from pipeline import make_loader
from pipeline.errors import ConfigError, DataError
from pipeline.shards import read_index, read_split

POLICIES = {"drop": dict(drop_last=True), "pad": dict(drop_last=False, pad_last=True), "partial": dict(drop_last=False)}


def open_loader(shards, cache, *, backend="webdataset", split="train", bs=7, policy="partial", rank=0, world=1, **kw):
    # num_threads=0: the fallback decodes in this process (no worker fork per epoch: a faster test)
    kw = {"shuffle": True, "num_threads": 0 if backend == "webdataset" else 1, **POLICIES[policy], **kw}
    return make_loader(shards, split, bs, device="cpu", backend=backend, cache=cache, with_keys=True,
                       rank=rank, world_size=world, **kw)


def read_epoch(loader, epoch):
    """{key: uint8 HWC image} and the batch sizes of one epoch."""
    loader.set_epoch(epoch)
    images, sizes, keys = {}, [], []
    for x, k in loader:
        assert x.dtype == torch.float32 and x.shape[1:] == (3, 64, 64)
        sizes.append(len(k))
        keys += k
        for key, img in zip(k, x):
            images[key] = (img * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    return images, sizes, keys


@pytest.mark.parametrize("backend", [pytest.param("webdataset", marks=pytest.mark.slow), "dali-cpu"])
def test_cached_epochs_yield_the_uncached_images(shards_dir, backend):
    plain = open_loader(shards_dir, "none", backend=backend)
    cached = open_loader(shards_dir, "host", backend=backend)
    assert cached.cache == "host" and cached.backend == plain.backend == backend
    reference, _, ref_keys = read_epoch(plain, 0)
    first, _, first_keys = read_epoch(cached, 0)
    assert cached.filled and first_keys == ref_keys  # the filling epoch streams in the backend's order
    for epoch in (1, 2):
        got, sizes, keys = read_epoch(cached, epoch)
        assert sorted(got) == sorted(reference) and len(keys) == len(got)  # the same images, each once
        assert keys != ref_keys  # reshuffled
        for key, img in got.items():
            np.testing.assert_array_equal(img, reference[key])  # the same pixels
    cached.close()
    assert not cached.filled


@pytest.mark.parametrize("policy", sorted(POLICIES))
def test_batch_counts_and_coverage_for_every_rank(shards_dir, policy):
    world = 3
    split_keys = {s.key for shard in read_split(shards_dir, "train").shards for s in read_index(shard)}
    unions = {0: [], 1: []}
    for rank in range(world):
        plain = open_loader(shards_dir, "none", policy=policy, rank=rank, world=world, bs=16)
        cached = open_loader(shards_dir, "host", policy=policy, rank=rank, world=world, bs=16)
        assert len(cached) == len(plain) and cached.num_samples == plain.num_samples
        _, plain_sizes, _ = read_epoch(plain, 1)
        for epoch in (0, 1):  # streamed and filled, then cached
            _, sizes, keys = read_epoch(cached, epoch)
            assert sizes == plain_sizes
            distinct = set(keys)
            assert len(distinct) == cached.num_samples
            if policy != "pad":
                assert len(keys) == len(distinct)
            unions[epoch] += sorted(distinct)
    for union in unions.values():
        assert len(union) == len(set(union))  # ranks never share a sample
        if policy != "drop":
            assert set(union) == split_keys


def test_pad_gives_a_short_part_its_all_padding_batch(shards_dir):
    """7 ranks, batch 3: some parts hold 27 samples, others 28, and "pad" gives all 10 batches."""
    parts = [open_loader(shards_dir, "none", policy="pad", rank=r, world=7, bs=3).plan.part for r in range(7)]
    assert set(parts) == {27, 28}
    short = parts.index(27)
    plain = open_loader(shards_dir, "none", policy="pad", rank=short, world=7, bs=3)
    cached = open_loader(shards_dir, "host", policy="pad", rank=short, world=7, bs=3)
    for epoch in (0, 1):  # streamed, then cached
        _, sizes, keys = read_epoch(cached, epoch)
        assert sizes == read_epoch(plain, epoch)[1] == [3] * 10 and len(set(keys)) == 27


def test_resume_in_a_cached_epoch_equals_the_uninterrupted_run(shards_dir):
    kw = dict(flip=True, policy="drop")
    whole = open_loader(shards_dir, "host", **kw)
    for epoch in (0, 1):
        read_epoch(whole, epoch)
    whole.set_epoch(2)
    expected = [(x.clone(), k) for x, k in whole]
    resumed = open_loader(shards_dir, "host", **kw)  # a new process: empty cache, first pass is epoch 2
    resumed.set_epoch(2)
    batches = iter(resumed)
    for _ in range(3):  # train.py replays the loader to the checkpoint's batch
        next(batches)
    rest = list(batches)
    assert resumed.filled and len(rest) == len(expected) - 3
    for (x, k), (y, j) in zip(rest, expected[3:]):
        assert k == j and torch.equal(x, y)
    assert resumed.epoch == 3


def test_flips_mirror_cached_images(shards_dir):
    plain = open_loader(shards_dir, "host", split="val", policy="partial", shuffle=False)
    flipped = open_loader(shards_dir, "host", split="val", policy="partial", shuffle=False, flip=True)
    for epoch in (0, 1):  # streamed, then cached
        ref, _, _ = read_epoch(plain, epoch)
        got, _, _ = read_epoch(flipped, epoch)
        mirrored = sum(not np.array_equal(got[k], ref[k]) for k in ref)
        assert all(np.array_equal(got[k], ref[k]) or np.array_equal(got[k], ref[k][:, ::-1]) for k in ref)
        assert 0 < mirrored < len(ref)


def test_uint8_channels_last_output(shards_dir):
    ld = make_loader(shards_dir, "val", 5, device="cpu", backend="webdataset", num_threads=1, cache="host",
                     dtype=torch.uint8, channels_last=True)
    ref = make_loader(shards_dir, "val", 5, device="cpu", backend="webdataset", num_threads=1)
    for _ in range(2):
        for x, y in zip(ld, ref):
            assert x.dtype == torch.uint8 and x.is_contiguous(memory_format=torch.channels_last)
            assert torch.equal(x.float() / 255, y)


# ----------------------------------------------------------------------------- memory


@pytest.fixture
def free_memory(monkeypatch):
    """Pretend the host has ``free["host"]`` bytes available."""
    free = {"host": 10**12}
    monkeypatch.setattr(cache_mod, "free_bytes", lambda where, device: free[where])
    monkeypatch.setattr(cache_mod, "_promised", {})
    monkeypatch.setattr(cache_mod, "_announced", set())
    return free


def test_auto_caches_when_it_fits_and_says_so(shards_dir, free_memory, capsys):
    ld = open_loader(shards_dir, "auto", split="val")
    assert ld.cache == "host"
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "decoded images are kept in host memory after their first epoch (split 'val'" in err[0]
    assert open_loader(shards_dir, "auto", split="test").cache == "host"
    assert capsys.readouterr().err == ""  # said once per process
    n = ld.num_samples
    free_memory["host"] = 2 * n * 64 * 64 * 3 - 1  # just under twice the need: the share is half
    ld = open_loader(shards_dir, "auto", split="val")
    assert ld.cache == "none" and len(ld) == -(-n // 7)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "split 'val' is not cached" in err[0] and "decoded every epoch" in err[0]
    with pytest.raises(ConfigError, match="cache 'host': split 'val' does not fit"):
        open_loader(shards_dir, "host", split="val")
    with pytest.raises(ConfigError, match="needs a CUDA device"):
        open_loader(shards_dir, "device", split="val")


def test_loaders_opened_together_do_not_count_the_same_memory_twice(shards_dir, free_memory):
    need = read_split(shards_dir, "train").count * 64 * 64 * 3
    free_memory["host"] = int(2 * need * 1.5)  # room for one train cache, not two
    first = open_loader(shards_dir, "auto")
    second = open_loader(shards_dir, "auto")
    assert (first.cache, second.cache) == ("host", "none")
    first.close()  # its promise is released
    assert open_loader(shards_dir, "auto").cache == "host"


def test_out_of_memory_while_filling_drops_the_cache_and_streams_on(shards_dir, monkeypatch, capsys):
    real_empty = torch.empty

    def empty(*shape, **kw):
        if kw.get("dtype") == torch.uint8 and len(shape[0] if len(shape) == 1 else shape) == 4:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real_empty(*shape, **kw)

    monkeypatch.setattr(cache_mod.torch, "empty", empty)
    ld = open_loader(shards_dir, "host", policy="drop")
    ref = open_loader(shards_dir, "none", policy="drop")
    assert len(list(ld)) == len(ld) and ld.cache == "none" and not ld.filled
    assert "dropped (out of memory allocating" in capsys.readouterr().err
    _, _, keys = read_epoch(ld, 1)  # streams: the backend's own epoch 1
    _, _, ref_keys = read_epoch(ref, 1)
    assert sorted(keys) == sorted(ref_keys)


def test_corrupt_jpeg_while_filling_names_shard_and_key(shards_copy):
    shard = read_split(shards_copy, "train").shards[-1]
    victim = read_index(shard)[3]
    with open(shard.tar, "r+b") as fh:
        fh.seek(victim.offset)
        fh.write(b"\0" * 64)
    ld = open_loader(shards_copy, "host")
    with pytest.raises(DataError, match=f"corrupt JPEG {victim.key}") as err:
        for _ in ld:
            pass
    assert shard.tar.name in str(err.value) and not ld.filled
