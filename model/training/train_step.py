"""One optimisation step and the schedules around it (learning rate, KL annealing).

Kept apart from train.py so that tests and the DDP check run the very step the trainer runs.
Nothing here synchronises the device: the loss stays a tensor until the caller logs it, and a
non-finite loss is remembered on the device (:class:`NonFiniteWatch`) and checked only at log
intervals and before every checkpoint.
"""
from __future__ import annotations

import math
from typing import Any, Callable

import torch
from torch import nn

from pipeline.errors import UserError


class TrainingDiverged(UserError):
    """The loss became NaN or inf; the run stops and the last good checkpoint is kept."""


def lr_at(step: int, *, lr: float, warmup_steps: int, total_steps: int, schedule: str, min_lr_ratio: float) -> float:
    """Linear warm-up to ``lr``, then constant or cosine decay to ``lr·min_lr_ratio`` at ``total_steps``."""
    if warmup_steps and step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    if schedule == "constant":
        return lr
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return lr * (min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def beta_at(step: int, *, beta: float, warmup_steps: int) -> float:
    """KL annealing: β ramps linearly from 0 at step 0 to ``beta`` at ``warmup_steps``."""
    if warmup_steps <= 0:
        return beta
    return beta * min(1.0, step / warmup_steps)


def make_loss_fn(impl: str, compile_eager: bool) -> Callable[..., Any]:
    """``vae_loss`` bound to the resolved implementation; the eager reference is compiled when asked
    (the Triton path is already one fused kernel)."""
    from functools import partial

    from kernels import vae_loss

    fn = partial(vae_loss, logits=True, impl=impl)
    if impl == "torch" and compile_eager:
        fn = torch.compile(fn, dynamic=False)
    return fn


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
    parts = loss_fn(out.logits, x, out.kl, beta)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(parts.loss).backward()
    if grad_clip > 0:
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(params if params is not None else model.parameters(), grad_clip)
    scaler.step(optimizer)
    scaler.update()
    return parts
