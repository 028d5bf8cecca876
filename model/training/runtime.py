"""Where and how training runs: device, torchrun/DDP ranks, AMP dtype, channels_last, compile.

Every "auto" in config.json is resolved here, once, into a :class:`Runtime` that train.py prints
and saves; nothing else in the code looks at the hardware.
"""
from __future__ import annotations

import contextlib
import datetime
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from pipeline.errors import ConfigError


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

    def compiled(self, model: torch.nn.Module) -> torch.nn.Module:
        """``torch.compile(model)`` in this run's mode. "reduce-overhead" replays the step as CUDA
        graphs: at small batches this model is launch-bound, and graphs remove the per-kernel launch
        cost (bench.train_step measures every mode)."""
        return torch.compile(model, mode=None if self.compile_mode == "default" else self.compile_mode)

    def grad_scaler(self) -> torch.amp.GradScaler:
        """A GradScaler that is only enabled for fp16 (bf16 has fp32's range and needs none)."""
        return torch.amp.GradScaler(self.device.type, enabled=self.amp == "fp16")

    def describe(self) -> dict[str, Any]:
        d = asdict(self)
        d["device"] = str(self.device)
        d["device_name"] = torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else _cpu_name()
        return d


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or "cpu"


def cpu_has_native_bf16() -> bool:
    """True when the CPU computes bf16 natively (AVX512-BF16 or AMX); elsewhere bf16 is emulated and slower."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


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
                    device: str | torch.device | None = None) -> Runtime:
    """Turn the config's "auto" values into concrete choices for this machine."""
    if device is None:
        device = torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    device = torch.device(device)
    cuda = device.type == "cuda"

    amp = cfg["amp"]
    if amp == "auto":
        if cuda:
            amp = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        else:
            # Measured here (AVX512-BF16 CPU, batch 64): bf16 autocast + channels_last is 2.2× fp32 eager.
            amp = "bf16" if cpu_has_native_bf16() else "off"
    elif amp == "fp16" and not cuda:
        raise ConfigError("amp 'fp16' needs a CUDA device; use 'bf16' or 'off' on CPU")
    elif amp == "bf16" and cuda and not torch.cuda.is_bf16_supported():
        raise ConfigError("this GPU does not support bf16; use amp 'fp16' (with GradScaler) or 'auto'")

    channels_last = cfg["channels_last"]
    if channels_last == "auto":
        # NHWC feeds tensor cores / oneDNN's bf16 convolutions directly; in fp32 on CPU it does not pay.
        channels_last = cuda or amp != "off"

    compile_ = cfg["compile"]
    if compile_ == "auto":
        # On CPU the default run is too short for compile time to pay back (see README: measured trade-off).
        compile_ = cuda

    sync_bn = bool(cfg["sync_batchnorm"])
    if sync_bn and world_size > 1 and not cuda:
        raise ConfigError("sync_batchnorm needs CUDA (torch's SyncBatchNorm has no CPU kernel); set it to false")
    return Runtime(device, rank, local_rank, world_size, amp, bool(channels_last), bool(compile_),
                   sync_bn and world_size > 1, cfg["compile_mode"])
