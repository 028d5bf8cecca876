"""The bench harness: its arithmetic (trace → GPU busy share, targets) and a --quick run of the suite.

Speed is not tested here (benchmarks are not tests); that the suite runs end to end on CPU and
writes what it promises is.
"""
from __future__ import annotations

import json

import pytest

from bench.__main__ import main as bench_main, summarize
from bench.profile import gpu_busy_from_trace, merged_length


@pytest.fixture
def small_matmul_peak(monkeypatch):
    """train_step.run measures a matmul peak (MFU's denominator) per AMP dtype of its grid, on a 1024² matmul
    on CPU: without native bf16 that is ~20 s for the bf16 one alone, more than the timed rows. No test here
    checks the peak's value, so these runs measure it on a 64² matmul: the same code path, in well under a second."""
    import model.training.observe as peak

    real = peak.measure_matmul_peak
    monkeypatch.setattr(peak, "measure_matmul_peak", lambda device, dtype, n=None, **kw: real(device, dtype, n=64, **kw))


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
                                  "celeba_epoch_seconds": 8.0, "celeba_epoch_measured": True}},
            "train_step": {"results": {"speedups": {"compile_bf16_vs_eager_fp32@B256": 1.5}}}}
    met = {r["measure"]: r["met"] for r in summarize(docs, on_gpu=True)}
    assert met["input efficiency (loader-fed ÷ resident)"] is True
    assert met["GPU utilization, mean %"] is False
    assert met["CelebA train epoch (162,770 images), s (measured)"] is True
    assert met["compile bf16 vs eager fp32@B256"] is False
    assert all(r["met"] is None for r in summarize(docs, on_gpu=False))
    # with the cache: the first (decoding) epoch and the cached ones are judged apart, the epoch time on the latter
    docs["input"]["results"].update(first_epoch_input_efficiency=0.96, epochs=[{"reads": "decode + fill"},
                                                                                {"reads": "cache"}])
    met = {r["measure"]: r["met"] for r in summarize(docs, on_gpu=True)}
    assert met["input efficiency, first epoch (decode + fill)"] is True
    assert met["input efficiency, cached epochs"] is False  # 0.97 < 0.98
    assert met["CelebA train epoch, cached (162,770 images), s (measured)"] is False  # 8 s ≥ 3 s


@pytest.mark.slow
def test_quick_suite_runs_every_part(shards_dir, tmp_path, small_matmul_peak):
    out = tmp_path / "bench"
    # Small batches keep the CPU steps short (bf16 autocast convs are slow without native bf16); the
    # train_step part still runs its whole --quick CPU grid (eager fp32 and bf16).
    rc = bench_main(["--quick", "--shards", str(shards_dir), "--out", str(out), "--json", str(out / "suite.json"),
                     "--batch-size", "8", "--train-step-batch-sizes", "8", "--device", "cpu"])
    assert rc == 0
    doc = json.loads((out / "suite.json").read_text())
    assert doc["env"]["torch"] and doc["settings"]["quick"] is True
    parts = doc["results"]["parts"]
    assert set(parts) == {"loader", "loss", "train_step", "input", "profile"}
    rows = parts["train_step"]["rows"]
    assert sorted((r["amp"], r["batch_size"]) for r in rows) == [("bf16", 8), ("off", 8)]
    assert all(r["finite"] and r["images_per_s"] > 0 and r["mfu"] > 0 for r in rows)
    assert parts["input"]["loader_fed_images_per_s"] > 0 and parts["input"]["input_efficiency"] > 0
    assert parts["profile"]["top"], "the profiler recorded no operators"
    trace = json.loads((out / "trace.json").read_text())
    assert any(e.get("name", "").startswith("ProfilerStep#") for e in trace["traceEvents"])


def test_train_step_grid_puts_the_headline_first_and_cuda_graphs_only_on_cuda():
    import torch

    from bench.train_step import variants

    grid, skipped = variants(torch.device("cuda"), quick=False, batch_sizes=None)
    labels = [v.label for v in grid]
    assert not skipped and len(labels) == len(set(labels)) == 2 * 2 * 2 * 3 + 6
    # the two rows of the headline ratio come before any other batch size
    assert labels.index("eager/fp32/torch-loss/B256") < labels.index("eager/fp32/torch-loss/B64")
    assert labels.index("default/bf16/torch-loss/B256") < labels.index("eager/fp32/torch-loss/B64")
    graphs = [v for v in grid if v.compile in ("reduce-overhead", "max-autotune")]
    assert graphs and all(v.amp == "bf16" for v in graphs)
    assert {v.batch_size for v in graphs if v.compile == "max-autotune"} == {256}
    assert grid.index(graphs[0]) < labels.index("eager/fp32/torch-loss/B1024")
    # the GPU preset's step and its baseline before everything else
    assert labels[:2] == ["reduce-overhead/bf16/triton-loss/B256", "eager/fp32/torch-loss/B256"]
    for quick in (True, False):
        cpu, cpu_skipped = variants(torch.device("cpu"), quick=quick, batch_sizes=None)
        assert all(v.compile in ("eager", "default") and v.loss == "torch" for v in cpu)
        assert {s["variant"].split("/")[2] for s in cpu_skipped} >= {"triton-loss"}


@pytest.mark.slow
def test_train_step_budget_skips_later_variants_but_always_times_one(small_matmul_peak):
    from bench.train_step import run

    doc = run(quick=True, device="cpu", batch_sizes=[8], print_results=False, budget_s=0)
    rows, skipped = doc["results"]["rows"], doc["results"]["skipped"]
    assert [r["variant"] for r in rows] == ["eager/fp32/torch-loss/B8"]
    assert "eager/bf16/torch-loss/B8" in [s["variant"] for s in skipped if "budget" in s["reason"]]


@pytest.mark.slow
def test_train_step_json_keeps_the_rows_of_a_run_cut_short(tmp_path, monkeypatch, small_matmul_peak):
    import bench.train_step as ts

    real, calls = ts.time_variant, []

    def dies_on_the_second(v, *a, **kw):
        calls.append(v.label)
        if len(calls) == 2:
            raise KeyboardInterrupt  # what a device call's time limit looks like from inside
        return real(v, *a, **kw)

    monkeypatch.setattr(ts, "time_variant", dies_on_the_second)
    out = tmp_path / "ts.json"
    with pytest.raises(KeyboardInterrupt):
        ts.run(quick=True, json_path=str(out), device="cpu", batch_sizes=[8], print_results=False)
    doc = json.loads(out.read_text())
    assert doc["results"]["complete"] is False
    assert [r["variant"] for r in doc["results"]["rows"]] == [calls[0]]


def test_loader_bench_caps_each_epoch_at_max_images(shards_dir):
    from bench.loader import run
    from pipeline.errors import ConfigError

    doc = run(shards_dir, quick=True, batch_size=16, device="cpu", only=["DALI-CPU 1", "webdataset+PIL 0"],
              max_images=40)
    measured = [r for r in doc["results"]["rows"] if r.get("images_per_s")]
    assert len(measured) == 2 and all(r["images"] == 48 for r in measured)  # 40 rounded up to whole batches
    from bench.loader import _dali_pipeline_epoch

    assert _dali_pipeline_epoch(shards_dir, 16, 1, True, max_images=40)() == 48  # the ablation rows stop there too
    with pytest.raises(ConfigError, match="at least the batch size"):
        run(shards_dir, quick=True, batch_size=16, device="cpu", only=["DALI-CPU 1"], max_images=8)


@pytest.mark.slow
def test_input_efficiency_full_pass_times_a_whole_rebuilt_epoch(shards_dir):
    from bench.input_efficiency import CELEBA_TRAIN_IMAGES, run
    from pipeline.shards import read_split

    doc = run(shards_dir, quick=False, device="cpu", batch_size=16, print_results=False)
    r = doc["results"]
    train = read_split(shards_dir, "train").count
    assert r["train_images"] == train and r["celeba_epoch_measured"] is False
    # the whole pass (rebuild + warm-up steps + timed steps) is longer than its timed steady state
    assert r["epoch_seconds"] > r["steps_timed"] * 16 / r["loader_fed_images_per_s"]
    assert r["celeba_epoch_seconds"] == pytest.approx(r["epoch_seconds"] * CELEBA_TRAIN_IMAGES / train)


def test_bad_shards_dir_is_one_clear_error(tmp_path, capsys):
    assert bench_main(["--quick", "--shards", str(tmp_path), "--only", "input"]) == 2
    assert "manifest.json" in capsys.readouterr().err


def test_loss_bench_times_the_same_loss_on_every_path():
    """bench.loss compares like with like: its eager and fused paths give one loss for the same inputs."""
    import torch

    from bench.loss import _inputs, _loss_path
    from kernels import resolve_impl
    from pipeline.loader import resolve_device

    device = resolve_device(None)
    if resolve_impl("auto", device) != "triton":
        pytest.skip("the fused path needs CUDA or TRITON_INTERPRET=1")
    inp = _inputs(3, device, torch.float32)
    args = (inp["mu"], inp["logvar"], inp["logits"], inp["x"], inp["beta"])
    (_, eager), (_, fused), (_, recompute) = (_loss_path(impl, grad_in_forward=g)(*args)
                                               for impl, g in (("torch", True), ("triton", True), ("triton", False)))
    torch.testing.assert_close(fused, eager, rtol=1e-5, atol=1e-3)
    torch.testing.assert_close(recompute, eager, rtol=1e-5, atol=1e-3)


def test_flops_per_image_counts_the_configured_model_without_moving_the_rng():
    """train.py counts FLOPs for its MFU line mid-setup: that must not shift the run's RNG stream."""
    import torch

    from model.flops import vae_flops_per_image
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
