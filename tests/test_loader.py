"""The loader contract on generated shards: output format, equivalence with a PIL reference, and
exact epoch accounting (ranks, last-batch policies, reshuffling, DataLoader workers).

Both backends run everywhere (DALI decodes on the CPU here); the DALI-GPU variants run only
where CUDA is present. Options, backend choice and bad input: tests/test_loader_options.py.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline import make_loader
from pipeline.epoch import EpochPlan
from pipeline.transforms import crop_box, decode_crop_resize, reference_image
from tests.loader_utils import BACKENDS, epoch, gpu, jpeg_bytes, loader, split_keys


# ----------------------------------------------------------------------------- output contract


#: The epoch-accounting tests below take both backends in the full suite; the fast tier keeps DALI-CPU's (the
#: epoch plan is shared, and the fallback's worker processes take seconds to start).
ACCOUNTING_BACKENDS = ["dali-cpu", pytest.param("webdataset", marks=pytest.mark.slow)]


@pytest.mark.parametrize("backend", BACKENDS)
def test_eval_loader_yields_every_sample_once_in_order(shards_dir, backend):
    keys = split_keys(shards_dir, "val")
    ld = loader(shards_dir, "val", 7, backend)
    assert ld.backend == backend
    assert len(ld) == -(-len(keys) // 7) and ld.num_samples == len(keys)
    for _ in range(2):  # the second epoch reuses the DALI pipeline: same samples, same order
        got, sizes = [], []
        for images, k in ld:
            assert images.dtype == torch.float32 and images.device.type == "cpu"
            assert images.shape[1:] == (3, 64, 64) and images.is_contiguous()
            assert 0.0 <= float(images.min()) and float(images.max()) <= 1.0
            got += k
            sizes.append(images.shape[0])
        assert got == keys
        assert sizes == [7] * (len(keys) // 7) + ([len(keys) % 7] if len(keys) % 7 else [])
    ld.close()


def test_images_only_dtype_layout_and_size(shards_dir):
    ld = make_loader(shards_dir, "test", 8, device="cpu", backend="dali-cpu", num_threads=1)
    ref = next(iter(ld))
    assert isinstance(ref, torch.Tensor)  # not a tuple without with_keys
    for backend in BACKENDS:
        half = make_loader(shards_dir, "test", 8, device="cpu", backend=backend, num_threads=1,
                           dtype=torch.bfloat16, channels_last=True)
        x = next(iter(half))
        assert x.dtype == torch.bfloat16 and x.shape == ref.shape
        assert x.is_contiguous(memory_format=torch.channels_last)
        tol = 2 / 255 if backend == "webdataset" else 1 / 128  # bf16 rounding (+ fallback resize differences)
        assert (x.float() - ref).abs().mean() <= tol
    small = make_loader(shards_dir, "test", 4, device="cpu", backend="dali-cpu", num_threads=1, size=32, crop=None,
                        dtype=torch.float16)
    y = next(iter(small))
    assert y.shape == (4, 3, 32, 32) and y.dtype == torch.float16


# ----------------------------------------------------------------------------- equivalence


def _check_against_reference(ld, jpegs, crop=148, size=64, tol=2 / 255):
    worst, seen = 0.0, 0
    for images, keys in ld:
        for img, key in zip(images, keys):
            ref = torch.from_numpy(reference_image(jpegs[key], crop, size).copy()).permute(2, 0, 1).float() / 255
            worst = max(worst, float((img.float().cpu() - ref).abs().mean()))
            seen += 1
    assert seen == len(jpegs)
    assert worst <= tol, f"mean abs difference {worst * 255:.2f}/255 exceeds {tol * 255:.0f}/255"
    return worst


@pytest.mark.parametrize("backend", BACKENDS)
def test_matches_pil_reference(shards_dir, backend):
    jpegs = jpeg_bytes(shards_dir, "val")
    worst = _check_against_reference(loader(shards_dir, "val", 16, backend), jpegs)
    if backend == "dali-cpu":
        assert worst <= 0.5 / 255  # same filter, same window: only rounding differs


# ----------------------------------------------------------------------------- real photographs


@pytest.fixture(scope="module")
def photo_shards(tmp_path_factory):
    """Shards of a CelebA-layout tree (val; one more in train) of 48 crop windows, 178×218, of a real photograph
    (matplotlib's grace_hopper.jpg, 512×600) re-encoded at JPEG quality 75, 90 and 95: photographs hold
    fine detail (hair, fabric, film grain) that the smooth synthetic faces lack."""
    from matplotlib import cbook
    from PIL import Image

    from pipeline.preshard import preshard

    root = tmp_path_factory.mktemp("photo")
    (root / "img_align_celeba").mkdir()
    with Image.open(cbook.get_sample_data("grace_hopper.jpg")) as img:
        photo = img.convert("RGB")
    rng = np.random.default_rng(0)
    for i in range(1, 50):  # 48 in val, one in train (preshard refuses shards that train nothing)
        x, y = int(rng.integers(0, photo.width - 177)), int(rng.integers(0, photo.height - 217))
        photo.crop((x, y, x + 178, y + 218)).save(root / "img_align_celeba" / f"{i:06d}.jpg",
                                                  quality=(75, 90, 95)[i % 3])
    (root / "list_eval_partition.txt").write_text("".join(f"{i:06d}.jpg {0 if i == 49 else 1}\n" for i in range(1, 50)))
    preshard(root, root / "shards", workers=1, progress=False)
    return root / "shards"


@pytest.mark.parametrize("backend,size,tol", [("webdataset", 64, 0.5 / 255), ("webdataset", 32, 2 / 255),
                                              ("dali-cpu", 64, 0.5 / 255)])
def test_matches_pil_reference_on_real_photographs(photo_shards, backend, size, tol):
    """The loader's promise on photographs: the fallback within 2/255 (identical at 148 → 64, where it
    does not draft), DALI-CPU within 0.5/255."""
    jpegs = jpeg_bytes(photo_shards, "val")
    _check_against_reference(loader(photo_shards, "val", 16, backend, size=size), jpegs, size=size, tol=tol)


def test_draft_only_where_it_stays_within_the_promise(photo_shards):
    jpegs = list(jpeg_bytes(photo_shards, "val").values())
    drafted = 0
    for data in jpegs:
        assert np.array_equal(decode_crop_resize(data, draft=True), reference_image(data))  # 148 → 64: no draft
        small = decode_crop_resize(data, 148, 32, draft=True).astype(np.float32)
        full = reference_image(data, 148, 32).astype(np.float32)
        assert np.abs(small - full).mean() <= 2.0
        drafted += not np.array_equal(small, full)
    assert drafted == len(jpegs)  # 148 → 32 does decode at half size


def test_fallback_without_draft_matches_reference_closely(shards_dir):
    jpegs = jpeg_bytes(shards_dir, "test")
    worst = _check_against_reference(loader(shards_dir, "test", 16, "webdataset", draft=False), jpegs)
    assert worst <= 0.5 / 255


@gpu
@pytest.mark.parametrize("hw_decoder_load", [None, 0.0, 1.0])
def test_dali_gpu_matches_pil_reference(shards_dir, hw_decoder_load):
    jpegs = jpeg_bytes(shards_dir, "val")
    ld = make_loader(shards_dir, "val", 16, device="cuda", backend="dali-gpu", with_keys=True,
                     hw_decoder_load=hw_decoder_load)
    assert ld.backend == "dali-gpu"
    assert next(iter(ld))[0].device.type == "cuda"
    _check_against_reference(ld, jpegs)


def test_reference_geometry():
    assert crop_box(178, 218, 148) == (15, 35, 163, 183)  # CelebA practice
    assert crop_box(100, 80, 148) == (10, 0, 90, 80)  # clamped to the shorter side
    assert crop_box(178, 218, None) == (0, 0, 178, 218)


def test_flip_mirrors_some_images_and_only_mirrors(shards_dir):
    plain = dict(zip(*epoch_images(loader(shards_dir, "val", 8, "dali-cpu"))))
    for backend in BACKENDS:
        flipped = dict(zip(*epoch_images(loader(shards_dir, "val", 8, backend, flip=True, seed=3))))
        n_flipped = 0
        for key, img in flipped.items():
            same = float((img - plain[key]).abs().mean())
            mirrored = float((img - plain[key].flip(-1)).abs().mean())
            assert min(same, mirrored) <= 2 / 255
            n_flipped += mirrored < same
        assert 0 < n_flipped < len(flipped)


def epoch_images(ld):
    keys, images = [], []
    for x, k in ld:
        keys += k
        images += list(x)
    return keys, images


# ----------------------------------------------------------------------------- epoch accounting


@pytest.mark.parametrize("backend", ACCOUNTING_BACKENDS)
def test_train_epochs_reshuffle_and_set_epoch_replays(shards_dir, backend):
    keys = set(split_keys(shards_dir, "train"))
    bs = 16
    ld = loader(shards_dir, "train", bs, backend, seed=5)
    assert len(ld) == len(keys) // bs and ld.num_samples == len(ld) * bs
    e0, sizes = epoch(ld)
    e1, _ = epoch(ld)
    assert sizes == [bs] * len(ld)  # drop_last: only full batches
    for e in (e0, e1):
        assert len(e) == len(set(e)) == len(ld) * bs and set(e) <= keys
    assert e0 != e1  # reshuffled
    ld.set_epoch(0)
    assert epoch(ld)[0] == e0  # an epoch's order depends only on (seed, epoch)
    assert ld.epoch == 1


@pytest.mark.parametrize("backend", ACCOUNTING_BACKENDS)
@pytest.mark.parametrize("world", [2, 3])
def test_ranks_partition_the_split(shards_dir, backend, world):
    keys = split_keys(shards_dir, "val")
    n, bs = len(keys), 3
    seen = []
    for rank in range(world):
        ld = loader(shards_dir, "val", bs, backend, rank=rank, world_size=world)
        e, sizes = epoch(ld)
        assert len(sizes) == len(ld) and len(e) == ld.num_samples
        assert all(s == bs for s in sizes[:-1])
        seen += e
        if backend == "dali-cpu":  # pipeline reused for the next epoch: the same part again
            assert epoch(ld)[0] == e
    assert sorted(seen) == sorted(keys) and len(seen) == n


@pytest.mark.parametrize("backend", ACCOUNTING_BACKENDS)
def test_drop_and_pad_give_equal_full_batches_on_every_rank(shards_dir, backend):
    keys = split_keys(shards_dir, "test")
    world, bs = 3, 4
    plans = [EpochPlan(bs, "drop", r, world, len(keys)) for r in range(world)]
    for policy in ("drop", "pad"):
        counts, seen = set(), []
        for rank in range(world):
            ld = loader(shards_dir, "test", bs, backend, rank=rank, world_size=world, shuffle=True,
                        drop_last=policy == "drop", pad_last=policy == "pad")
            for _ in range(2):  # twice: the second epoch must account exactly like the first
                e, sizes = epoch(ld)
                assert sizes == [bs] * len(ld)
                counts.add(len(ld))
            distinct = set(e)
            if policy == "pad":
                assert len(distinct) == ld.num_samples == plans[rank].part
            else:
                assert len(e) == len(distinct) == ld.num_samples
            seen += sorted(distinct)
        assert len(counts) == 1  # same batch count on every rank: DDP never waits
        assert len(seen) == len(set(seen))
        if policy == "pad":
            assert sorted(seen) == sorted(keys)


def test_epoch_plan_arithmetic():
    # 13 samples over 3 ranks → parts 4, 4, 5 (DALI's split)
    plans = [EpochPlan(4, p, r, 3, 13) for p in ("drop", "partial", "pad") for r in range(3)]
    assert [p.part for p in plans[:3]] == [4, 4, 5]
    assert [p.num_batches for p in plans] == [1, 1, 1, 1, 1, 2, 2, 2, 2]
    assert [p.num_samples for p in plans] == [4, 4, 4, 4, 4, 5, 4, 4, 5]


def test_abandoned_epoch_restarts_cleanly(shards_dir):
    keys = split_keys(shards_dir, "val")
    ld = loader(shards_dir, "val", 4, "dali-cpu")
    it = iter(ld)
    next(it)
    next(it)
    assert epoch(ld)[0] == keys  # a fresh pass starts at the beginning, no sample lost
    assert ld.epoch == 1


@pytest.mark.filterwarnings("ignore:This DataLoader will create")
@pytest.mark.parametrize("workers", [0, 3])
def test_fallback_workers_neither_duplicate_nor_lose(shards_dir, workers):
    keys = split_keys(shards_dir, "val")
    ld = loader(shards_dir, "val", 5, "webdataset", num_threads=workers)
    got, sizes = epoch(ld)
    assert got == keys if workers == 0 else sorted(got) == sorted(keys)
    assert sizes[:-1] == [5] * (len(sizes) - 1) and len(sizes) == len(ld)
    train = loader(shards_dir, "train", 8, "webdataset", num_threads=workers, rank=1, world_size=2)
    e, sizes = epoch(train)
    assert len(e) == len(set(e)) == train.num_samples and sizes == [8] * len(train)
