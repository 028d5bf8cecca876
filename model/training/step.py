"""The optimisation step and what it is built from: the network as a run places it (build_model),
the learning-rate and KL schedules (lr_at, beta_at), and TrainStep, the step itself, built for the GPU.

Sections (each keeps the notes of the module it was):

    train_step       the step, built for the GPU: nothing in it waits for the device; when the loop logs
                     (Cadence), checkpoints and stops (CheckpointPolicy)
    build            the network as a run uses it: from config, on the device, in DDP
    schedules        the learning rate and the KL weight β as plain functions of the step
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
from torch import nn

from model.vae import ConvVAE, VAEConfig
from pipeline.errors import UserError


# ====================================================================================================
# train_step
# The optimisation step, built for the GPU: nothing in it waits for the device.
#
#     step = TrainStep(model, loss_fn, optimizer, scaler, rt=rt, ...)
#     step(x)                  # forward + loss, backward, clip, AdamW, NaN watch, log sums: all queued
#     step.read_logs()         # at a log point only: exact means since the last read (one host read)
#
# Kept apart from train.py so that the probe, the benchmarks, the DDP check and the tests run the very
# step the trainer runs.
#
# What stays on the device between log points: the step counter, the learning rate and β (read from
# schedule tables indexed by that counter, so neither a schedule nor a changing value recompiles
# anything or copies from the host), the first step whose loss was NaN/inf, and the sums of every
# logged value. On CUDA with compile on, the step is three CUDA graphs under ``reduce-overhead``:
#
# 1. forward + loss (the fused Triton kernels are ``triton_op``s, so Inductor sees them in the graph);
# 2. its backward (AOTAutograd's; the autograd engine launches it, outside Dynamo, hence a graph of
#    its own);
# 3. the update's preparation: gradient clipping, the NaN watch, the log sums, this step's lr and the
#    next step's β.
#
# Outside any graph, per step: ``zero_grad(set_to_none=True)`` (Python only: the backward graph
# writes fresh gradients), the call of ``backward()`` and the fused AdamW step, which torch itself
# keeps out of Dynamo (``torch.compiler.disable``: "don't trace into fused optimizer"); it is one
# multi-tensor kernel launch per few dozen parameter tensors, reading lr from the device. With fp16 (GPUs without bf16) the update runs
# eagerly: GradScaler keeps Python-side state per step that a graph would freeze. On CPU the update is
# eager too (no launch cost to remove) and AdamW keeps ``foreach`` with a host learning rate (the
# foreach kernels take a tensor lr only with ``capturable``, which CPUs lack).
# ====================================================================================================
class TrainingDiverged(UserError):
    """The loss became NaN or inf; the run stops and the last good checkpoint is kept."""


def optimizer_options(device: torch.device) -> dict[str, Any]:
    """AdamW's implementation for ``device``: one fused kernel for every parameter on CUDA (its step
    counters stay on the device, and it takes the learning rate as a device tensor); foreach on CPU."""
    return {"fused": True} if device.type == "cuda" else {"foreach": True}


def update_in_graph(device: torch.device, *, fused: bool, scaling: bool) -> bool:
    """Whether the update's preparation (clip, NaN watch, log sums, lr and β) is compiled, and so captured
    as a CUDA graph under reduce-overhead: on CUDA with the fused AdamW (lr on the device) and no
    GradScaler (fp16's scaler keeps per-step Python state that a graph would freeze)."""
    return device.type == "cuda" and fused and not scaling


def make_optimizer(groups: list[dict[str, Any]], cfg: dict[str, Any], device: torch.device) -> torch.optim.AdamW:
    """The run's AdamW (lr is set per step by :class:`TrainStep`)."""
    opts = optimizer_options(device)
    lr: float | torch.Tensor = float(cfg["lr"])
    if opts.get("fused"):
        lr = torch.tensor(lr, dtype=torch.float32, device=device)  # written in place by the update
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(cfg["adam_betas"]), weight_decay=cfg["weight_decay"], **opts)


def _extra(parts) -> dict[str, torch.Tensor]:
    """The terms an Objective adds (LossTerms.extra); none for the bare seed loss (LossParts)."""
    return getattr(parts, "extra", {})


class LossModule(nn.Module):
    """The network and its objective as one module: what the compiled forward graph holds."""

    def __init__(self, model: nn.Module, loss_fn: Callable[..., Any], autocast: Callable[[], Any]):
        super().__init__()
        self.model = model
        self.loss_fn = loss_fn
        self.autocast = autocast

    def forward(self, x: torch.Tensor, beta: torch.Tensor):
        with self.autocast():  # the network in the AMP dtype; the loss reads its logits in fp32
            out = self.model(x)
        return self.loss_fn(out, x, beta)


class TrainStep:
    """One optimisation step (see the module docstring). ``lr_table``/``beta_table`` hold the
    schedules' value at every step of the run (:mod:`model.training.step`), ``start_step`` is
    where this process begins (a resumed run's checkpoint step)."""

    def __init__(self, model: nn.Module, loss_fn: Callable[..., Any], optimizer: torch.optim.Optimizer,
                 scaler: torch.amp.GradScaler, *, device: torch.device, autocast: Callable[[], Any],
                 grad_clip: float, params: Sequence[nn.Parameter], lr_table: Sequence[float],
                 beta_table: Sequence[float], start_step: int = 0, compile_mode: str | None = None,
                 distributed: bool = False, compile_backend: str = "inductor", compile_update: bool | None = None):
        self.optimizer, self.scaler, self.grad_clip = optimizer, scaler, float(grad_clip)
        self.params = list(params)
        self.device = device
        self.distributed = distributed
        self.lr_host = [float(v) for v in lr_table]
        self.step = int(start_step)  # the host's count; the device keeps its own (step_t)
        self.forward: Callable[..., Any] = LossModule(model, loss_fn, autocast)
        self.compiled = compile_mode is not None
        # compile_backend "eager" (Dynamo's trace, no code generation) is for counting graph breaks on CPU.
        options = {"backend": compile_backend} if compile_backend != "inductor" else \
            {"mode": None if compile_mode == "default" else compile_mode}
        if self.compiled:
            self.forward = torch.compile(self.forward, **options)
        # Fused AdamW reads lr from the device; foreach (CPU) takes a host float. A checkpoint from the other
        # kind of run may have brought the other kind of lr.
        self.lr_on_device = bool(optimizer.defaults.get("fused"))
        for group in optimizer.param_groups:
            lr = float(group["lr"])
            group["lr"] = torch.tensor(lr, dtype=torch.float32, device=device) if self.lr_on_device else lr
        self.scaling = scaler.is_enabled()
        last = len(self.lr_host) - 1
        dev = dict(device=device)
        self.lr_table = torch.tensor(self.lr_host, dtype=torch.float32).to(**dev) if self.lr_on_device else None
        self.beta_table = torch.tensor([float(v) for v in beta_table], dtype=torch.float32).to(**dev)
        self.step_t = torch.full((), self.step, dtype=torch.long, **dev)
        self.beta_t = self.beta_table[min(self.step, last)].clone()  # the first step's; then _prepare's
        self.first_bad = torch.full((), -1, dtype=torch.long, **dev)
        self.sums: torch.Tensor | None = None  # loss, rec, kl, extra terms: allocated at the first step
        self.names: list[str] = []
        self._allocated = False
        self.count = 0  # steps summed since the last read (the host knows it: no device counter needed)
        self._last = last
        self._static = [t for t in (self.step_t, self.beta_t, self.first_bad, self.lr_table, self.beta_table)
                        if t is not None] + [g["lr"] for g in optimizer.param_groups if self.lr_on_device]
        if compile_update is None:
            compile_update = update_in_graph(device, fused=self.lr_on_device, scaling=self.scaling)
        self.prepare: Callable[..., None] = self._prepare
        if self.compiled and compile_update:
            self.prepare = torch.compile(self._prepare, **options)

    # ------------------------------------------------------------------ the step
    def __call__(self, x: torch.Tensor):
        """One step on batch ``x``; returns the loss terms (device tensors, not to be read per step)."""
        parts = self.forward(x, self.beta_t)
        if not self._allocated:
            self._allocate(parts)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(parts.loss).backward()
        if not self.lr_on_device:
            lr = self.lr_host[min(self.step, self._last)]
            for group in self.optimizer.param_groups:
                group["lr"] = lr
        self.prepare(parts.loss.detach(), parts.rec.detach(), parts.kl.detach(),
                     *(v.detach() for v in _extra(parts).values()))
        # Outside the graphs: torch keeps the fused AdamW out of Dynamo (compiler.disable); it is one
        # multi-tensor kernel over every parameter, reading lr from the device.
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.step += 1
        self.count += 1
        return parts

    def _allocate(self, parts) -> None:
        names = ["loss", "rec", "kl", *_extra(parts)]
        if self.sums is None or names != self.names:  # else: restored from a checkpoint (load_log_state)
            self.names, self.count = names, 0
            self.sums = torch.zeros(len(self.names), dtype=torch.float32, device=self.device)
        self._allocated = True
        if self.compiled:
            # Tensors the graphs read or write in place: static, so CUDA graphs neither copy them per
            # replay nor refuse a graph for mutating an input.
            for t in (*self._static, self.sums):
                torch._dynamo.mark_static_address(t)

    def _prepare(self, loss: torch.Tensor, rec: torch.Tensor, kl: torch.Tensor, *extra: torch.Tensor) -> None:
        """Everything of the update but AdamW itself: clip, NaN watch, log sums, this step's lr and
        the next step's β. No Python state changes here, so that a graph of it replays exactly."""
        if self.grad_clip > 0:
            if self.scaling:
                self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.params, self.grad_clip, foreach=True)
        bad = ~torch.isfinite(loss)
        self.first_bad.copy_(torch.where(bad & (self.first_bad < 0), self.step_t, self.first_bad))
        self.sums.add_(torch.stack([loss, rec, kl, *extra]).float())
        if self.lr_on_device:
            lr = self._at(self.lr_table, self.step_t)
            for group in self.optimizer.param_groups:
                group["lr"].copy_(lr)
        self.step_t.add_(1)
        self.beta_t.copy_(self._at(self.beta_table, self.step_t))

    def _at(self, table: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
        """``table[step]`` for a device step counter, as a gather (plain indexing by a 0-dim tensor would
        read the index on the host)."""
        return table.index_select(0, step.clamp(max=self._last).reshape(1)).reshape(())

    # ------------------------------------------------------------------ log points
    def read_logs(self, seconds: float = 0.0) -> tuple[dict[str, float], int | None, float]:
        """(the mean of every logged value over the steps since the last read, the first step whose loss
        was NaN/inf or None, ``seconds`` averaged over the ranks): the one host read of a log point.
        Under DDP every rank calls it at the same steps; the means are the global batch's, the NaN step
        any rank's, and the seconds (each rank's time since its last log point) the same on every rank,
        so that decisions taken from them (:class:`Cadence`) agree."""
        n = max(self.count, 1)
        sums = torch.zeros(0, device=self.device) if self.sums is None else self.sums / n
        packed = torch.cat([sums.double(), torch.tensor([seconds], dtype=torch.float64).to(self.device)])
        first_bad = self.first_bad.clone()
        if self.distributed:
            import torch.distributed as dist

            dist.all_reduce(packed)
            packed /= dist.get_world_size()
            dist.all_reduce(first_bad, op=dist.ReduceOp.MAX)
        values = torch.cat([packed, first_bad.double().reshape(1)]).tolist()  # the one sync
        if self.sums is not None:
            self.sums.zero_()
        self.count = 0
        bad = int(values[-1])
        means = dict(zip(self.names, values[:-2])) if self.names else {}
        return means, (None if bad < 0 else bad), values[-2]

    def log_state(self) -> dict[str, Any]:
        """The sums since the last log point, for the checkpoint: a resumed run's next log point then
        averages the same steps as an uninterrupted run's."""
        return {"names": list(self.names), "sums": self.sums, "count": self.count}

    def load_log_state(self, state: dict[str, Any] | None) -> None:
        if not state or state.get("sums") is None:
            return
        self.names = list(state["names"])
        self.sums = state["sums"].to(device=self.device, dtype=torch.float32).clone()
        self.count = int(state["count"])

    def first_bad_step(self) -> int | None:
        """The first step whose loss was NaN/inf on any rank, or None (a host read: before a checkpoint,
        which must never keep a diverged state, and at log points through :meth:`read_logs`)."""
        first_bad = self.first_bad.clone()
        if self.distributed:
            import torch.distributed as dist

            dist.all_reduce(first_bad, op=dist.ReduceOp.MAX)
        bad = int(first_bad.item())
        return None if bad < 0 else bad

    def lr_at(self, step: int) -> float:
        """The learning rate step ``step`` ran with (host side, for the logs)."""
        return self.lr_host[min(step, self._last)]

    def set_schedules(self, lr_table: Sequence[float], beta_table: Sequence[float]) -> None:
        """New schedule values (a budget's re-plan), written into the tables in place: the same length, the
        same device tensors, so that compiled code and captured graphs read them without a recompile."""
        if len(lr_table) != len(self.lr_host) or len(beta_table) != self.beta_table.numel():
            raise ValueError(f"schedule tables of {len(lr_table)}/{len(beta_table)} steps for a step built "
                             f"with {len(self.lr_host)}")
        self.lr_host = [float(v) for v in lr_table]
        if self.lr_table is not None:
            self.lr_table.copy_(torch.tensor(self.lr_host, dtype=torch.float32), non_blocking=True)
        self.beta_table.copy_(torch.tensor([float(v) for v in beta_table], dtype=torch.float32), non_blocking=True)



#: The fewest steps between two log points of a time-based cadence (and before the first, whose step time then
#: sets the next interval): where a step takes more than log_every_s / 10 (a slow CPU), logs come every 10
#: steps, so the loop never reads the device more than once per 10 steps.
MIN_LOG_STEPS = 10


class Cadence:
    """When the loop logs and checkpoints: logs every ``log_every_s`` seconds but at most every
    :data:`MIN_LOG_STEPS` steps (or every ``log_interval`` steps), and at every epoch's end; checkpoints fall due
    every ``checkpoint_every_s`` seconds and/or ``checkpoint_interval`` steps (:class:`CheckpointPolicy` decides
    when they are written, with the other reasons to write one).

    Under DDP the ranks must log and checkpoint at the same steps (both take collectives) though their
    clocks differ, so seconds become steps: at each log point the step time measured since the previous
    one (averaged over the ranks by :meth:`TrainStep.read_logs`) sets how many steps the next interval
    has, and the time towards a checkpoint adds up those same averaged seconds. A single process runs
    the same arithmetic."""

    def __init__(self, cfg: dict[str, Any], start_step: int):
        self.log_steps = cfg["log_interval"]  # None: by time
        self.log_s = float(cfg["log_every_s"])
        self.ckpt_s = float(cfg["checkpoint_every_s"])
        self.ckpt_steps = int(cfg["checkpoint_interval"])
        self.last_log = start_step
        # By steps, log points are the multiples of log_interval, wherever a resumed run starts.
        self.next_log = (start_step // self.log_steps + 1) * self.log_steps if self.log_steps else \
            start_step + MIN_LOG_STEPS
        self.since_checkpoint = 0.0  # seconds, counted at log points

    def log_due(self, step: int, last_batch: bool) -> bool:
        return last_batch or step >= self.next_log

    def logged(self, step: int, seconds: float) -> None:
        """A log point at ``step``, ``seconds`` (agreed by the ranks) after the previous one."""
        per_step = seconds / max(1, step - self.last_log)
        interval = self.log_steps or max(MIN_LOG_STEPS, round(self.log_s / per_step) if per_step > 0 else 0)
        self.last_log, self.next_log = step, step + interval
        self.since_checkpoint += seconds

    def checkpoint_due(self, step: int, logged: bool) -> bool:
        by_steps = bool(self.ckpt_steps) and step % self.ckpt_steps == 0
        by_time = logged and self.ckpt_s > 0 and self.since_checkpoint >= self.ckpt_s
        return by_steps or by_time

    def checkpointed(self) -> None:
        self.since_checkpoint = 0.0


class CheckpointPolicy:
    """When the loop writes last.pt and when it stops, in one place. Each answer is ``None``, ``"save"`` or
    ``"stop"`` (save, then stop), and the same on every rank (signals are agreed through ``stop``, the rest
    is arithmetic on numbers the ranks share):

    * time or steps (``checkpoint_every_s``, ``checkpoint_interval``, counted by :class:`Cadence`): at once,
      except in an epoch's last step, whose checkpoint waits for the epoch's end (validated, with best.pt);
    * a stop signal: at once, in whatever step it lands, then stop. A stop never waits for a validation (a
      scheduler's grace period may be short): the epoch's end is left to the resumed run;
    * ``stop_at_step``: at once, then stop; in an epoch's last step, at the epoch's end (validated);
    * the end of the last epoch.
    """

    SAVE, STOP = "save", "stop"

    def __init__(self, cfg: dict[str, Any], cadence: Cadence, stop: Any):
        self.cadence, self.stop = cadence, stop  # stop: model.training.signals.StopSignals
        self.stop_at, self.epochs = cfg["stop_at_step"], cfg["epochs"]
        self.pending = False  # a checkpoint fell due in an epoch's last step: written at the epoch's end
        self.stopped_early = False  # before the last epoch's end (summary.json's stopped_early)

    def after_step(self, step: int, *, logged: bool, last_batch: bool) -> str | None:
        """After every training step, on every rank (the ranks agree on signals here)."""
        signalled = self.stop.should_stop(step, force=logged)
        if signalled or (self._stop_step(step) and not last_batch):
            self.stopped_early = True
            return self._saving(self.STOP)
        if self.cadence.checkpoint_due(step, logged):
            if last_batch:
                self.pending = True
                return None
            return self._saving(self.SAVE)
        return None

    def at_epoch_end(self, step: int, epochs_done: int) -> str | None:
        """After the validation of the epoch that makes ``epochs_done``."""
        if self.stop.should_stop(step, force=True) or self._stop_step(step):
            self.stopped_early = epochs_done < self.epochs
            return self._saving(self.STOP)
        return self._saving(self.SAVE) if self.pending or epochs_done == self.epochs else None

    def validation_cut(self, step: int) -> str:
        """A signal cut the validation short: last.pt at the epoch's last step (the epoch unfinished), then stop."""
        self.stop.should_stop(step, force=True)
        self.stopped_early = True
        return self._saving(self.STOP)

    def signalled(self, step: int) -> int | None:
        """The signal the run stops for after the loop, if any. The second look catches one that came after
        the loop's last (it set the flag, but nothing read it): last.pt already holds this step."""
        if self.stop.agreed or self.stop.should_stop(step, force=True):
            return self.stop.agreed
        return None

    def _stop_step(self, step: int) -> bool:
        return bool(self.stop_at and step >= self.stop_at)

    def _saving(self, answer: str) -> str:
        self.pending = False
        self.cadence.checkpointed()
        return answer


# ====================================================================================================
# build
# The network as a run uses it: built from config, placed on the device in the run's memory format,
# wrapped in DDP as the runtime says. train.py and the train-step benchmark both
# build it here, so what the benchmark measures is what training runs.
# ====================================================================================================
@dataclass
class Training:
    """What trains: the network (``raw``; ``model`` is what the step calls, under DDP when distributed), its
    objective, the optimizer and its GradScaler, and the loss implementation they run."""

    raw: ConvVAE
    model: nn.Module
    loss_fn: Any
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    impl: str

    @property
    def params(self) -> list[nn.Parameter]:
        """Every trained parameter: the network's and the objective's (the learned σ)."""
        return list(self.raw.parameters()) + self.loss_fn.trainable()


def build_training(cfg: dict[str, Any], rt: "Runtime", *, download: bool = False) -> Training:
    """The network, its objective and AdamW as train.py runs them. The objective comes first, so that a missing
    VGG weights file ends the run before anything else is built or read."""
    from kernels import resolve_impl
    from model.losses.objective import Objective

    impl = resolve_impl(cfg["loss_impl"], rt.device)
    # SSE + β·KL through the fused kernels, plus what config adds (σ-VAE, free bits, perceptual, SSIM)
    loss_fn = Objective(cfg, impl=impl, download_weights=download, autocast=rt.autocast).to(rt.device)
    torch.manual_seed(cfg["seed"])  # identical initial weights on every rank
    raw, model = build_model(cfg, rt, impl)
    groups = [{"params": list(raw.parameters())}]
    if loss_fn.trainable():  # the learned σ: no weight decay towards σ = 0
        groups.append({"params": loss_fn.trainable(), "weight_decay": 0.0})
    return Training(raw, model, loss_fn, make_optimizer(groups, cfg, rt.device), rt.grad_scaler(), impl)


def build_model(vae_cfg: VAEConfig | dict[str, Any], rt: "Runtime", loss_impl: str) -> tuple[ConvVAE, nn.Module]:
    """(raw, model): ``raw`` is the ConvVAE itself (checkpoints, evaluation, pictures); ``model`` is
    what the training step calls (``raw``, under DDP when distributed). The step compiles it together
    with the loss (:class:`model.training.step.TrainStep`)."""
    raw = ConvVAE(vae_cfg if isinstance(vae_cfg, VAEConfig) else VAEConfig.from_dict(vae_cfg), loss_impl=loss_impl)
    if rt.sync_batchnorm:
        raw = nn.SyncBatchNorm.convert_sync_batchnorm(raw)
    raw = raw.to(rt.device, memory_format=torch.channels_last if rt.channels_last else torch.contiguous_format)
    model: nn.Module = raw
    if rt.distributed:
        from torch.nn.parallel import DistributedDataParallel as DDP

        model = DDP(raw, device_ids=[rt.local_rank] if rt.device.type == "cuda" else None)
    return raw, model


# ====================================================================================================
# schedules
# The schedules of a run: the learning rate and the KL weight β, as plain functions of the step.
#
# Both are pure (no state, no device): train.py asks for the value at each step, so a resumed run gets
# exactly the values it would have had, and tests can check them against their formulas.
#
#     lr_at      linear warm-up, then constant, cosine decay or stable-then-linear decay (``lr_schedule``)
#     beta_at    KL weight: linear warm-up, constant, or cyclical (``kl_schedule``); config_beta_at
#                the same with the settings read from a run config
# ====================================================================================================
BETA_SCHEDULES = ("linear", "cyclical", "constant")


def lr_at(step: int, *, lr: float, warmup_steps: int, total_steps: int, schedule: str, min_lr_ratio: float,
          decay_ratio: float = 1.0) -> float:
    """Linear warm-up to ``lr``, then: constant; cosine decay to ``lr·min_lr_ratio`` at ``total_steps``; or
    "wsd" (warm-up, stable, decay): ``lr`` until the last ``decay_ratio`` of the steps after the warm-up, then a
    linear decay to ``lr·min_lr_ratio`` at ``total_steps``."""
    if warmup_steps and step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    if schedule == "constant":
        return lr
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    if schedule == "wsd":
        decay = min(1.0, max(0.0, (progress - (1 - decay_ratio)) / decay_ratio))
        return lr * (1 - (1 - min_lr_ratio) * decay)
    return lr * (min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def schedule_tables(cfg: dict, total_steps: int, length: int | None = None) -> tuple[list[float], list[float]]:
    """The lr and β of the first ``length`` steps (default ``total_steps``) of a ``total_steps`` run, as the step
    reads them from the device; past ``total_steps`` both hold their last value, room for a budget's re-plan to
    lengthen the run."""
    shape = dict(lr=cfg["lr"], warmup_steps=cfg["warmup_steps"], total_steps=total_steps,
                 schedule=cfg["lr_schedule"], min_lr_ratio=cfg["min_lr_ratio"], decay_ratio=cfg["lr_decay_ratio"])
    steps = [min(s, total_steps - 1) for s in range(total_steps if length is None else length)]
    return [lr_at(s, **shape) for s in steps], [config_beta_at(s, cfg, total_steps) for s in steps]


def schedules_agree(cfg: dict, total_a: int, total_b: int, upto: int) -> bool:
    """Whether runs of ``total_a`` and ``total_b`` steps give steps 0..``upto`` the same lr and β (a re-plan at
    step ``upto`` must not change a value a step already ran with, or the β the next one has been handed)."""
    if min(total_a, total_b) <= upto:
        return False
    return schedule_tables(cfg, total_a, upto + 1) == schedule_tables(cfg, total_b, upto + 1)


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
