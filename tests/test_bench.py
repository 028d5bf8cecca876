"""The bench harness: its arithmetic (trace → GPU busy share, targets) and a --quick run of the suite.

Speed is not tested here (benchmarks are not tests); that the suite runs end to end on CPU and
writes what it promises is.
"""
from __future__ import annotations

import json

import pytest

from bench.__main__ import main as bench_main, summarize
from bench.profile import gpu_busy_from_trace, merged_length


def test_merged_length_counts_overlaps_once():
    assert merged_length([]) == 0
    assert merged_length([(0, 10), (5, 15), (20, 25)]) == 20
    assert merged_length([(20, 25), (0, 10), (2, 3)]) == 15


def test_gpu_busy_from_trace_uses_kernels_inside_profiled_steps():
    trace = {"traceEvents": [
        {"ph": "X", "name": "ProfilerStep#3", "cat": "user_annotation", "ts": 100, "dur": 100},
        {"ph": "X", "name": "k1", "cat": "kernel", "ts": 90, "dur": 30},       # 20 µs inside
        {"ph": "X", "name": "k2", "cat": "kernel", "ts": 110, "dur": 20},      # overlaps k1: +10
        {"ph": "X", "name": "cp", "cat": "gpu_memcpy", "ts": 150, "dur": 10},  # +10
        {"ph": "X", "name": "cpu", "cat": "cpu_op", "ts": 100, "dur": 100},    # not GPU work
        {"ph": "X", "name": "late", "cat": "kernel", "ts": 300, "dur": 50},    # outside the steps
    ]}
    gpu = gpu_busy_from_trace(trace)
    assert gpu["busy_share"] == pytest.approx(0.4)
    assert gpu["idle_share"] == pytest.approx(0.6)
    assert gpu_busy_from_trace({"traceEvents": [trace["traceEvents"][0]]}) is None


def test_summary_judges_targets_only_on_gpu():
    docs = {"input": {"results": {"input_efficiency": 0.97, "gpu_util_mean_pct": 80.0,
                                  "celeba_epoch_seconds_at_this_rate": 8.0}},
            "train_step": {"results": {"speedups": {"compile_bf16_vs_eager_fp32@B256": 1.5}}}}
    met = {r["measure"]: r["met"] for r in summarize(docs, on_gpu=True)}
    assert met["input efficiency (loader-fed ÷ resident)"] is True
    assert met["GPU utilization, mean %"] is False
    assert met["CelebA train epoch (162,770 images), s"] is True
    assert met["compile bf16 vs eager fp32@B256"] is False
    assert all(r["met"] is None for r in summarize(docs, on_gpu=False))


@pytest.mark.slow
def test_quick_suite_runs_every_part(shards_dir, tmp_path):
    out = tmp_path / "bench"
    rc = bench_main(["--quick", "--shards", str(shards_dir), "--out", str(out), "--json", str(out / "suite.json"),
                     "--batch-size", "16", "--device", "cpu"])
    assert rc == 0
    doc = json.loads((out / "suite.json").read_text())
    assert doc["env"]["torch"] and doc["settings"]["quick"] is True
    parts = doc["results"]["parts"]
    assert set(parts) == {"loader", "loss", "train_step", "input", "profile"}
    assert all(r["finite"] and r["images_per_s"] > 0 for r in parts["train_step"]["rows"])
    assert parts["input"]["loader_fed_images_per_s"] > 0 and parts["input"]["input_efficiency"] > 0
    assert parts["profile"]["top"], "the profiler recorded no operators"
    trace = json.loads((out / "trace.json").read_text())
    assert any(e.get("name", "").startswith("ProfilerStep#") for e in trace["traceEvents"])


def test_bad_shards_dir_is_one_clear_error(tmp_path, capsys):
    assert bench_main(["--quick", "--shards", str(tmp_path), "--only", "input"]) == 2
    assert "manifest.json" in capsys.readouterr().err


def test_flops_per_image_counts_the_configured_model_without_moving_the_rng():
    """train.py counts FLOPs for its MFU line mid-setup: that must not shift the run's RNG stream."""
    import torch

    from bench.flops import vae_flops_per_image
    from model.vae import VAEConfig

    torch.manual_seed(0)
    expected = torch.rand(4)
    torch.manual_seed(0)
    base = vae_flops_per_image(VAEConfig())
    assert torch.equal(torch.rand(4), expected)
    # Forward convs + linears of the seed model are ~109 MFLOP; backward doubles that, except for the
    # first conv's input gradient, which is not needed: ~3× forward.
    assert 300e6 < base < 330e6
    assert vae_flops_per_image(VAEConfig(res_blocks=1)) > base
