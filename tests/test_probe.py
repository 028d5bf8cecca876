"""The CPU probe that decides amp / channels_last / compile "auto" (model/training/runtime.py).

Timings are injected through the probe's ``Timer`` seam, so every choice here is deterministic;
one test runs the real probe on a tiny network and only checks that it is quick and sane.
"""
from __future__ import annotations

import json
import time

import pytest
import torch

from pipeline.errors import ConfigError

from model.training.config import read_config_file, validate
from model.training.runtime import (BF16_FIRST_MAX, BUDGET_S, MAX_ROUNDS, Candidate, ProbeResult, cache_key,
                                  fingerprint, probe_step, run_probe)
from model.training.runtime import (Runtime, decide_compile, from_rank0, keep_resumed_choices, resolve_runtime,
                                    runtime_choices)

FP32, CL, BF16 = Candidate("off", False), Candidate("off", True), Candidate("bf16", True)


class FakeTimer:
    """Step times per candidate (the first step of each may be slower), a pilot ratio, call counts."""

    def __init__(self, times: dict[Candidate, float], pilot: float = 10.0, first: dict[Candidate, float] | None = None,
                 compile_cost: tuple[float, float] = (30.0, 0.1)):
        self.times, self.ratio, self.first = times, pilot, dict(first or {})
        self.steps: dict[Candidate, int] = {}
        self.pilots = self.compiles = 0
        self._compile = compile_cost

    def step(self, c: Candidate) -> float:
        self.steps[c] = self.steps.get(c, 0) + 1
        return self.first.pop(c) if c in self.first else self.times[c]

    def pilot(self) -> float:
        self.pilots += 1
        return self.ratio

    def compile_cost(self, c: Candidate) -> tuple[float, float]:
        self.compiles += 1
        return self._compile

    @property
    def calls(self) -> int:
        return sum(self.steps.values()) + self.pilots + self.compiles


def cfg_with(**kw) -> dict:
    return validate({**read_config_file(), "loss_impl": "torch", **kw})


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A private probe cache folder, the probe switched on, and a quiet machine (whatever this one's load)."""
    monkeypatch.setattr("model.training.runtime.busy_machine", lambda: "")
    monkeypatch.setenv("VAE_PROBE_CACHE", str(tmp_path / "probe"))
    monkeypatch.delenv("VAE_NO_PROBE", raising=False)
    monkeypatch.delenv("VAE_PROBE_COMPILE", raising=False)
    return tmp_path / "probe"


# ------------------------------------------------------------------------------------ the choice
@pytest.mark.parametrize("times,expect", [
    ({FP32: 0.44, CL: 0.41}, CL),  # channels_last 7 % faster: taken
    ({FP32: 0.40, CL: 0.44}, FP32),
    ({FP32: 0.40, CL: 0.395}, FP32),  # within the noise guard: the first candidate stays
])
def test_fastest_fp32_layout_is_chosen(times, expect):
    timer = FakeTimer(times, pilot=12.0)
    r = run_probe(timer, "auto", "auto", 64)
    assert (r.amp, r.channels_last) == (expect.amp, expect.channels_last)
    assert r.step_s == times[expect]
    assert r.images_per_s == pytest.approx({c.label: 64 / t for c, t in times.items()})
    assert timer.pilots == 1 and BF16 not in timer.steps  # emulated bf16: never a full step
    assert r.skipped == {"bf16": "pilot 12× slower"}


def test_bf16_is_chosen_where_it_is_fast():
    timer = FakeTimer({FP32: 0.4, CL: 0.38, BF16: 0.2}, pilot=0.6)
    r = run_probe(timer, "auto", "auto", 64)
    assert (r.amp, r.channels_last, r.skipped) == ("bf16", True, {})
    assert timer.steps[BF16] == 1 + MAX_ROUNDS


def test_cpu_without_bf16_instructions_never_times_bf16():
    timer = FakeTimer({FP32: 0.4, CL: 0.4, BF16: 0.1})
    r = run_probe(timer, "auto", "auto", 64, no_bf16="no avx512_bf16/amx_bf16")
    assert r.amp == "off" and timer.pilots == 0 and BF16 not in timer.steps
    assert r.skipped == {"bf16": "no avx512_bf16/amx_bf16"}
    fixed = run_probe(timer, "bf16", "auto", 64, no_bf16="no avx512_bf16/amx_bf16")  # the config's word stands
    assert fixed.amp == "bf16" and timer.steps[BF16] > 0


def test_bf16_dropped_after_a_slow_first_step():
    timer = FakeTimer({FP32: 0.4, CL: 0.4, BF16: 0.3}, pilot=1.0, first={FP32: 0.5, CL: 0.5, BF16: 0.5 * BF16_FIRST_MAX * 2})
    r = run_probe(timer, "auto", "auto", 64)
    assert r.amp == "off" and timer.steps[BF16] == 1 and "1st step 6× slower" in r.skipped["bf16"]


@pytest.mark.parametrize("amp,cl,timed,pilots", [
    ("off", "auto", {FP32, CL}, 0),  # amp fixed: no pilot, no bf16
    ("auto", False, {FP32}, 1),  # layout fixed: bf16 would be contiguous too
    ("off", True, {CL}, 0),  # only the step time (for compile "auto")
    ("bf16", "auto", {BF16}, 0),
])
def test_fixed_values_are_held_in_every_candidate(amp, cl, timed, pilots):
    times = {FP32: 0.1, CL: 0.1, BF16: 0.01, Candidate("bf16", False): 0.01}
    timer = FakeTimer(times, pilot=0.5 if cl is False else 20.0)
    r = run_probe(timer, amp, cl, 64)
    assert set(timer.steps) - {Candidate("bf16", False)} == timed and timer.pilots == pilots
    if amp != "auto":
        assert r.amp == amp
    if cl != "auto":
        assert r.channels_last is cl


def test_rounds_stop_at_the_time_budget():
    now = [0.0]

    class SlowTimer(FakeTimer):
        def step(self, c):
            now[0] += self.times[c]  # a fake clock that the steps advance
            return super().step(c)

    timer = SlowTimer({FP32: 0.9, CL: 0.9}, pilot=20.0)
    r = run_probe(timer, "auto", "auto", 64, clock=lambda: now[0])
    assert timer.steps == {FP32: 2, CL: 2}  # warm-up + one round: a second would end past BUDGET_S
    assert r.probe_s == pytest.approx(3.6) and r.probe_s <= BUDGET_S


def test_resolve_runtime_never_overrides_fixed_values(cache):
    liar = ProbeResult(amp="bf16", channels_last=True, step_s=0.1, batch_size=64)  # a probe that ignored the config
    rt = resolve_runtime(cfg_with(amp="off", channels_last="false", compile="auto"), device="cpu",
                         probe=lambda cfg: liar)
    assert (rt.amp, rt.channels_last, rt.compile) == ("off", False, False)
    assert rt.chosen_by == {"compile": "run length"}
    calls = []
    rt = resolve_runtime(cfg_with(amp="off", channels_last="true", compile="false"), device="cpu",
                         probe=lambda cfg: calls.append(cfg) or liar)
    assert calls == [] and rt.note == "" and (rt.amp, rt.channels_last) == ("off", True)


# ------------------------------------------------------------------------------------ the cache
def test_cache_written_reused_keyed_and_repaired(cache, capsys):
    cfg = cfg_with(batch_size=64)
    timer = FakeTimer({FP32: 0.44, CL: 0.41})
    first = probe_step(cfg, timer=timer, impl="torch")
    files = list(cache.glob("*.json"))
    assert len(files) == 1 and not first.cached and first.channels_last
    saved = json.loads(files[0].read_text())
    assert saved["fingerprint"]["batch_size"] == 64 and saved["result"]["step_s"] == pytest.approx(0.41)

    calls = timer.calls
    again = probe_step(cfg, timer=timer, impl="torch")
    assert timer.calls == calls and again.cached and (again.amp, again.channels_last) == (first.amp, first.channels_last)
    assert str(files[0]) in again.describe()

    other = probe_step(cfg_with(batch_size=32), timer=timer, impl="torch")  # another input: probed again
    assert timer.calls > calls and not other.cached and len(list(cache.glob("*.json"))) == 2

    files[0].write_text("{not json")
    calls = timer.calls
    repaired = probe_step(cfg, timer=timer, impl="torch")
    assert timer.calls > calls and not repaired.cached
    assert "ignoring the unreadable probe cache" in capsys.readouterr().err
    assert json.loads(files[0].read_text())["result"]["channels_last"] is True  # rewritten


def test_busy_machine_is_reported_and_the_result_kept(cache, monkeypatch):
    load = ["load 3.3 on 2 cores"]
    monkeypatch.setattr("model.training.runtime.busy_machine", lambda: load[0])
    timer = FakeTimer({FP32: 0.4, CL: 0.5})
    busy = probe_step(cfg_with(), timer=timer, impl="torch")
    assert busy.busy == "load 3.3 on 2 cores" and "(busy machine: load 3.3 on 2 cores)" in busy.describe()
    calls, load[0] = timer.calls, ""
    again = probe_step(cfg_with(), timer=timer, impl="torch")  # a resumed run must repeat its start's choice
    assert again.cached and timer.calls == calls and again.busy == busy.busy


def test_fingerprint_covers_machine_and_step_inputs():
    fp = fingerprint(cfg_with(), "torch")
    for key in ("cpu", "flags", "cores", "threads", "torch", "batch_size", "image_size", "channels", "latent_dim",
                "res_blocks", "recon", "perceptual_weight", "ssim_weight", "amp", "channels_last"):
        assert key in fp, key
    assert cache_key(fp) != cache_key(fingerprint(cfg_with(res_blocks=1), "torch"))
    assert cache_key(fp) == cache_key(fingerprint(cfg_with(compile="true", epochs=99), "torch"))  # not inputs


def test_compile_measured_once_when_asked(cache, monkeypatch):
    monkeypatch.setenv("VAE_PROBE_COMPILE", "1")
    timer = FakeTimer({FP32: 0.4, CL: 0.5}, compile_cost=(25.0, 0.32))
    r = probe_step(cfg_with(), timer=timer, impl="torch")
    assert timer.compiles == 1 and r.compile_source == "measured"
    assert r.compile_cost_s == 25.0 and r.compile_speedup == pytest.approx(0.4 / 0.32)
    again = probe_step(cfg_with(), timer=timer, impl="torch")
    assert timer.compiles == 1 and again.cached and again.compile_source == "measured"


# ------------------------------------------------------------------------------------ compile
def test_compile_verdict_arithmetic():
    r = ProbeResult("off", True, step_s=0.4, batch_size=64, compile_cost_s=40.0, compile_speedup=1.25,
                    compile_margin=1.5)
    # each step saves 0.4 × (1 − 1/1.25) = 0.08 s; compiling must save 1.5 × 40 = 60 s: 750 steps is not enough
    on, why = r.compile_verdict(750)
    assert not on and "750 steps save 60 s ≤ 1.5 × compile cost 40 s" in why
    on, why = r.compile_verdict(800)
    assert on and why.startswith("compile on (800 steps save 64 s >")
    assert not r.compile_verdict(-5)[0]


def test_decide_compile_only_touches_compile_auto(cache):
    probe = ProbeResult("off", True, step_s=0.4, batch_size=64, compile_cost_s=40.0, compile_speedup=1.25)
    rt = resolve_runtime(cfg_with(), device="cpu", probe=lambda cfg: probe)
    assert rt.compile is False and rt.chosen_by == {"amp": "probe", "channels_last": "probe", "compile": "run length"}
    assert decide_compile(rt, 10).compile is False
    long = decide_compile(rt, 100_000)
    assert long.compile is True and "compile on (100,000 steps" in long.note and rt.compile is False
    fixed = resolve_runtime(cfg_with(compile="false"), device="cpu", probe=lambda cfg: probe)
    assert decide_compile(fixed, 100_000) is fixed
    flags = resolve_runtime(cfg_with(), device="cpu")  # no probe: the CPU-flag rule, compile stays off
    assert decide_compile(flags, 100_000).compile is False


def test_a_resumed_run_keeps_its_starts_choices(cache):
    """What a checkpoint saved (runtime_choices) wins over what this machine would choose now, so a resumed run
    computes as it started; the command line, another device type or an older checkpoint decide afresh."""
    now = ProbeResult("off", False, step_s=0.4, batch_size=64, compile_cost_s=40.0, compile_speedup=1.25)
    rt = resolve_runtime(cfg_with(), device="cpu", probe=lambda cfg: now)  # this machine: fp32 contiguous
    saved = {"device": "cpu", "amp": "off", "channels_last": True, "compile": True}  # the start: compiled, NHWC
    kept, notice = keep_resumed_choices(rt, saved, explicit=set())
    assert (kept.amp, kept.channels_last) == ("off", True) and kept.chosen_by["channels_last"] == "checkpoint"
    assert notice == ("notice: the resumed run computes as it started (amp off, channels_last on); on its own this "
                      "machine would now choose channels_last off (--channels_last VALUE on the command line decides "
                      "afresh)")
    kept = decide_compile(kept, 10)  # 10 steps left would not repay compiling, but the start compiled
    assert kept.compile is True and kept.chosen_by["compile"] == "checkpoint"
    assert "; compile on as the run's start decided (checkpoint); for the steps left: compile off (10 " in kept.note
    assert runtime_choices(kept) == saved

    fresh, notice = keep_resumed_choices(rt, saved, explicit={"channels_last", "compile"})
    assert fresh.channels_last is False and notice is None and decide_compile(fresh, 10).compile is False
    assert keep_resumed_choices(rt, None, set()) == (rt, None)  # a checkpoint without choices
    other, notice = keep_resumed_choices(rt, {**saved, "device": "cuda", "amp": "bf16"}, set())
    assert other is rt and "trained on cuda, this run is on cpu" in notice


# ------------------------------------------------------------------------------------ the report
def test_note_and_describe_report_the_probe(cache, monkeypatch):
    monkeypatch.setattr("model.training.runtime.bf16_emulated", lambda: None)  # the pilot path, on any CPU
    timer = FakeTimer({FP32: 64 / 144, CL: 64 / 155}, pilot=15.0)
    # images/s are the batch over the step time: the batch is pinned so that the timer's figures read back
    rt = resolve_runtime(cfg_with(batch_size=64), device="cpu",
                         probe=lambda cfg: probe_step(cfg, timer=timer, impl="torch"))
    rt = decide_compile(rt, 470)
    assert rt.note.startswith("probe ") and "fp32 144, channels_last 155 images/s" in rt.note
    assert "bf16 skipped (pilot 15× slower) → amp off, channels_last on; compile off (470 steps" in rt.note
    d = json.loads(json.dumps(rt.describe()))  # what summary.json keeps
    assert d["note"] == rt.note and d["chosen_by"]["amp"] == "probe" and d["probe"]["images_per_s"]["fp32"] == 144
    cached = resolve_runtime(cfg_with(batch_size=64), device="cpu",
                             probe=lambda cfg: probe_step(cfg, timer=timer, impl="torch"))
    assert cached.note.startswith("cached probe (")


def test_probe_off_falls_back_to_cpu_flags(cache, monkeypatch):
    monkeypatch.setenv("VAE_NO_PROBE", "1")
    rt = resolve_runtime(cfg_with(), device="cpu", probe=lambda cfg: pytest.fail("probed"))
    assert rt.note.startswith("auto by CPU flags (probe off: VAE_NO_PROBE=1): amp ")
    assert rt.probe is None and rt.compile is False and rt.chosen_by["channels_last"] == "CPU flags"


def test_every_rank_takes_rank0s_answer(tmp_path):
    """The broadcast path of from_rank0 (one gloo process standing in for rank 0 of two)."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        assert from_rank0(lambda: ProbeResult("off", True, 0.1, 64), 0, 2).channels_last is True
        with pytest.raises(ValueError, match="boom"):
            from_rank0(lambda: (_ for _ in ()).throw(ValueError("boom")), 0, 2)
    finally:
        dist.destroy_process_group()


# ------------------------------------------------------------------------------------ the real thing
@pytest.mark.slow  # times real steps
def test_real_probe_on_a_tiny_model_is_quick_and_sane(cache):
    cfg = cfg_with(image_size=16, channels=[8, 16], latent_dim=8, batch_size=8)
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    t0 = time.perf_counter()
    r = probe_step(cfg)
    took = time.perf_counter() - t0
    assert torch.equal(torch.rand(3), expected)  # the run's random stream is untouched
    assert took < 8 and r.probe_s <= BUDGET_S + 1, (took, r)
    assert r.amp in ("off", "bf16") and r.step_s > 0 and {"fp32", "channels_last"} <= set(r.images_per_s)
    assert isinstance(Runtime(torch.device("cpu"), 0, 0, 1, r.amp, r.channels_last, False, False), Runtime)


@pytest.mark.slow  # times real convolutions
def test_real_pilot_gives_a_ratio():
    from model.training.runtime import StepTimer

    ratio = StepTimer({}, "torch").pilot()
    assert 0 < ratio < float("inf")


@pytest.mark.slow  # a training run
def test_train_py_runs_with_the_probes_choice_and_reports_it(cache, monkeypatch, shards_dir, tmp_path, capsys):
    import train
    from tests.test_train import SMALL

    timer = FakeTimer({FP32: 0.5, CL: 0.1}, pilot=15.0)  # channels_last 5× faster: the probe must pick it
    monkeypatch.setattr(train, "probe_step", lambda cfg: probe_step(cfg, timer=timer, impl="torch"))
    fixed = [a for i, a in enumerate(SMALL) if "--compile" not in SMALL[max(0, i - 1):i + 1]]  # compile stays "auto"
    out = tmp_path / "run"
    assert train.main([*fixed, "--data", str(shards_dir), "--out", str(out), "--epochs", "1", "--stop_at_step", "2",
                       "--amp", "auto", "--channels_last", "auto"]) == 0
    header = " ".join(capsys.readouterr().out.split())
    assert "channels_last True" in header and "auto: probe" in header
    runtime = json.loads((out / "summary.json").read_text())["runtime"]
    assert runtime["channels_last"] is True and runtime["chosen_by"]["channels_last"] == "probe"
    assert runtime["compile"] is False and "compile off (2 steps" in runtime["note"]  # far too short to repay it
    assert timer.steps[CL] >= 1

    # Resumed on a "machine" whose probe picks fp32: the checkpoint's choices stand (up to the model's build,
    # which is all this needs to see), unless the command line says otherwise.
    ck = torch.load(out / "checkpoints/last.pt", weights_only=False)
    assert ck["runtime"] == {"device": "cpu", "amp": "off", "channels_last": True, "compile": False}
    monkeypatch.setenv("VAE_PROBE_CACHE", str(cache.parent / "probe-elsewhere"))
    elsewhere = FakeTimer({FP32: 0.1, CL: 0.5}, pilot=15.0)
    monkeypatch.setattr(train, "probe_step", lambda cfg: probe_step(cfg, timer=elsewhere, impl="torch"))
    built = []

    def stop_at_build(cfg, rt, impl):
        built.append(rt)
        raise ConfigError("enough")

    import model.training.step as step_module

    monkeypatch.setattr(step_module, "build_model", stop_at_build)
    assert train.main(["--out", str(out), "--resume"]) == 2
    assert built[0].channels_last is True and built[0].chosen_by["channels_last"] == "checkpoint"
    assert built[0].compile is False and elsewhere.steps[FP32] >= 1
    assert "would now choose channels_last off" in " ".join(capsys.readouterr().err.split())
    assert train.main(["--out", str(out), "--resume", "--channels_last", "auto"]) == 2
    assert built[1].channels_last is False and built[1].chosen_by["channels_last"] == "probe"
