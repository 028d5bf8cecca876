"""GPU utilization sampled with NVML while work runs: "is my GPU busy?".

NVML's utilization counter is the share of the last sample period in which at least one kernel
ran on the GPU; sampling it from a background thread costs the training loop nothing. Where there
is no GPU or no nvidia-ml-py, the sampler is inert and reports ``None`` — the caller prints "n/a".
"""
from __future__ import annotations

import statistics
import threading
import time
from typing import Optional


def nvml_handle(pynvml, device_index: int):
    """NVML's handle for torch's ``cuda:<device_index>``.

    NVML numbers every GPU in the machine and ignores CUDA_VISIBLE_DEVICES, so under
    ``CUDA_VISIBLE_DEVICES=3`` (or a scheduler that sets it) torch's cuda:0 is NVML's GPU 3:
    the device is matched by UUID, and by index only where torch cannot tell its UUID."""
    import torch

    try:
        uuid = str(torch.cuda.get_device_properties(device_index).uuid)
    except Exception:  # older torch without .uuid, or no device properties
        return pynvml.nvmlDeviceGetHandleByIndex(device_index)
    return pynvml.nvmlDeviceGetHandleByUUID(uuid if uuid.startswith(("GPU-", "MIG-")) else f"GPU-{uuid}")


class GpuUtilSampler:
    """Context manager: samples GPU utilization (%) of ``device_index`` every ``interval`` seconds.

    >>> with GpuUtilSampler() as s:
    ...     run_training_steps()
    >>> s.mean  # None where unmeasurable
    """

    def __init__(self, device_index: int = 0, interval: float = 0.05):
        self.device_index = device_index
        self.interval = interval
        self.samples: list[float] = []
        self._taken = 0  # samples[:_taken] were read by take()
        self.reason: Optional[str] = None
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._handle = None
        self._nvml = None

    def __enter__(self) -> "GpuUtilSampler":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        try:
            import torch

            if not torch.cuda.is_available():
                self.reason = "no CUDA device"
                return
            import pynvml  # provided by nvidia-ml-py

            pynvml.nvmlInit()
            self._nvml = pynvml
            self._handle = nvml_handle(pynvml, self.device_index)
        except ImportError:
            self.reason = "nvidia-ml-py not installed"
            return
        except Exception as err:  # NVML missing in a container, permissions, ...
            self.reason = f"NVML unavailable: {err}"
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="gpu-util-sampler", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.samples.append(float(self._nvml.nvmlDeviceGetUtilizationRates(self._handle).gpu))
            except Exception as err:
                self.reason = f"NVML read failed: {err}"
                return
            time.sleep(self.interval)

    def stop(self) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join(timeout=2)
            self._thread = None

    def reset(self) -> None:
        """Drop samples taken so far (e.g. during warm-up) and keep sampling."""
        self.samples.clear()
        self._taken = 0

    def take(self) -> Optional[float]:
        """Mean of the samples since the last ``take`` (None: none since): one log interval's utilization,
        where :attr:`mean` keeps averaging from the start."""
        end = len(self.samples)  # the thread only appends: what is counted here stays counted
        fresh, self._taken = self.samples[self._taken:end], end
        return statistics.fmean(fresh) if fresh else None

    @property
    def mean(self) -> Optional[float]:
        return statistics.fmean(self.samples) if self.samples else None

    @property
    def busy_fraction(self) -> Optional[float]:
        """Share of samples at ≥ 90 % utilization: how often the GPU was saturated."""
        if not self.samples:
            return None
        return sum(s >= 90 for s in self.samples) / len(self.samples)
