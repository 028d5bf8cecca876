"""The schedules of a run: the learning rate and the KL weight β, as plain functions of the step.

Both are pure (no state, no device): train.py asks for the value at each step, so a resumed run gets
exactly the values it would have had, and tests can check them against their formulas.

    lr_at      linear warm-up, then constant or cosine decay (``lr_schedule``)
    beta_at    KL weight: linear warm-up, constant, or cyclical (``kl_schedule``); config_beta_at
               the same with the settings read from a run config
"""
from __future__ import annotations

import math

BETA_SCHEDULES = ("linear", "cyclical", "constant")


def lr_at(step: int, *, lr: float, warmup_steps: int, total_steps: int, schedule: str, min_lr_ratio: float) -> float:
    """Linear warm-up to ``lr``, then constant or cosine decay to ``lr·min_lr_ratio`` at ``total_steps``."""
    if warmup_steps and step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    if schedule == "constant":
        return lr
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return lr * (min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def cycle_start(step: int, *, total_steps: int, cycles: int) -> int:
    """First step of the cycle that ``step`` (0-based) lies in: cycle c starts at ⌊c·T/M⌋.

    Integer arithmetic (no float rounding): c is the largest c < M with ⌊c·T/M⌋ ≤ step. Steps at or
    past ``total_steps`` stay in the last cycle.
    """
    total = max(1, total_steps)
    c = min(cycles - 1, ((step + 1) * cycles - 1) // total)
    return c * total // cycles


def config_beta_at(step: int, cfg: dict, total_steps: int) -> float:
    """:func:`beta_at` with the schedule's settings read from a run's config (train.py's loop, the β panel)."""
    return beta_at(step, beta=cfg["beta"], schedule=cfg["kl_schedule"], warmup_steps=cfg["kl_warmup_steps"],
                   total_steps=total_steps, cycles=cfg["kl_cycles"], ratio=cfg["kl_ratio"])


def beta_at(step: int, *, beta: float, schedule: str, warmup_steps: int, total_steps: int, cycles: int,
            ratio: float) -> float:
    """The KL weight β at ``step`` (0-based) of a run of ``total_steps`` steps.

    ``linear``    β = beta·min(1, step / warmup_steps): a ramp from 0 at step 0 to ``beta`` at
                  ``warmup_steps``, then ``beta`` (``warmup_steps`` 0: ``beta`` throughout).
    ``constant``  β = beta at every step (``warmup_steps`` ignored).
    ``cyclical``  Fu et al. 2019, "Cyclical Annealing Schedule: A Simple Approach to Mitigating KL
                  Vanishing" (NAACL), with the linear ramp f(τ) = τ/R: the T = ``total_steps`` steps
                  are split into M = ``cycles`` cycles of length L = T/M; within a cycle

                      τ = (step mod L) / L,        β = beta · min(1, τ / R),   R = ``ratio``,

                  so β rises linearly from 0 over the first R·L steps of each cycle and then holds
                  ``beta`` to the cycle's end. When M does not divide T, cycle c starts at the integer
                  step ⌊c·L⌋ and ``step mod L`` means ``step − ⌊c·L⌋`` (as in the authors' reference
                  code, ``frange_cycle_linear`` in github.com/haofuml/cyclical_annealing): the first
                  step of every cycle has β = 0 exactly. When M divides T this is the formula as written.
    """
    if schedule == "constant":
        return beta
    if schedule == "linear":
        if warmup_steps <= 0:
            return beta
        return beta * min(1.0, step / warmup_steps)
    if schedule == "cyclical":
        if cycles < 1 or not 0 < ratio <= 1:
            raise ValueError(f"cyclical KL schedule needs cycles >= 1 and ratio in (0, 1], got {cycles}, {ratio}")
        total = max(1, total_steps)
        tau = (step - cycle_start(step, total_steps=total, cycles=cycles)) * cycles / total  # (step mod L) / L
        return beta * min(1.0, tau / ratio)
    raise ValueError(f"unknown KL schedule {schedule!r}; expected one of {', '.join(BETA_SCHEDULES)}")
