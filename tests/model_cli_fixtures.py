"""What the ``python -m model`` tests share: a short training run, the in-process CLI, readers, a probe.

``run_dir`` trains for :data:`CLI_EPOCHS` (the commands need a real run whose samples differ, not a good
model); ``trained_run_dir`` for :data:`PROBE_EPOCHS`, for the attribute probe. Each is trained once per
session however many test modules ask for it (the fixtures are imported into each, and pytest would
otherwise run a session fixture once per module that defines it).
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from model.use.cli import main as model_main
from pipeline.shards import read_members, read_split

ROOT = Path(__file__).resolve().parent.parent
#: The narrow network of test_train.py; one thread, so a busy machine does not thrash; fp32 everywhere (auto
#: would pick bf16 on a CPU with AMX), so every machine trains the same model up to rounding.
TRAIN_ARGS = ["--channels", "16,32,64,128", "--latent_dim", "32", "--loss_impl", "torch", "--compile", "false",
              "--amp", "off", "--channels_last", "false",
              "--batch_size", "16", "--eval_batch_size", "64", "--log_interval", "12", "--kl_warmup_steps", "50",
              "--warmup_steps", "10", "--lr", "0.002", "--n_samples", "16", "--num_threads", "1"]
#: Epochs of ``run_dir``: enough for prior samples that differ (their pixel spread at T = 1, which
#: test_sample_is_deterministic_for_a_seed needs above 10, was 9.9 after 4 epochs, 16.9 after 6, 18.4 after 10).
CLI_EPOCHS = 8
#: Epochs of ``trained_run_dir``: long enough (a minute on two cores) that the codes carry the attributes the
#: synthetic faces show.
PROBE_EPOCHS = 30
ENV = {**os.environ, "COLUMNS": "200", "OMP_NUM_THREADS": "1"}
_RUNS: dict[tuple[Path, int], Path] = {}  # (shards, epochs) → the run trained on them, this session


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny tensors (probes, single faces) gain nothing from threads, and on a busy machine the
    spinning of a second thread makes them 40× slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _run(shards_dir: Path, tmp_path_factory, epochs: int) -> Path:
    if (shards_dir, epochs) not in _RUNS:
        out = tmp_path_factory.mktemp("model_cli") / "run"
        proc = subprocess.run([sys.executable, str(ROOT / "train.py"), "--data", str(shards_dir), "--out", str(out),
                               *TRAIN_ARGS, "--epochs", str(epochs)], cwd=ROOT, env=ENV, capture_output=True,
                              text=True, timeout=600)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
        _RUNS[shards_dir, epochs] = out
    return _RUNS[shards_dir, epochs]


@pytest.fixture(scope="session")
def run_dir(shards_dir, tmp_path_factory) -> Path:
    """A finished run of :data:`CLI_EPOCHS` on the shared shards: checkpoints, config, pictures."""
    return _run(shards_dir, tmp_path_factory, CLI_EPOCHS)


@pytest.fixture(scope="session")
def trained_run_dir(shards_dir, tmp_path_factory) -> Path:
    """The same run trained for :data:`PROBE_EPOCHS`, whose codes carry the faces' attributes."""
    return _run(shards_dir, tmp_path_factory, PROBE_EPOCHS)


def cli(capsys, *argv) -> tuple[int, str, str]:
    """``python -m model ARGV`` in-process: (exit code, stdout, the error line). A command's stderr
    is one line or nothing, whatever it says."""
    rc = model_main([str(a) for a in argv])
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) <= 1, f"{argv}: stderr of {len(lines)} lines:\n{captured.err}"
    return rc, captured.out, lines[0].strip() if lines else ""


def ok(capsys, *argv) -> str:
    rc, out, err = cli(capsys, *argv)
    assert rc == 0, f"{argv}: {err}\n{out}"
    return out


def png(path: Path) -> np.ndarray:
    """A PNG written by a command, as the uint8 H×W×3 array it holds."""
    from PIL import Image

    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"))


def first_test_faces(shards_dir: Path, n: int) -> dict[str, bytes]:
    """The first ``n`` test samples' JPEG bytes, by key."""
    members = read_members(read_split(shards_dir, "test"), "jpg")
    return dict(list(members.items())[:n])


def probe(x: torch.Tensor, y: torch.Tensor, l2: float = 1e-2):
    """A class-balanced logistic regression on standardised features; returns the logit function."""
    mean, std = x.mean(0), x.std(0) + 1e-6
    w = torch.zeros(x.shape[1], requires_grad=True)
    b = torch.zeros((), requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=100, line_search_fn="strong_wolfe")
    pos_weight = (1 - y).sum() / y.sum()

    def closure():
        opt.zero_grad()
        logits = (x - mean) / std @ w + b
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, y, pos_weight=pos_weight)
        (loss + l2 * w.pow(2).sum()).backward()
        return loss

    opt.step(closure)
    return lambda q: ((q - mean) / std @ w + b).detach()


def balanced_accuracy(logits: torch.Tensor, y: torch.Tensor) -> float:
    pos = y.bool()
    return 0.5 * (float((logits[pos] > 0).float().mean()) + float((logits[~pos] <= 0).float().mean()))
