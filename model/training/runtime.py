"""Where and how training runs: device, torchrun/DDP ranks, AMP dtype, channels_last, compile.

Every "auto" in config.json is resolved here, once, into a :class:`Runtime` that train.py prints
and saves; nothing else in the code looks at the hardware. On CUDA "auto" means bf16 (fp16 where
bf16 is missing), channels_last and compile with CUDA graphs ("reduce-overhead"). On CPU, given a ``probe`` (train.py passes
:func:`model.training.probe.probe_step`), amp and channels_last are what a short timing of the real
step found fastest, and compile is decided by :func:`decide_compile` once the run's length is known;
without one (or with ``VAE_NO_PROBE=1``) by the CPU-flag rule below. ``Runtime.note`` says which.
"""
from __future__ import annotations

import contextlib
import datetime
import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import torch

from pipeline.errors import ConfigError

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
    probe: Any = None  # model.training.probe.ProbeResult when a probe of the step decided
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
        """The torch.compile mode of the training step (:class:`model.training.train_step.TrainStep`), or
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

    ``probe(cfg)``, when given, times the step on CPU (:func:`model.training.probe.probe_step`); it runs on
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
            # Measured here (AVX512-BF16 CPU, batch 64): bf16 autocast + channels_last is 2.2× fp32 eager.
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
