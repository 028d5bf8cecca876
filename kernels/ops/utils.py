"""What the op files share: the Triton accumulator dtype and the launcher wrapper for torch.compile.

Each launcher is registered as a ``torch.library.triton_op`` (namespace ``celeba_vae``): Dynamo
records one node per launch (no graph break), and AOTAutograd then decomposes that node into the
Triton kernel calls themselves, so Inductor sees the kernels, schedules them among its own, and a
CUDA graph of the compiled step captures them like any other kernel. Every launch site reads
``wrap_triton(kernel)[grid](...)``: that is what lets the decomposition trace the launch, and what
torch reads (in the source) to find an op's kernels for its compile cache.

Under ``TRITON_INTERPRET=1`` (CPU tests) ``@triton.jit`` builds interpreter objects, which cannot be
traced with fake tensors: there the launcher is an opaque ``torch.library.custom_op`` with a
hand-written fake implementation instead, the same node to Dynamo, executed eagerly by the
backend. In eager mode the launcher calls its implementation directly: the dispatcher round trip of
a custom op costs microseconds per call, a large share of a loss step that moves only a few MB.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
import triton.language as tl

from ..impl import interpreting

if interpreting():
    def wrap_triton(kernel):
        """Under the interpreter a launch goes straight to the kernel: torch before 2.13 refuses to wrap
        an interpreter object (its wrap_triton checks for JITFunction first), and nothing traces it here."""
        return kernel
else:
    from torch.library import wrap_triton  # noqa: F401  (the op files import it from here)

NAMESPACE = "celeba_vae"


def acc_tl(dtype: torch.dtype):
    """The Triton twin of ``checks.acc_dtype``'s answer: fp64 for fp64 inputs, fp32 otherwise."""
    return tl.float64 if dtype == torch.float64 else tl.float32


def _direct() -> Any:
    """Within it, ``wrap_triton`` hands back the plain kernel: an eager call skips the tracing machinery."""
    from torch._library.triton import set_wrap_triton_enabled

    return set_wrap_triton_enabled(False)


class Launcher:
    """A Triton launcher callable both ways: directly in eager mode, as a registered op under compile."""

    def __init__(self, name: str, impl: Callable[..., Any], fake: Callable[..., Any]):
        self.impl = impl
        self.traceable = not interpreting()
        if self.traceable:
            self.op = torch.library.triton_op(f"{NAMESPACE}::{name}", impl, mutates_args=())
        else:
            self.op = torch.library.custom_op(f"{NAMESPACE}::{name}", impl, mutates_args=())
            self.op.register_fake(fake)

    def __call__(self, *args: Any) -> Any:
        if torch.compiler.is_compiling():
            return self.op(*args)
        with _direct():
            return self.impl(*args)
