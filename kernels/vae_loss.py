"""The VAE loss total, and ``resolve_impl``: the one place the loss implementation is chosen.

    loss = mean_b( SSE_b + β·KL_b ),   rec = mean_b(SSE_b),   kl = mean_b(KL_b)

The fused path lives in ``kernels.fused_total`` (two launches forward, one multiply backward, no
host sync). This module imports no Triton, so ``import kernels`` works where Triton is not
installed (macOS, Windows) and everything runs on the torch reference there.
"""
import sys
from typing import Optional, Tuple, Union

import torch

from pipeline.errors import ConfigError

from .checks import check_kl, check_pair
from .launch import interpreting
from .reference import LossParts, vae_loss_ref

IMPLS = ("auto", "triton", "torch")
_noticed: set = set()


def _triton_importable() -> bool:
    import importlib.util

    return importlib.util.find_spec("triton") is not None


HAS_TRITON = _triton_importable()
if HAS_TRITON:
    from .fused_total import VAELossFunction, vae_loss_fwd


def resolve_impl(requested: str, device: Union[str, torch.device]) -> str:
    """"triton" or "torch" for ``requested`` ∈ {"auto", "triton", "torch"} on ``device``.

    "auto": Triton on CUDA; on CPU the torch reference, unless TRITON_INTERPRET=1 is set (then the
    Triton kernels run in the interpreter -- for tests, not speed). A requested "triton" that
    cannot run prints a one-line notice (once per device type) and falls back to "torch".
    """
    if requested not in IMPLS:
        raise ConfigError(f"loss implementation must be one of {', '.join(IMPLS)}; got {requested!r}")
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


def _split_beta(beta: Union[float, torch.Tensor], device: torch.device) -> Tuple[Optional[torch.Tensor], float]:
    if isinstance(beta, torch.Tensor):
        if beta.numel() != 1:
            raise ConfigError(f"beta must be a number or a 1-element tensor, got shape {tuple(beta.shape)}")
        return beta.reshape(()).to(device=device, non_blocking=True), 0.0
    if isinstance(beta, bool) or not isinstance(beta, (int, float)):
        raise ConfigError(f"beta must be a number or a 1-element tensor, got {type(beta).__name__}")
    return None, float(beta)


def vae_loss(out: torch.Tensor, x: torch.Tensor, kl: torch.Tensor, beta: Union[float, torch.Tensor], *,
             logits: bool = True, impl: str = "auto") -> LossParts:
    """loss = mean_b(SSE_b + β·KL_b) with rec = mean_b(SSE_b) and kl = mean_b(KL_b), 0-dim fp32 each.

    ``out`` are decoder logits (``logits=True``: the sigmoid is applied inside the kernel) or
    images in [0, 1]; ``x`` the targets, same shape; ``kl`` the per-sample KL [B] from
    :func:`kernels.reparam_kl`. ``beta`` may be a float or a 0-dim tensor (a tensor avoids
    recompiles under torch.compile while KL annealing changes it). ``impl``: see
    :func:`resolve_impl`.
    """
    check_pair("out", out, "x", x)
    check_kl(kl, out.shape[0], out.device)
    if resolve_impl(impl, out.device) == "torch":
        return vae_loss_ref(out, x, kl, beta, logits=logits)
    beta_t, beta_f = _split_beta(beta, out.device)
    if not torch.is_grad_enabled():
        return LossParts(*vae_loss_fwd(out, x, kl, beta_t, beta_f, bool(logits), False)[:3])
    return LossParts(*VAELossFunction.apply(out, x, kl, beta_t, beta_f, bool(logits)))
