"""Where and how a run computes: device, ranks, AMP, channels_last, compile, and on CPU the timed
probe of the step that decides the "auto" settings.

Sections (each keeps the notes of the module it was):

    runtime          device, torchrun/DDP ranks, AMP dtype, channels_last, compile: every "auto" resolved
    probe            on CPU, a timing of the real step decides amp and channels_last, the run's length compile
    budget           train_seconds: the run's step timed on its device, the budget turned into steps
"""
from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass, field, replace
import datetime
import hashlib
import json
import math
import os
from pathlib import Path
import sys
import time
from typing import Any, Callable, Protocol

import torch

from pipeline.errors import ConfigError
from pipeline.parallel import usable_cores


# ====================================================================================================
# runtime
# Where and how training runs: device, torchrun/DDP ranks, AMP dtype, channels_last, compile.
#
# Every "auto" in config.json is resolved here, once, into a :class:`Runtime` that train.py prints
# and saves; nothing else in the code looks at the hardware. On CUDA "auto" means bf16 (fp16 where
# bf16 is missing), channels_last and compile with CUDA graphs ("reduce-overhead"). On CPU, given a ``probe`` (train.py passes
# :func:`model.training.runtime.probe_step`), amp and channels_last are what a short timing of the real
# step found fastest, and compile is decided by :func:`decide_compile` once the run's length is known;
# without one (or with ``VAE_NO_PROBE=1``) by the CPU-flag rule below. ``Runtime.note`` says which.
# ====================================================================================================
PROBE_OFF_ENV = "VAE_NO_PROBE"  # "1": no probe of the step; CPU "auto" follows the CPU-flag rule


@dataclass
class Runtime:
    device: torch.device
    rank: int
    local_rank: int
    world_size: int
    amp: str  # "bf16" | "fp16" | "off"
    channels_last: bool
    compile: bool
    sync_batchnorm: bool
    compile_mode: str = "default"  # torch.compile mode when compile is on (config key compile_mode)
    chosen_by: dict[str, str] = field(default_factory=dict)  # each "auto" setting → what decided it
    note: str = ""  # one line for the run header: how the "auto" settings were decided
    probe: Any = None  # model.training.runtime.ProbeResult when a probe of the step decided
    resumed_compile: bool | None = None  # a resumed run's compile "auto" as its start decided it (decide_compile)

    @property
    def is_main(self) -> bool:
        """Only rank 0 prints and writes files."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def amp_dtype(self) -> torch.dtype | None:
        return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.amp)

    def autocast(self) -> contextlib.AbstractContextManager:
        """The forward pass's autocast context (a no-op when AMP is off)."""
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    @property
    def step_compile_mode(self) -> str | None:
        """The torch.compile mode of the training step (:class:`model.training.step.TrainStep`), or
        None when compile is off. "reduce-overhead" replays the step as CUDA graphs: at this model's size
        the step is launch-bound otherwise (bench.train_step measures every mode)."""
        return self.compile_mode if self.compile else None

    def grad_scaler(self) -> torch.amp.GradScaler:
        """A GradScaler that is only enabled for fp16 (bf16 has fp32's range and needs none)."""
        return torch.amp.GradScaler(self.device.type, enabled=self.amp == "fp16")

    def describe(self) -> dict[str, Any]:
        d = asdict(self)
        d["device"] = str(self.device)
        d["device_name"] = torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else cpu_name()
        return d


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or "cpu"


#: CPU flags that decide how fast a step can be (vector width, native bf16).
SPEED_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "bf16", "sve")


def cpu_flags() -> list[str]:
    """Which of :data:`SPEED_FLAGS` this CPU has (from /proc/cpuinfo; empty where it cannot be read)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                have = set(line.split(":", 1)[1].split())
                return [f for f in SPEED_FLAGS if f in have]
    except OSError:
        pass
    return []


def cpu_has_native_bf16() -> bool:
    """True when the CPU computes bf16 natively (AVX512-BF16 or AMX); elsewhere bf16 is emulated and slower."""
    return bool({"avx512_bf16", "amx_bf16"} & set(cpu_flags()))


def launch_rank() -> int:
    """This process's global rank as torchrun sets it (0 when not launched by torchrun): known
    before the process group exists, e.g. to let only rank 0 lock the run directory."""
    return int(os.environ.get("RANK", "0"))


def init_distributed() -> tuple[int, int, int]:
    """(rank, local_rank, world_size); joins the process group when launched by torchrun."""
    from pipeline.epoch import resolve_rank

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0, 0, 1
    import torch.distributed as dist

    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(minutes=10))
    rank, world_size = resolve_rank()  # the process group's view, as the loaders see it
    return rank, local_rank, world_size


def shutdown_distributed() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def resolve_runtime(cfg: dict[str, Any], rank: int = 0, local_rank: int = 0, world_size: int = 1,
                    device: str | torch.device | None = None, *,
                    probe: Callable[[dict[str, Any]], Any] | None = None) -> Runtime:
    """Turn the config's "auto" values into concrete choices for this machine.

    ``probe(cfg)``, when given, times the step on CPU (:func:`model.training.runtime.probe_step`); it runs on
    rank 0 only and every rank takes its answer. Compile "auto" on CPU is then left off until
    :func:`decide_compile` knows the run's length."""
    if device is None:
        device = torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    device = torch.device(device)
    cuda = device.type == "cuda"
    auto = [k for k in ("amp", "channels_last", "compile") if cfg[k] == "auto"]

    amp = cfg["amp"]
    if amp == "fp16" and not cuda:
        raise ConfigError("amp 'fp16' needs a CUDA device; use 'bf16' or 'off' on CPU")
    elif amp == "bf16" and cuda and not torch.cuda.is_bf16_supported():
        raise ConfigError("this GPU does not support bf16; use amp 'fp16' (with GradScaler) or 'auto'")
    elif amp == "auto":
        if cuda:
            amp = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        else:
            # With native bf16 (AVX512-BF16/AMX) bf16 autocast + channels_last beats fp32 eager; emulated it is
            # many times slower (bench/RESULTS.md: the train-step table, "The CPU probe").
            amp = "bf16" if cpu_has_native_bf16() else "off"

    channels_last = cfg["channels_last"]
    if channels_last == "auto":
        # NHWC feeds tensor cores / oneDNN's bf16 convolutions directly (the probe decides fp32 on CPU).
        channels_last = cuda or amp != "off"

    compile_ = cfg["compile"]
    if compile_ == "auto":
        # On CPU: off unless decide_compile finds the run long enough to pay back the compile time.
        compile_ = cuda

    compile_mode = cfg["compile_mode"]
    if compile_mode == "auto":
        # CUDA graphs: at this model's size a step is bound by kernel launches unless it is replayed as graphs.
        compile_mode = "reduce-overhead" if cuda else "default"

    sync_bn = bool(cfg["sync_batchnorm"])
    if sync_bn and world_size > 1 and not cuda:
        raise ConfigError("sync_batchnorm needs CUDA (torch's SyncBatchNorm has no CPU kernel); set it to false")

    how = "CUDA" if cuda else "CPU flags"
    chosen_by, result = dict.fromkeys(auto, how), None
    probe_off = os.environ.get(PROBE_OFF_ENV, "") not in ("", "0")
    # With amp bf16 fixed, channels_last goes with it: nothing to time unless compile needs a step time.
    if not cuda and auto and probe is not None and not probe_off and (cfg["amp"] != "bf16" or "compile" in auto):
        result = from_rank0(lambda: probe(cfg), rank, world_size)
        amp = result.amp if cfg["amp"] == "auto" else amp  # a value fixed in the config always stands
        channels_last = result.channels_last if cfg["channels_last"] == "auto" else channels_last
        chosen_by = {k: "run length" if k == "compile" else "probe" for k in auto}
        note = result.describe()
    elif auto:
        off = f" (probe off: {PROBE_OFF_ENV}=1)" if probe is not None and not cuda and probe_off else ""
        values = {"amp": amp, "channels_last": channels_last, "compile": compile_}
        note = f"auto by {how}{off}: " + ", ".join(f"{k} {_shown(values[k])}" for k in auto)
    else:
        note = ""
    return Runtime(device, rank, local_rank, world_size, amp, bool(channels_last), bool(compile_),
                   sync_bn and world_size > 1, compile_mode, chosen_by, note, result)


def decide_compile(rt: Runtime, planned_steps: int) -> Runtime:
    """``rt`` with compile "auto" decided by the probe's numbers for a run of ``planned_steps`` more steps
    (every rank holds rank 0's probe and the same step count, so all decide alike); unchanged otherwise.
    A resumed run keeps its start's decision (:func:`keep_resumed_choices`); the note says if this one differs."""
    if rt.chosen_by.get("compile") != "run length" or rt.probe is None:
        return rt
    on, why = rt.probe.compile_verdict(planned_steps)
    if rt.resumed_compile is not None:
        kept = rt.resumed_compile
        why = (f"compile {_shown(kept)} as the run's start decided (checkpoint)"
               + (f"; for the steps left: {why}" if on != kept else ""))
        return replace(rt, compile=kept, note=f"{rt.note}; {why}", chosen_by={**rt.chosen_by, "compile": "checkpoint"})
    return replace(rt, compile=on, note=f"{rt.note}; {why}")


#: What a checkpoint keeps of the runtime: a resumed run computes as its start did (keep_resumed_choices).
CHOICES = ("amp", "channels_last", "compile")


def runtime_choices(rt: Runtime) -> dict[str, Any]:
    """The resolved choices for the checkpoint: {"device": "cpu"|"cuda", "amp", "channels_last", "compile"}."""
    return {"device": rt.device.type, **{k: getattr(rt, k) for k in CHOICES}}


def keep_resumed_choices(rt: Runtime, saved: dict[str, Any] | None, explicit: set[str]) -> tuple[Runtime, str | None]:
    """``rt`` with the amp, channels_last and compile that a resumed checkpoint's run used (``saved``:
    :func:`runtime_choices`), so that the resumed run computes the same way whatever this machine's probe
    or flags would choose now, and a notice line naming what differs from that (None when nothing does).

    What the command line sets (``explicit``: the keys given as --key, "auto" included) is decided afresh;
    so is everything when the checkpoint holds no choices (older checkpoints) or comes from another device
    type (bit-exactness is gone anyway; a CPU's amp off is no choice for a GPU). Compile is handed to
    :func:`decide_compile`, which is where a run decides it (the loss is built before then, never compiled
    by "auto" on CPU)."""
    if not saved:
        return rt, None
    if saved.get("device") != rt.device.type:
        return rt, (f"notice: the checkpoint was trained on {saved.get('device')}, this run is on {rt.device.type}: "
                    "amp, channels_last and compile are decided afresh (the resumed run will not be bit-exact)")
    changes: dict[str, Any] = {}
    chosen_by, differ = dict(rt.chosen_by), []
    for key in ("amp", "channels_last"):
        if key in explicit or key not in saved or (key == "amp" and not _amp_usable(saved[key], rt.device)):
            continue
        if saved[key] != getattr(rt, key):
            differ.append(f"{key} {_shown(getattr(rt, key))}")
            changes[key] = saved[key]
        if key in chosen_by:
            chosen_by[key] = "checkpoint"
    resumed_compile = None
    if "compile" not in explicit and chosen_by.get("compile") == "run length" and "compile" in saved:
        resumed_compile = bool(saved["compile"])
    rt = replace(rt, **changes, chosen_by=chosen_by, resumed_compile=resumed_compile)
    if not differ:
        return rt, None
    kept = ", ".join(f"{k} {_shown(saved[k])}" for k in ("amp", "channels_last"))
    flags = " ".join(f"--{d.split()[0]} VALUE" for d in differ)
    return rt, (f"notice: the resumed run computes as it started ({kept}); on its own this machine would now choose "
                f"{', '.join(differ)} ({flags} on the command line decides afresh)")


def _amp_usable(amp: str, device: torch.device) -> bool:
    if device.type == "cuda":
        return amp != "bf16" or torch.cuda.is_bf16_supported()
    return amp in ("off", "bf16")


def _shown(value: Any) -> str:
    return ("on" if value else "off") if isinstance(value, bool) else str(value)


def from_rank0(make: Callable[[], Any], rank: int, world_size: int) -> Any:
    """``make()`` on rank 0, its value (or its exception) on every rank: one object broadcast."""
    if world_size <= 1:
        return make()
    import torch.distributed as dist

    box: list[Any] = [None]
    if rank == 0:
        try:
            box[0] = make()
        except Exception as err:  # every rank raises it, instead of the others waiting for a value
            box[0] = err
    dist.broadcast_object_list(box, src=0)
    if isinstance(box[0], Exception):
        raise box[0]
    return box[0]


# ====================================================================================================
# probe
# On CPU, "auto" for amp and channels_last is decided by timing the real training step, and compile by
# whether the planned run is long enough to pay its compile time back.
#
#     probe_step(cfg)  →  ProbeResult: the fastest of the candidate settings, with its eager s/step
#     result.compile_verdict(planned_steps)  →  (on, why): saving = steps × s/step × (1 − 1/speed-up)
#                                               must exceed COMPILE_MARGIN × compile cost
#
# Candidates: fp32 contiguous, fp32 channels_last, and bf16 autocast + channels_last only where bf16 can
# be fast, which three guards decide, cheapest first: an x86 CPU without avx512_bf16/amx_bf16 has no bf16
# arithmetic (oneDNN emulates it: a bf16 step takes seconds at batch 64, bench/RESULTS.md), so bf16 is
# not timed there at all; elsewhere a pilot (a convolution and a transposed
# convolution, forward and backward, at batch 4: ~0.3 s) drops it when bf16 is BF16_PILOT_MAX× slower
# than fp32, and a bf16 candidate whose first step is BF16_FIRST_MAX× slower than fp32's is dropped then.
# Each candidate is the run's own model, objective, AdamW and ``TrainStep`` on random images of the
# run's batch and image size: one warm-up step, then up to three timed rounds that alternate between
# the candidates (so a neighbour's load hits all of them alike), the fastest per candidate, stopping early
# when the next round would pass BUDGET_S. Settings fixed in the config are held in every candidate.
#
# torch.compile is not timed by default (about a minute on 2 cores): its cost and speed-up are the
# constants below, measured on this project's 2-core CPU machine (bench/RESULTS.md, "The CPU probe"),
# unless ``VAE_PROBE_COMPILE=1`` asks to measure them once on this machine (kept in the same cache file).
#
# Results are cached per machine and per probe input (CPU model and bf16/AVX flags, usable cores and
# torch threads, torch version, batch and image size, network shape, loss terms, fixed settings) as
# JSON in ``$VAE_PROBE_CACHE`` or ``$XDG_CACHE_HOME/celeba-vae/probe`` (``~/.cache/...``): a later run
# with the same inputs reads it and does not probe, so a resumed run repeats its start's choices
# (delete the file to measure again, e.g. after a probe the run header marked "busy machine": other
# work kept the CPU busy, load average ≥ cores, while it timed). ``VAE_NO_PROBE=1`` turns the probe off (CPU
# "auto" then follows the CPU-flag rule of :func:`model.training.runtime.resolve_runtime`).
# ====================================================================================================
PROBE_VERSION = 1
ENV_CACHE, ENV_COMPILE = "VAE_PROBE_CACHE", "VAE_PROBE_COMPILE"
BUDGET_S = 4.0  # timed rounds stop when the next one would end past this (warm-up and pilot included)
MAX_ROUNDS = 3
SWITCH_GAIN = 1.03  # another setting must be this much faster than the first candidate (noise guard)
BF16_PILOT_MAX = 1.5  # bf16 pilot / fp32 pilot above this: bf16 is emulated, not probed further
BF16_FIRST_MAX = 3.0  # bf16's first step / fp32's first step above this: dropped after one step
# torch.compile on CPU, measured on the project's 2-core "AMD EPYC" (AVX2, no AVX-512) with the default
# config at batch 64 (how, and the figures: bench/RESULTS.md, "The CPU probe"). The speed-up is compiled
# over the best eager setting's images/s; the cost is the cold one (an empty inductor cache), network and
# loss compiled together as the step compiles them: a warm cache makes it far cheaper, the constant keeps
# the cold figure.
COMPILE_SPEEDUP = 160 / 155
COMPILE_COST_S = 49.0
COMPILE_MARGIN = 1.5  # compile only when the saving exceeds its cost by this factor (constants are rough)


@dataclass(frozen=True)
class Candidate:
    amp: str  # "off" | "bf16"
    channels_last: bool

    @property
    def label(self) -> str:
        if self.amp == "off":
            return "channels_last" if self.channels_last else "fp32"
        return "bf16" + ("" if self.channels_last else " contiguous")


class Timer(Protocol):
    """What the probe measures with (tests pass a fake): seconds of one step, and the bf16 pilot ratio."""

    def step(self, c: Candidate) -> float: ...
    def pilot(self) -> float: ...
    def compile_cost(self, c: Candidate) -> tuple[float, float]: ...


@dataclass
class ProbeResult:
    amp: str
    channels_last: bool
    step_s: float  # eager seconds per step of the chosen setting
    batch_size: int
    images_per_s: dict[str, float] = field(default_factory=dict)  # candidate → measured images/s
    skipped: dict[str, str] = field(default_factory=dict)  # candidate → why it was not timed
    probe_s: float = 0.0  # wall time of the probe when it ran
    busy: str = ""  # "load 3.3 on 2 cores" when other work kept the CPU busy while probing (timings suspect)
    compile_cost_s: float = COMPILE_COST_S
    compile_speedup: float = COMPILE_SPEEDUP
    compile_source: str = "constant"  # "constant" | "measured"
    compile_margin: float = COMPILE_MARGIN
    cache_file: str = ""
    cached: bool = False  # read from the cache: this run did not probe

    def describe(self) -> str:
        """One line for the run header: what was measured and what it chose."""
        how = f"cached probe ({self.cache_file})" if self.cached else f"probe {self.probe_s:.1f} s"
        how += f" (busy machine: {self.busy})" if self.busy else ""
        timed = ", ".join(f"{k} {v:.0f}" for k, v in self.images_per_s.items())
        skipped = "".join(f", {k} skipped ({why})" for k, why in self.skipped.items())
        return (f"{how} at batch {self.batch_size}: {timed} images/s{skipped} → amp {self.amp}, "
                f"channels_last {'on' if self.channels_last else 'off'}")

    def compile_verdict(self, planned_steps: int) -> tuple[bool, str]:
        """Whether compiling pays back over ``planned_steps``, and the arithmetic in words."""
        saving = max(planned_steps, 0) * self.step_s * (1 - 1 / self.compile_speedup)
        need = self.compile_cost_s * self.compile_margin
        on = saving > need
        return on, (f"compile {'on' if on else 'off'} ({max(planned_steps, 0):,} steps save {saving:.0f} s "
                    f"{'>' if on else '≤'} {self.compile_margin:g} × compile cost {self.compile_cost_s:.0f} s, "
                    f"{self.compile_source})")


# ---------------------------------------------------------------------------------------------- choice
def candidates(amp: str, channels_last: str | bool) -> tuple[list[Candidate], list[Candidate]]:
    """(fp32 candidates, bf16 candidates) for the config's values ("auto" or fixed)."""
    layouts = [False, True] if channels_last == "auto" else [bool(channels_last)]
    fp32 = [Candidate("off", cl) for cl in layouts] if amp in ("auto", "off") else []
    # bf16 goes with channels_last (oneDNN's bf16 convolutions want NHWC) unless the config says otherwise
    bf16 = [Candidate("bf16", True if channels_last == "auto" else bool(channels_last))] if amp in ("auto", "bf16") else []
    return fp32, bf16


def bf16_emulated() -> str | None:
    """Why bf16 cannot be fast on this CPU without timing it (an x86 without bf16 instructions), or None."""
    import platform

    x86 = platform.machine().lower() in ("x86_64", "amd64", "i386", "i686")
    return "no avx512_bf16/amx_bf16" if x86 and not cpu_has_native_bf16() else None


def run_probe(timer: Timer, amp: str, channels_last: str | bool, batch_size: int, *, no_bf16: str | None = None,
              budget_s: float = BUDGET_S, clock: Callable[[], float] = time.perf_counter) -> ProbeResult:
    """Time the candidates with ``timer`` and choose; pure apart from ``timer`` and ``clock``. ``no_bf16``:
    why amp "auto" need not time bf16 here (see :func:`bf16_emulated`)."""
    t0 = clock()
    fp32, bf16 = candidates(amp, channels_last)
    skipped: dict[str, str] = {}
    if fp32 and bf16 and no_bf16:  # amp "auto" on a CPU without bf16 arithmetic
        skipped, bf16 = {c.label: no_bf16 for c in bf16}, []
    if fp32 and bf16:  # amp "auto": bf16 only where it can be fast
        ratio = timer.pilot()
        if ratio > BF16_PILOT_MAX:
            skipped = {c.label: f"pilot {ratio:.0f}× slower" for c in bf16}
            bf16 = []
    first = {c: timer.step(c) for c in fp32 + bf16}  # warm-up: allocations, oneDNN primitives
    if fp32:
        for c in bf16:
            if (ratio := first[c] / min(first[x] for x in fp32)) > BF16_FIRST_MAX:
                skipped[c.label] = f"1st step {ratio:.0f}× slower"
                bf16.remove(c)
    timed = fp32 + bf16
    times: dict[Candidate, list[float]] = {c: [] for c in timed}
    while True:
        t_round = clock()
        for c in timed:
            times[c].append(timer.step(c))
        now = clock()
        if len(times[timed[0]]) >= MAX_ROUNDS or now + (now - t_round) - t0 > budget_s:
            break
    step_s = {c: min(ts) for c, ts in times.items()}  # a busy neighbour only ever adds time: the fastest is truest
    best = timed[0]  # the first candidate (fp32 contiguous when free) unless another is clearly faster
    for c in timed[1:]:
        if step_s[c] * SWITCH_GAIN < step_s[best]:
            best = c
    return ProbeResult(best.amp, best.channels_last, step_s[best], batch_size,
                       {c.label: batch_size / s for c, s in step_s.items()}, skipped, clock() - t0)


# ---------------------------------------------------------------------------------------------- timer
class StepTimer:
    """The real thing: the run's model, objective, optimizer and ``TrainStep`` per candidate, on CPU."""

    def __init__(self, cfg: dict[str, Any], impl: str):
        self.cfg, self.impl = cfg, impl
        import torch._dynamo  # noqa: F401  (AdamW imports it, ~2 s, in every run anyway: not the probe's time)
        self._steps: dict[Candidate, Callable[[], Any]] = {}

    def _harness(self, c: Candidate, compile_: bool = False) -> Callable[[], Any]:
        from model.losses.objective import Objective
        from model.training.step import build_model
        from model.training.step import TrainStep, make_optimizer
        from model.vae import VAEConfig

        cfg = self.cfg
        mode = "default" if cfg["compile_mode"] == "auto" else cfg["compile_mode"]
        rt = Runtime(torch.device("cpu"), 0, 0, 1, c.amp, c.channels_last, compile_, False, mode)
        raw, model = build_model(VAEConfig.from_dict(cfg), rt, self.impl)
        # Perceptual terms time an untrained VGG of the same shape (the run checks its weights file itself).
        loss_fn = Objective(cfg, impl=self.impl, random_perceptual=True, autocast=rt.autocast)
        params = list(raw.parameters()) + loss_fn.trainable()
        optimizer = make_optimizer([{"params": params}], cfg, rt.device)
        step = TrainStep(model, loss_fn, optimizer, rt.grad_scaler(), device=rt.device, autocast=rt.autocast,
                         grad_clip=cfg["grad_clip"], params=params, lr_table=[cfg["lr"]], beta_table=[1.0],
                         compile_mode=rt.step_compile_mode)
        side = cfg["image_size"]
        x = torch.rand(cfg["batch_size"], 3, side, side)
        x = x.contiguous(memory_format=torch.channels_last if c.channels_last else torch.contiguous_format)
        return lambda: step(x)

    def step(self, c: Candidate) -> float:
        if c not in self._steps:
            self._steps[c] = self._harness(c)
        t0 = time.perf_counter()
        self._steps[c]()
        return time.perf_counter() - t0

    def pilot(self) -> float:
        """bf16 / fp32 time of a conv + transposed conv, forward and backward, at batch 4: after one
        warm-up call each, four calls alternating between the two, best of each (≈ 0.3 s on AVX2)."""
        import contextlib

        conv = torch.nn.Conv2d(64, 128, 4, 2, 1).to(memory_format=torch.channels_last)
        deconv = torch.nn.ConvTranspose2d(128, 64, 4, 2, 1).to(memory_format=torch.channels_last)
        x = torch.rand(4, 64, 16, 16).contiguous(memory_format=torch.channels_last)
        modes = {"fp32": contextlib.nullcontext, "bf16": lambda: torch.autocast("cpu", torch.bfloat16)}
        times: dict[str, list[float]] = {name: [] for name in modes}
        for _ in range(5):
            for name, ctx in modes.items():
                t0 = time.perf_counter()
                with ctx():
                    y = deconv(torch.relu(conv(x)))
                y.float().square().mean().backward()
                times[name].append(time.perf_counter() - t0)
        return min(times["bf16"][1:]) / min(times["fp32"][1:])

    def compile_cost(self, c: Candidate) -> tuple[float, float]:
        """(seconds that compiling adds to the first steps, compiled seconds per step) of ``c``."""
        torch._dynamo.reset()
        try:
            step = self._harness(c, compile_=True)
            t0 = time.perf_counter()
            step(), step()
            first_two = time.perf_counter() - t0
            ts = []
            for _ in range(3):
                t0 = time.perf_counter()
                step()
                ts.append(time.perf_counter() - t0)
            compiled = min(ts)
            return max(first_two - 2 * compiled, 0.0), compiled
        finally:
            torch._dynamo.reset()  # the run compiles its own model from scratch


# ---------------------------------------------------------------------------------------------- cache
def cache_dir() -> Path:
    """Where results are kept: $VAE_PROBE_CACHE, else $XDG_CACHE_HOME/celeba-vae/probe (~/.cache/...)."""
    if os.environ.get(ENV_CACHE):
        return Path(os.environ[ENV_CACHE])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "celeba-vae" / "probe"


def fingerprint(cfg: dict[str, Any], impl: str) -> dict[str, Any]:
    """Everything the probe's answer depends on: the machine, torch, and what shapes the step."""
    keys = ("batch_size", "image_size", "channels", "latent_dim", "kernel_size", "res_blocks", "recon",
            "free_bits", "perceptual_weight", "perceptual_network", "perceptual_layers", "ssim_weight",
            "ssim_scales", "grad_clip", "amp", "channels_last", "compile_mode")
    return {"probe": PROBE_VERSION, "cpu": cpu_name(), "flags": cpu_flags(), "cores": usable_cores(),
            "threads": torch.get_num_threads(), "torch": torch.__version__, "loss_impl": impl,
            **{k: cfg.get(k) for k in keys}}


def busy_machine() -> str:
    """"load L on N cores" when the last minute's load average reaches the usable cores (other work
    competes with the probe), else "" (also where there is no load average)."""
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        return ""
    return f"load {load:.1f} on {usable_cores()} cores" if load >= usable_cores() else ""


def cache_key(fp: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(fp, sort_keys=True, default=str).encode()).hexdigest()[:16]


def read_cached(path: Path) -> ProbeResult | None:
    """The cached result at ``path``, or None (absent; unreadable: with a one-line notice)."""
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
        result = ProbeResult(**data["result"])
        if not isinstance(result.step_s, (int, float)) or result.step_s <= 0:
            raise ValueError("no step time")
    except (OSError, ValueError, KeyError, TypeError) as err:
        print(f"notice: ignoring the unreadable probe cache {path} ({type(err).__name__}: {err}); probing again",
              file=sys.stderr)
        return None
    result.cached, result.cache_file = True, str(path)
    return result


def write_cached(path: Path, result: ProbeResult, fp: dict[str, Any]) -> None:
    from model.training.checkpoint import atomic_write

    data = {"fingerprint": fp, "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "result": {**asdict(result), "cached": False, "cache_file": ""}}
    try:
        atomic_write(path, (json.dumps(data, indent=2) + "\n").encode())
    except OSError as err:  # a full or read-only cache folder costs a probe next time, not the run
        print(f"notice: could not write the probe cache {path} ({err}); the next run probes again", file=sys.stderr)


# ---------------------------------------------------------------------------------------------- entry
def probe_step(cfg: dict[str, Any], *, timer: Timer | None = None, impl: str | None = None) -> ProbeResult:
    """The CPU probe for ``cfg`` (its "auto" values are probed, fixed ones held): from the cache when
    this machine has answered it before, else measured (a few seconds) and cached. With
    ``VAE_PROBE_COMPILE=1`` the compile cost and speed-up are measured too, once, and cached with it."""
    if impl is None:
        from kernels import resolve_impl

        impl = resolve_impl(cfg["loss_impl"], "cpu")
    fp = fingerprint(cfg, impl)
    path = cache_dir() / f"{cache_key(fp)}.json"
    want_compile = os.environ.get(ENV_COMPILE, "") not in ("", "0") and cfg["compile"] == "auto"
    result = read_cached(path)  # kept once written: a resumed run makes the same choices as its start
    if result is not None and not (want_compile and result.compile_source != "measured"):
        return result
    timer = timer or StepTimer(cfg, impl)
    with torch.random.fork_rng(devices=[]):  # the run's random streams do not see the probe
        if result is None:
            busy = busy_machine()  # before the probe's own load adds to it
            result = run_probe(timer, cfg["amp"], cfg["channels_last"], cfg["batch_size"], no_bf16=bf16_emulated())
            result.busy = busy
        if want_compile:
            cost, compiled_s = timer.compile_cost(Candidate(result.amp, result.channels_last))
            result.compile_cost_s, result.compile_speedup = cost, result.step_s / compiled_s
            result.compile_source = "measured"
    result.cached, result.cache_file = False, str(path)
    write_cached(path, result, fp)
    return result


# ====================================================================================================
# budget
# ``train_seconds``: a run given a time instead of a length. Before training, the run's own step (its
# model, objective, AdamW, amp, memory format and compile, on its device) is timed for a few steps and an
# evaluation batch, and the budget becomes a step count that the lr and β schedules are built for. The
# resolved count is written into the run's config.json (``steps``), so a resume and a rerun from that
# config train exactly as long, whatever the machine's speed then.
# ====================================================================================================
@dataclass(frozen=True)
class StepTiming:
    """What a budget is divided by, measured on the run's device with the run's settings."""

    step_s: float  # seconds per training step at the run's batch size
    warmup_s: float  # what the first steps cost beyond step_s: allocations, oneDNN primitives, compile
    forward_s: float  # seconds per image of an evaluation forward pass (validation, the closing test)
    metrics_s: float  # seconds per image of the closing pass's image metrics (fp32 whatever the amp)


#: Forward passes per test image in the closing pass (model/evaluation/collect.py and the test's ELBO beside
#: it): an encoding, decodings through μ and a sampled z, the test ELBO's pass. Its image metrics (SSIM's
#: Gaussian windows, high-frequency energy, regions) run in fp32 whatever the amp and are timed apart.
CLOSING_PASSES = 4
#: What the closing pass costs besides its passes and metrics: the test loader's start, the evaluation's two
#: figures (bench/RESULTS.md, "Quality per second": calibrated on a bf16 and an fp32 run of a 2-core Zen 4).
CLOSING_FIXED_S = 3.0
#: The loop's step against the timed one: the loader's hand-over, the first epoch's decoding on the same
#: cores, log points (calibrated the same way).
LOOP_OVERHEAD = 1.1


@dataclass(frozen=True)
class Budget:
    """A time budget resolved into steps, with the arithmetic for the run header."""

    seconds: float
    steps: int
    timing: StepTiming
    validation_s: float  # per epoch
    closing_s: float
    steps_per_epoch: int

    def describe(self) -> str:
        t = self.timing
        epochs = self.steps / self.steps_per_epoch
        return (f"budget {self.seconds:g} s → {self.steps:,} steps ({epochs:.2f} epochs of {self.steps_per_epoch}): "
                f"{t.step_s * 1e3:.1f} ms/step, warm-up {t.warmup_s:.1f} s, validation {self.validation_s:.1f} s "
                f"per epoch, closing evaluation ≈ {self.closing_s:.0f} s (measured before training)")

    def replan_note(self, step: int, loop_s: float, loop_steps: int, before: int, steps: int) -> str:
        """The header line of a check at ``step`` (see :func:`replanned_steps`)."""
        pace = loop_s / max(loop_steps, 1)
        planned = self.timing.step_s * LOOP_OVERHEAD + self.validation_s / self.steps_per_epoch
        verdict = f"{before:,} → {steps:,} steps" if steps != before else f"{steps:,} steps kept"
        return (f"checked at step {step:,}: the loop ran {pace * 1e3:.1f} ms/step with validation against "
                f"{planned * 1e3:.1f} planned → {verdict}")


def budget_steps(seconds: float, timing: StepTiming, *, steps_per_epoch: int, val_images: int,
                 test_images: int, extra_eval_images: int) -> Budget:
    """The steps that fit ``seconds`` of training, per-epoch validation and the closing evaluation (pure).

    A step costs the timed one times :data:`LOOP_OVERHEAD`; validation costs ``val_images`` forward passes per
    epoch, spread over the epoch's steps; the closing evaluation :data:`CLOSING_PASSES` passes over the test
    split plus ``extra_eval_images`` (the IWAE bound's and the diversity ratio's decodes), the image metrics of
    each test image and :data:`CLOSING_FIXED_S`. At least one step, however small the budget."""
    validation_s = val_images * timing.forward_s
    closing_s = ((CLOSING_PASSES * test_images + extra_eval_images) * timing.forward_s
                 + test_images * timing.metrics_s + CLOSING_FIXED_S)
    per_step = timing.step_s * LOOP_OVERHEAD + validation_s / steps_per_epoch
    left = seconds - timing.warmup_s - closing_s
    steps = max(1, math.floor(left / per_step)) if per_step > 0 else 1
    return Budget(seconds, steps, timing, validation_s, closing_s, steps_per_epoch)


#: Where a budgeted run checks its plan against its own pace: the first log point past each of these shares
#: of the planned steps. The loop shows what the timed step cannot (the first epoch's decoding, cached epochs,
#: log points, validations, whatever else the machine is doing), and a shared machine's speed drifts, so
#: the plan is corrected more than once; the last check comes before wsd's decay (the last 30 %) begins.
REPLAN_AT = (0.25, 0.5, 0.65)
#: The most a re-plan may lengthen the run, as a multiple of the planned steps: the schedules' tables on the
#: device are sized for it once, so that a re-plan rewrites them in place (graphs keep their addresses).
REPLAN_MAX = 2.0


def replanned_steps(budget: Budget, *, current: int, step: int, loop_s: float, loop_steps: int, spent_s: float,
                    keeps: Callable[[int], bool]) -> int:
    """The step count that fits what is left of ``budget`` at the pace the loop has kept (pure).

    ``current``: the run's step count now (the budget's, or an earlier check's). ``loop_s`` seconds ran
    ``loop_steps`` steps with their share of validations; ``spent_s`` of the budget are gone at ``step``. The
    remaining seconds, less the closing evaluation, buy steps at the loop's pace. The count stays within
    [step + 1, REPLAN_MAX × the budget's], and ``keeps(total)`` must hold: a total whose lr or β schedule would
    have given an already-run step another value than ``current`` did is not taken (a cosine decay, a cyclical
    β); then the nearest total towards ``current`` that keeps them is (wsd: one whose decay is still ahead)."""
    if loop_steps <= 0 or loop_s <= 0:
        return current
    left = budget.seconds - spent_s - budget.closing_s
    want = step + max(1, math.floor(left / (loop_s / loop_steps)))
    want = min(max(want, step + 1), math.floor(REPLAN_MAX * budget.steps))
    if keeps(want):
        return want
    if want > current:
        return current  # a longer run would change the past: the plan stays
    lo, hi = want, current  # keeps(hi): the plan keeps itself. The smallest total in between that keeps
    while hi - lo > 1:  # (a schedule that keeps at T keeps at every longer T up to the plan: wsd's decay moves later)
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if keeps(mid) else (mid, hi)
    return hi


def time_step(cfg: dict[str, Any], rt: Runtime, impl: str, *, steps: int = 3) -> StepTiming:
    """Time the run's training step (a copy of its model, objective and optimizer on random images, so the
    run's own state and random streams are untouched) and an evaluation forward pass.

    One process's step: under DDP the gradient all-reduce is not in it. On CUDA with compile the copy is
    compiled once here; Inductor's on-disk cache then serves the run's own compile of the same graphs."""
    from model.losses.objective import Objective
    from model.metrics import face_ellipse_mask, high_frequency_energy, psnr, region_mse, ssim
    from model.training.step import TrainStep, build_model, make_optimizer
    from model.vae import VAEConfig

    solo = replace(rt, rank=0, world_size=1, sync_batchnorm=False)
    cuda = rt.device.type == "cuda"

    def now() -> float:
        if cuda:
            torch.cuda.synchronize(rt.device)
        return time.perf_counter()

    with torch.random.fork_rng(devices=[rt.device] if cuda else []):
        raw, model = build_model(VAEConfig.from_dict(cfg), solo, impl)
        loss_fn = Objective(cfg, impl=impl, random_perceptual=True, autocast=solo.autocast).to(rt.device)
        params = list(raw.parameters()) + loss_fn.trainable()
        optimizer = make_optimizer([{"params": params}], cfg, rt.device)
        step = TrainStep(model, loss_fn, optimizer, solo.grad_scaler(), device=rt.device, autocast=solo.autocast,
                         grad_clip=cfg["grad_clip"], params=params, lr_table=[cfg["lr"]], beta_table=[1.0],
                         compile_mode=solo.step_compile_mode)
        fmt = torch.channels_last if rt.channels_last else torch.contiguous_format
        side = cfg["image_size"]
        x = torch.rand(cfg["batch_size"], 3, side, side, device=rt.device).contiguous(memory_format=fmt)
        t0 = now()
        step(x), step(x)  # the first steps: allocations, primitives, compile
        first = now() - t0
        times = []
        for _ in range(steps):
            t0 = now()
            step(x)
            times.append(now() - t0)
        step_s = min(times)  # other work only ever adds time: the fastest is the truest
        raw.eval()
        xe = torch.rand(cfg["eval_batch_size"], 3, side, side, device=rt.device).contiguous(memory_format=fmt)
        fwd = []
        with torch.no_grad(), solo.autocast():
            for _ in range(3):  # the first call allocates
                t0 = now()
                raw(xe)
                fwd.append(now() - t0)
        metrics = []
        with torch.no_grad():
            recon, mask = torch.rand_like(xe), face_ellipse_mask(side, side, device=rt.device)
            for _ in range(2):
                t0 = now()
                ssim(recon, xe), psnr(recon, xe), region_mse(recon, xe, mask)
                high_frequency_energy(xe), high_frequency_energy(recon)
                metrics.append(now() - t0)
    n = cfg["eval_batch_size"]
    return StepTiming(step_s, max(first - 2 * step_s, 0.0), min(fwd[1:]) / n, min(metrics) / n)


def resolve_length(cfg: dict[str, Any], rt: Runtime, impl: str, *, steps_per_epoch: int, counts: dict[str, int],
                   explicit: set[str], resuming: bool,
                   timer: Callable[[dict[str, Any], Runtime, str], StepTiming] = time_step
                   ) -> tuple[dict[str, Any], Budget | None, str]:
    """``cfg`` with its length settled: ``steps`` (in all) and ``epochs`` (the passes they start); the
    :class:`Budget` when the budget decided (else None); a line for the run header ("": nothing to say).

    Which decides, first match wins: ``steps`` when set (given, or recorded by an earlier budget in the
    run's config.json); ``epochs`` when given explicitly (command line or a --config file) or when
    ``train_seconds`` is null, or on a resume (a run never re-times itself halfway); else the budget, timed
    on rank 0 (every rank takes its answer). ``counts``: images per split (val, test)."""
    budget = None
    if cfg["steps"] is not None:
        steps, note = cfg["steps"], ""
    elif cfg["train_seconds"] is None or resuming or "epochs" in explicit:
        steps = cfg["epochs"] * steps_per_epoch
        note = (f"train_seconds {cfg['train_seconds']:g} not used: epochs {cfg['epochs']} given"
                if cfg["train_seconds"] is not None and "epochs" in explicit and not resuming else "")
    else:
        timing = from_rank0(lambda: timer(cfg, rt, impl), rt.rank, rt.world_size)
        share = {split: -(-n // rt.world_size) for split, n in counts.items()}  # each rank evaluates its part
        extra = (cfg["eval_iwae_k"] * min(cfg["eval_iwae_images"], share["test"]) + 2 * cfg["eval_samples"]
                 + cfg["n_samples"])
        sizes = dict(steps_per_epoch=steps_per_epoch, val_images=share["val"], test_images=share["test"],
                     extra_eval_images=extra)
        budget = budget_steps(cfg["train_seconds"], timing, **sizes)
        probe = rt.probe if rt.chosen_by.get("compile") == "run length" else None
        if probe is not None and probe.compile_verdict(budget.steps)[0]:
            # decide_compile will turn compile on for this many steps: the budget pays the compile and
            # buys the compiled speed (the probe's figures for both)
            compiled = replace(timing, step_s=timing.step_s / probe.compile_speedup,
                               warmup_s=timing.warmup_s + probe.compile_cost_s)
            budget = budget_steps(cfg["train_seconds"], compiled, **sizes)
        steps, note = budget.steps, budget.describe()
    return {**cfg, "steps": steps, "epochs": math.ceil(steps / steps_per_epoch)}, budget, note
