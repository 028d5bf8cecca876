"""One optimisation step (the learning-rate and KL schedules live in :mod:`model.training.schedules`).

Kept apart from train.py so that tests and the DDP check run the very step the trainer runs.
Nothing here synchronises the device: the loss stays a tensor until the caller logs it, and a
non-finite loss is remembered on the device (:class:`NonFiniteWatch`) and checked only at log
intervals and before every checkpoint.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

from pipeline.errors import UserError


class TrainingDiverged(UserError):
    """The loss became NaN or inf; the run stops and the last good checkpoint is kept."""


def make_loss_fn(impl: str, compile_eager: bool, *, unpacked: bool = False) -> Callable[..., Any]:
    """The seed's loss, ``vae_loss`` bound to the resolved implementation, called as ``fn(out, x, beta)``
    with the model's output (``unpacked``: as ``fn(logits, x, kl, beta)``). The eager reference is
    compiled when asked (the Triton path is already one fused kernel). ``model.losses.Objective``
    builds on it when config adds terms to the loss."""
    from functools import partial

    from kernels import vae_loss

    fn = partial(vae_loss, logits=True, impl=impl)
    if impl == "torch" and compile_eager:
        fn = torch.compile(fn, dynamic=False)
    if unpacked:
        return fn
    return lambda out, x, beta: fn(out.logits, x, out.kl, beta)


class NonFiniteWatch:
    """Remembers, on the device, the first step whose loss was NaN/inf: no sync per step."""

    def __init__(self, device: torch.device):
        self.first_bad = torch.full((), -1, dtype=torch.long, device=device)

    def observe(self, loss: torch.Tensor, step: int) -> None:
        bad = ~torch.isfinite(loss.detach())
        self.first_bad = torch.where(bad & (self.first_bad < 0), torch.full_like(self.first_bad, step), self.first_bad)

    def check(self, distributed: bool = False) -> int | None:
        """The first bad step so far on any rank, or None (this syncs: call it only at log/checkpoint
        time, on every rank at the same steps)."""
        first_bad = self.first_bad
        if distributed:
            import torch.distributed as dist

            first_bad = first_bad.clone()
            dist.all_reduce(first_bad, op=dist.ReduceOp.MAX)
        step = int(first_bad.item())
        return None if step < 0 else step


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
               x: torch.Tensor, beta: torch.Tensor, *, loss_fn: Callable[..., Any], autocast: Any,
               grad_clip: float, params: list[torch.nn.Parameter] | None = None):
    """Forward under autocast, loss in fp32, backward, clip, optimizer step. Returns LossParts (tensors)."""
    with autocast:
        out = model(x)
    parts = loss_fn(out, x, beta)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(parts.loss).backward()
    if grad_clip > 0:
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(params if params is not None else model.parameters(), grad_clip)
    scaler.step(optimizer)
    scaler.update()
    return parts
