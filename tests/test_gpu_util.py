"""model.training.observe's CUDA branch, run against a stand-in NVML (no GPU here): which GPU it reads,
what it reports, and that an NVML failure becomes a reason instead of an exception."""
from __future__ import annotations

import sys
import time
import types

import pytest
import torch

from model.training.observe import GpuUtilSampler


class FakeNVML(types.ModuleType):
    """Four GPUs, NVML numbering; each handle replays its own utilization readings."""

    def __init__(self, readings: dict[int, list[float]], fail_init: bool = False):
        super().__init__("pynvml")
        self.readings, self.fail_init, self.inits = readings, fail_init, 0
        self.uuids = {f"GPU-0000000{i}-aaaa-bbbb-cccc-dddddddddddd": i for i in range(4)}

    def nvmlInit(self):
        if self.fail_init:
            raise RuntimeError("NVML Shared Library Not Found")
        self.inits += 1

    def nvmlDeviceGetHandleByIndex(self, i):
        return i

    def nvmlDeviceGetHandleByUUID(self, uuid):
        return self.uuids[uuid]

    def nvmlDeviceGetUtilizationRates(self, handle):
        values = self.readings[handle]
        if not values:
            raise RuntimeError("GPU is lost")
        return types.SimpleNamespace(gpu=values.pop(0) if len(values) > 1 else values[0])


@pytest.fixture
def fake_cuda(monkeypatch):
    """torch sees one GPU, cuda:0, which is NVML's GPU 3 (as under CUDA_VISIBLE_DEVICES=3)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    props = types.SimpleNamespace(uuid="00000003-aaaa-bbbb-cccc-dddddddddddd")
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i=0: props)

    def install(nvml: FakeNVML) -> FakeNVML:
        monkeypatch.setitem(sys.modules, "pynvml", nvml)
        return nvml

    return install


def _sample(sampler: GpuUtilSampler, n: int, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while len(sampler.samples) < n and sampler.reason is None and time.monotonic() < deadline:
        time.sleep(0.005)


def test_reads_the_gpu_torch_uses_not_nvml_index_0(fake_cuda):
    fake_cuda(FakeNVML({0: [5.0], 3: [100.0, 96.0, 40.0, 92.0]}))
    with GpuUtilSampler(0, interval=0.001) as s:
        _sample(s, 4)
    assert s.reason is None and len(s.samples) >= 4
    assert s.samples[:4] == [100.0, 96.0, 40.0, 92.0]  # GPU 3's readings; GPU 0 reads 5 %
    assert s.busy_fraction == pytest.approx(sum(v >= 90 for v in s.samples) / len(s.samples))
    assert s.mean == pytest.approx(sum(s.samples) / len(s.samples))


def test_reset_drops_warm_up_samples(fake_cuda):
    fake_cuda(FakeNVML({3: [0.0, 0.0, 0.0] + [100.0] * 1000}))
    s = GpuUtilSampler(0, interval=0.001)
    s.start()
    _sample(s, 3)
    s.reset()
    _sample(s, 3)
    s.stop()
    assert s.samples and min(s.samples) == 100.0 and s.mean == 100.0


def test_nvml_failures_become_a_reason_not_an_exception(fake_cuda):
    fake_cuda(FakeNVML({3: [50.0]}, fail_init=True))
    with GpuUtilSampler(0) as s:
        pass
    assert s.mean is None and s.busy_fraction is None and "NVML unavailable" in s.reason

    fake_cuda(FakeNVML({3: []}))  # every read fails: the thread stops and says why
    with GpuUtilSampler(0, interval=0.001) as s:
        _sample(s, 1)
    assert s.mean is None and "GPU is lost" in s.reason


def test_without_cuda_it_is_inert():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with GpuUtilSampler() as s:
        pass
    assert s.mean is None and s.reason == "no CUDA device"
