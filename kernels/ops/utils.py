"""What the op files share: the Triton accumulator dtype and the launcher wrapper for torch.compile.

Each launcher is registered as a ``torch.library.custom_op`` (namespace ``celeba_vae``) so that
Dynamo records one opaque node per launch -- no graph break, no attempt to trace into Triton
(which it cannot do for interpreter-mode kernels on CPU) -- and AOTAutograd gets shapes from the
registered fake implementation. In eager mode the launcher is called directly: the dispatcher
round trip of a custom op costs ~5-10 µs per call, a large share of a loss step that moves only
a few MB at B=256.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
import triton.language as tl

NAMESPACE = "celeba_vae"


def acc_tl(dtype: torch.dtype):
    """The Triton twin of ``checks.acc_dtype``'s answer: fp64 for fp64 inputs, fp32 otherwise."""
    return tl.float64 if dtype == torch.float64 else tl.float32


class Launcher:
    """A Triton launcher callable both ways: directly in eager mode, as a custom op under compile."""

    def __init__(self, name: str, impl: Callable[..., Any], fake: Callable[..., Any]):
        self.impl = impl
        op = torch.library.custom_op(f"{NAMESPACE}::{name}", impl, mutates_args=())
        op.register_fake(fake)
        self.op = op

    def __call__(self, *args: Any) -> Any:
        if torch.compiler.is_compiling():
            return self.op(*args)
        return self.impl(*args)
