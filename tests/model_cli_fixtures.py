"""What the ``python -m model`` tests share: checkpoints, the in-process CLI, readers, a probe.

``run_dir`` is a run folder whose checkpoints are written in-process after one pass over the train split
(the commands need a checkpoint of this trainer, not a good model: a second, not a subprocess training);
``trained_run_dir`` is a real ``train.py`` run of :data:`PROBE_EPOCHS`, for what needs a trained model
(the attribute probe, the prior's spread). Each is made once per session however many test modules ask
for it (the fixtures are imported into each, and pytest would otherwise run a session fixture once per
module that defines it).
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
#: Epochs of ``trained_run_dir``: long enough (a minute on two cores) that the codes carry the attributes the
#: synthetic faces show.
PROBE_EPOCHS = 30
ENV = {**os.environ, "COLUMNS": "200", "OMP_NUM_THREADS": "1"}
_RUNS: dict[tuple[Path, str], Path] = {}  # (shards, which) → the run folder made for them, this session


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny tensors (probes, single faces) gain nothing from threads, and on a busy machine the
    spinning of a second thread makes them 40× slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _checkpointed_run(shards_dir: Path, out: Path) -> None:
    """train.py's network, config and checkpoint format after one pass (AdamW, the SSE + KL loss) over the
    train split: ``out/checkpoints/{best,last}.pt`` as a run writes them."""
    from kernels import vae_loss
    from model.training.checkpoint import make_checkpoint, save_atomic
    from model.training.config import load_config
    from model.training.runtime import Runtime, runtime_choices
    from model.vae import ConvVAE, VAEConfig
    from pipeline.loader import make_loader

    cfg = load_config([*TRAIN_ARGS, "--data", str(shards_dir), "--epochs", "1", "--out_dir", str(out.parent),
                       "--name", out.name])
    torch.manual_seed(cfg["seed"])
    model = ConvVAE(VAEConfig.from_dict(cfg), loss_impl="torch")
    opt = torch.optim.AdamW(model.parameters(), lr=cfg["lr"])
    loader = make_loader(shards_dir, "train", cfg["batch_size"], device="cpu", backend="webdataset", num_threads=0)
    threads, steps = torch.get_num_threads(), 0
    torch.set_num_threads(1)  # as train.py's runs here (OMP_NUM_THREADS=1): a busy machine would thrash two
    try:
        for x in loader:
            out_ = model(x)
            opt.zero_grad()
            vae_loss(out_.logits, x, out_.kl, torch.ones(()), impl="torch").loss.backward()
            opt.step()
            steps += 1
    finally:
        torch.set_num_threads(threads)
        loader.close()
    rt = Runtime(torch.device("cpu"), 0, 0, 1, amp="off", channels_last=False, compile=False, sync_batchnorm=False)
    ckpt = make_checkpoint(model=model, optimizer=opt, scaler=None, step=steps, epoch=1, batch_in_epoch=0,
                           best_val_elbo=None, config=cfg, runtime=runtime_choices(rt))
    for name in ("best.pt", "last.pt"):
        save_atomic(ckpt, out / "checkpoints" / name)


def _run(shards_dir: Path, tmp_path_factory, which: str) -> Path:
    if (shards_dir, which) not in _RUNS:
        out = tmp_path_factory.mktemp("model_cli") / "run"
        if which == "trained":
            proc = subprocess.run([sys.executable, str(ROOT / "train.py"), "--data", str(shards_dir), "--out",
                                   str(out), *TRAIN_ARGS, "--epochs", str(PROBE_EPOCHS)], cwd=ROOT, env=ENV,
                                  capture_output=True, text=True, timeout=600)
            assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
        else:
            _checkpointed_run(shards_dir, out)
        _RUNS[shards_dir, which] = out
    return _RUNS[shards_dir, which]


@pytest.fixture(scope="session")
def run_dir(shards_dir, tmp_path_factory) -> Path:
    """A run folder with best.pt and last.pt of the narrow network after one pass over the shared shards."""
    return _run(shards_dir, tmp_path_factory, "checkpointed")


@pytest.fixture(scope="session")
def trained_run_dir(shards_dir, tmp_path_factory) -> Path:
    """A real train.py run of :data:`PROBE_EPOCHS` on the shared shards, whose codes carry the faces' attributes."""
    return _run(shards_dir, tmp_path_factory, "trained")


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
