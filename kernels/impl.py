"""Which implementation of the loss ops runs: ``resolve_impl`` is the one place it is chosen.

This module imports no Triton (it only asks whether Triton is installed), so ``import kernels``
works where Triton is missing (macOS, Windows) and every op runs on the torch reference there.
"""
import importlib.util
import os
import sys
from typing import Union

import torch

from .errors import KernelConfigError

IMPLS = ("auto", "triton", "torch")
HAS_TRITON = importlib.util.find_spec("triton") is not None
_noticed: set = set()


def interpreting() -> bool:
    """True when Triton runs kernels in its CPU interpreter (TRITON_INTERPRET=1): correctness only."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def resolve_impl(requested: str, device: Union[str, torch.device]) -> str:
    """"triton" or "torch" for ``requested`` ∈ {"auto", "triton", "torch"} on ``device``.

    "auto": Triton on CUDA; on CPU the torch reference, unless TRITON_INTERPRET=1 is set (then the
    Triton kernels run in the interpreter -- for tests, not speed). A requested "triton" that
    cannot run prints a one-line notice (once per device type) and falls back to "torch".
    """
    if requested not in IMPLS:
        raise KernelConfigError(f"loss implementation must be one of {', '.join(IMPLS)}; got {requested!r}")
    if requested == "torch":
        return "torch"
    dev_type = torch.device(device).type
    if HAS_TRITON and (dev_type == "cuda" or (dev_type == "cpu" and interpreting())):
        return "triton"
    if requested == "triton":
        why = "triton is not installed" if not HAS_TRITON else \
            f"Triton kernels need CUDA (or TRITON_INTERPRET=1 for tests), not {dev_type}"
        _notice_once((dev_type, why), f"notice: loss impl 'triton' unavailable ({why}); using the torch reference")
    return "torch"


def _notice_once(key: tuple, message: str) -> None:
    # Printing inside a graph being compiled would break it; the eager first call prints it.
    if key in _noticed or torch.compiler.is_compiling():
        return
    _noticed.add(key)
    print(message, file=sys.stderr)
