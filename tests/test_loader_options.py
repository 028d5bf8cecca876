"""make_loader's options and its errors: backend choice, settings a backend ignores, the workers'
stop signals, and one clear line per bad option or damaged shard (the contract itself:
tests/test_loader.py).
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch.utils.data import IterableDataset

import pipeline.webdataset_loader as webdataset_loader
from pipeline import make_loader
from pipeline.errors import ConfigError, DataError
from pipeline.shards import read_index, read_split
from tests.loader_utils import BACKENDS, CUDA, loader, one_line


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("backend", BACKENDS)
def test_corrupt_jpeg_names_shard_and_key(shards_copy, backend):
    split = read_split(shards_copy, "train")
    shard = split.shards[-1]
    victim = read_index(shard)[3]
    with open(shard.tar, "r+b") as fh:  # same size, so the manifest check passes
        fh.seek(victim.offset)
        fh.write(b"\0" * 64)
    with pytest.raises(DataError) as err:
        for _ in loader(shards_copy, "train", 8, backend, shuffle=backend == "dali-cpu"):
            pass
    msg = one_line(err)
    assert f"corrupt JPEG {victim.key}" in msg and shard.tar.name in msg and "re-run preshard" in msg


def test_truncated_tar_is_caught_up_front(shards_copy):
    shard = read_split(shards_copy, "val").shards[0]
    os.truncate(shard.tar, shard.bytes // 2)
    with pytest.raises(DataError) as err:
        loader(shards_copy, "val", 4, "dali-cpu")
    assert shard.tar.name in one_line(err) and "truncated" in str(err.value)


@pytest.mark.parametrize("backend", BACKENDS)
def test_truncated_tar_with_matching_manifest_names_shard(shards_copy, backend):
    """A tar cut short after the manifest was written to match: DALI's 'Malformed index' path."""
    samples = read_index(read_split(shards_copy, "train").shards[0])
    victim = samples[len(samples) // 2]
    cut = victim.offset + victim.size // 2  # inside its JPEG: the samples before it are whole, members and all
    manifest_path = shards_copy / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    entry = manifest["splits"]["train"]["shards"][0]
    tar = shards_copy / entry["path"]
    os.truncate(tar, cut)
    entry["bytes"] = cut
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(DataError) as err:
        for _ in loader(shards_copy, "train", 8, backend, shuffle=False):
            pass
    msg = one_line(err)
    assert tar.name in msg and victim.key in msg and "re-run preshard" in msg


def test_missing_index_manifest_and_empty_split(shards_copy, tmp_path):
    idx = read_split(shards_copy, "val").shards[0].index
    idx.unlink()
    with pytest.raises(DataError, match="missing index file") as err:
        loader(shards_copy, "val", 4, "dali-cpu")
    assert idx.name in one_line(err)

    manifest_path = shards_copy / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    del manifest["splits"]["test"]
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(DataError, match="split 'test' is empty"):
        loader(shards_copy, "test", 4, "webdataset")

    manifest_path.unlink()
    with pytest.raises(DataError, match="no manifest.json"):
        loader(shards_copy, "train", 4, "dali-cpu")
    with pytest.raises(DataError, match="does not exist"):
        loader(tmp_path / "nowhere", "train", 4, "dali-cpu")


def test_index_count_mismatch(shards_copy):
    idx = read_split(shards_copy, "val").shards[0].index
    lines = idx.read_text().splitlines()
    idx.write_text("\n".join([f"v1.2 {int(lines[0].split()[1]) + 1}"] + lines[1:]) + "\n")
    with pytest.raises(DataError, match="lists .* samples, manifest.json says"):
        loader(shards_copy, "val", 4, "dali-cpu")


# ----------------------------------------------------------------------------- bad options


LARGER_THAN_TRAIN = object()  # batch_size one more than the train split holds: drop_last leaves no batch


def bad(message: str, split: str = "val", batch_size=4, **options):
    """A case: make_loader(shards, split, batch_size, device="cpu", **options) raises ConfigError(...message...)."""
    name = ",".join(f"{k}={v!r}" for k, v in options.items())
    if not options:
        name = f"{split},batch_size=" + ("n+1" if batch_size is LARGER_THAN_TRAIN else repr(batch_size))
    return pytest.param(dict(split=split, batch_size=batch_size, **options), message, id=name)


BAD_OPTIONS = [
    bad("batch_size must be a positive integer, got 0", "train", 0),
    bad("batch_size must be a positive integer, got True", "train", True),
    bad("samples of split 'train', and an epoch drops the last short batch, so it would have none: lower the "
        "batch size to at most", "train", LARGER_THAN_TRAIN),
    bad("unknown split 'validation': expected one of train, val, test", "validation"),
    bad("unknown loader backend 'magic': expected one of auto, dali, dali-gpu, dali-cpu, webdataset",
        backend="magic"),
    bad("drop_last=True and pad_last=True contradict each other: pick one", drop_last=True, pad_last=True),
    bad("need 0 <= rank < world_size, got rank=2, world_size=2", rank=2, world_size=2),
    bad("dtype must be a floating-point torch dtype or torch.uint8, got torch.int64", dtype=torch.int64),
    bad("crop must be a positive integer or None, got 0", crop=0),
    bad("size must be a positive integer, got 0", size=0),
    bad("prefetch must be >= 1, got 0", prefetch=0),
    bad("num_threads must be a non-negative integer, got -1", num_threads=-1),
    bad("num_threads must be >= 1 for the DALI backends", backend="dali-cpu", num_threads=0),
    bad("hw_decoder_load must be a number in [0, 1] or None, got 1.5", hw_decoder_load=1.5),
    bad("hw_decoder_load must be a number in [0, 1] or None, got -0.1", hw_decoder_load=-0.1),
    bad("hw_decoder_load must be a number in [0, 1] or None, got '0.5'", hw_decoder_load="0.5"),
    bad("hw_decoder_load must be a number in [0, 1] or None, got True", hw_decoder_load=True),
    bad("hybrid_huffman_threshold must be a non-negative integer (pixels) or None, got -1",
        hybrid_huffman_threshold=-1),
    bad("hybrid_huffman_threshold must be a non-negative integer (pixels) or None, got 1.5",
        hybrid_huffman_threshold=1.5),
    bad("unknown cache 'disk': expected one of none, auto, host, device", cache="disk"),
    bad("cache 'device' keeps the images in GPU memory and needs a CUDA device", cache="device"),
    bad("unsupported loader device 'mps': use 'cuda' or 'cpu'", device="mps"),
    bad("bad device 'tpu': ", device="tpu"),
    pytest.param(*bad("device 'cuda' requested but CUDA is not available here", device="cuda").values,
                 id="device='cuda'", marks=pytest.mark.skipif(CUDA, reason="CUDA is available here")),
    pytest.param(*bad("backend 'dali-gpu' decodes on the GPU and needs a CUDA device", backend="dali-gpu").values,
                 id="backend='dali-gpu'", marks=pytest.mark.skipif(CUDA, reason="CUDA is available here")),
]


@pytest.mark.parametrize("options, message", BAD_OPTIONS)
def test_bad_options_are_config_errors(shards_dir, options, message):
    kw = {"device": "cpu", **options}
    if kw["batch_size"] is LARGER_THAN_TRAIN:
        kw["batch_size"] = read_split(shards_dir, "train").count + 1
    with pytest.raises(ConfigError, match=re.escape(message)) as err:
        make_loader(shards_dir, kw.pop("split"), kw.pop("batch_size"), **kw)
    one_line(err)


# ----------------------------------------------------------------------------- backend choice, ignored settings


def test_auto_falls_back_to_webdataset_with_one_notice(shards_dir, monkeypatch, capsys):
    import pipeline.loader as loader_module

    monkeypatch.setattr(loader_module, "dali_import_error", lambda: "ModuleNotFoundError: No module named 'nvidia'")
    ld = make_loader(shards_dir, "val", 4, device="cpu", num_threads=0)
    assert ld.backend == "webdataset"
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "webdataset" in err[0]
    with pytest.raises(ConfigError, match="needs NVIDIA DALI"):
        make_loader(shards_dir, "val", 4, device="cpu", backend="dali")


def test_default_backend_is_dali(shards_dir):
    ld = make_loader(shards_dir, "val", 4, num_threads=1)
    assert ld.backend == ("dali-gpu" if CUDA else "dali-cpu")


def test_hw_decoder_load_is_a_gpu_decoder_setting_the_cpu_pipeline_ignores(shards_dir):
    def val(**kw):
        return torch.cat(list(make_loader(shards_dir, "val", 16, device="cpu", backend="dali-cpu", num_threads=1,
                                          **kw)))

    plain, tuned = val(), val(hw_decoder_load=0.9)
    assert torch.equal(plain, tuned)


# ----------------------------------------------------------------------------- the workers' stop signals


class _PidThenWait(IterableDataset):
    """Yields the worker's pid, then 0, 1, 2 once ``go`` exists."""

    def __init__(self, go: Path) -> None:
        self.go = go

    def __iter__(self):
        yield os.getpid()
        deadline = time.monotonic() + 30
        while not self.go.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        yield from range(3)


def _exit_status(pid: int, timeout: float = 10) -> int:
    """The exit status of child ``pid`` once it has ended (read from /proc: torch's SIGCHLD handler looks
    without reaping, so the ended worker stays a zombie until its DataLoader is gone)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            raise AssertionError(f"worker {pid} was reaped before its exit status could be read") from None
        if fields[0] == "Z":
            return int(fields[49])  # field 52, exit_code, as waitpid reports it
        time.sleep(0.01)
    raise AssertionError(f"worker {pid} still running {timeout} s after its parent's SIGTERM")


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
def test_workers_ignore_stop_signals_unless_their_parent_sends_them(shards_dir, tmp_path, monkeypatch):
    """A Ctrl-C reaches the terminal's whole process group and a scheduler's SIGTERM the whole job:
    the workers keep serving, since the main process reads batches until it has checkpointed (under
    torchrun until the ranks agree, every log_interval steps). Their parent's SIGTERM, as
    multiprocessing sends it at exit, still ends them, with status 0 (no crash reported)."""
    seen = {}
    real = webdataset_loader.DataLoader
    monkeypatch.setattr(webdataset_loader, "DataLoader", lambda *a, **kw: seen.update(kw) or real(*a, **kw))
    next(iter(loader(shards_dir, "val", 4, "webdataset", num_threads=1)))
    init = seen["worker_init_fn"]  # the loader's own worker set-up, on a dataset that waits for the signals
    assert init is not None

    go = tmp_path / "go"
    batches = iter(real(_PidThenWait(go), batch_size=None, num_workers=1, worker_init_fn=init))
    pid = next(batches)
    for sig in (signal.SIGINT, signal.SIGTERM):  # sent by another process, as by a terminal or a scheduler
        subprocess.run([sys.executable, "-c", f"import os; os.kill({pid}, {int(sig)})"], check=True)
    time.sleep(0.3)  # delivery is asynchronous: a worker that would leave on them has left by now
    go.touch()
    assert list(batches) == [0, 1, 2]

    batches = iter(real(_PidThenWait(tmp_path / "never"), batch_size=None, num_workers=1, worker_init_fn=init))
    try:
        pid = next(batches)
        os.kill(pid, signal.SIGTERM)
        assert _exit_status(pid) == 0
    finally:
        del batches  # shuts a worker down that would not leave, before the interpreter's exit waits for it
