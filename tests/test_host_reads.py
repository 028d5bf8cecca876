"""The training loop reads the device only at log points: an independent count of host reads per step.

Every way a tensor's value reaches Python (``item``, ``tolist``, ``__float__``, ``__int__``, ``__bool__``,
``__index__``, ``numpy``, ``nonzero``) is counted while train.py's loop runs steps 1 to 20 of an epoch, on
the default config at batch 16. On a GPU each such read drains the kernel queue; the loop must stay at
or under one read per five steps. torch.optim's foreach AdamW reads its step counters on the host on CPU
(the fused AdamW the GPU uses keeps them on the device): those reads are not the loop's and are left out.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

READS = ("item", "tolist", "__float__", "__int__", "__bool__", "__index__", "numpy", "nonzero")
STEPS = 20


@pytest.fixture(scope="module")
def epoch_of_30_steps(tmp_path_factory) -> Path:
    """Shards whose train split holds more than 20 batches of 16, so the 20 steps lie within one epoch."""
    from pipeline.preshard import preshard
    from pipeline.synthetic import write_synthetic_celeba

    root = tmp_path_factory.mktemp("reads")
    tree = write_synthetic_celeba(root / "celeba", n=640, seed=3)
    preshard(tree, root / "shards", progress=False)
    return root / "shards"


@pytest.mark.slow  # trains 20 steps of the default network
def test_the_loop_reads_the_device_at_most_once_per_five_steps(epoch_of_30_steps, tmp_path, monkeypatch):
    import json

    import train

    window = {"open": False, "steps": 0, "reads": []}

    def counting(name):
        real = getattr(torch.Tensor, name)

        def read(self, *args, **kwargs):
            caller = sys._getframe(1).f_code.co_filename
            if window["open"] and f"torch{'/'}optim" not in caller.replace("\\", "/"):
                window["reads"].append(f"{name} from {caller}:{sys._getframe(1).f_lineno}")
            return real(self, *args, **kwargs)

        return read

    for name in READS:
        monkeypatch.setattr(torch.Tensor, name, counting(name))

    class Counted(train.TrainStep):
        def __call__(self, x):
            window["steps"] += 1
            window["open"] = window["steps"] <= STEPS  # from step 1's start to step 21's
            return super().__call__(x)

    monkeypatch.setattr(train, "TrainStep", Counted)
    count = json.loads((epoch_of_30_steps / "manifest.json").read_text())["splits"]["train"]["count"]
    assert count // 16 > STEPS
    rc = train.main(["--data", str(epoch_of_30_steps), "--out", str(tmp_path / "run"), "--batch_size", "16",
                     "--epochs", "1", "--stop_at_step", str(STEPS + 1), "--compile", "false", "--num_threads", "1"])
    assert rc == 0 and window["steps"] == STEPS + 1
    per_step = len(window["reads"]) / STEPS
    assert per_step <= 0.2, f"{per_step:.2f} host reads per step:\n" + "\n".join(window["reads"])
