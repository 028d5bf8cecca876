"""Train-step throughput on device-resident data: the upper bound the input pipeline is judged against.

Runs the trainer's own step (``model.training.step.train_step``) for every combination of
{eager, torch.compile (default / reduce-overhead / max-autotune)} × {fp32, bf16 AMP} ×
{eager loss, fused Triton loss} × batch size, on one batch that already sits on the device, and
reports images/s, ms/step and an MFU-style line (counted FLOPs ÷ measured matmul peak).

    python -m bench.train_step [--quick] [--batch-sizes 64 256] [--json OUT]
    python -m bench.train_step --graph-breaks   # "graph breaks (torch): N" and "graph breaks (triton): N"
    python -m bench.train_step --ops            # operators dispatched per step: eager, compiled, + fused loss
"""
from __future__ import annotations

import argparse
import itertools
import time
from dataclasses import dataclass
from typing import Any, Callable

import torch

from bench.common import median, print_table, save_json, sync
from pipeline.errors import cli_entry
from pipeline.loader import resolve_device


@dataclass(frozen=True)
class Variant:
    compile: str  # "eager" | "default" | "reduce-overhead" | "max-autotune"
    amp: str  # "off" (fp32) | "bf16"
    loss: str  # "torch" | "triton"
    batch_size: int

    @property
    def label(self) -> str:
        return f"{self.compile}/{'fp32' if self.amp == 'off' else self.amp}/{self.loss}-loss/B{self.batch_size}"


@dataclass
class Harness:
    """A model, optimizer and one step closure for a variant, on device-resident data."""

    step: Callable[[torch.Tensor], Any]
    model: torch.nn.Module
    runtime: Any


def build_harness(v: Variant, device: torch.device, *, image_size: int = 64, seed: int = 0,
                  compile_backend: str = "inductor", compile_update: bool | None = None) -> Harness:
    """The trainer's model + loss + AdamW in its ``TrainStep`` for variant ``v`` (the pieces train.py wires
    together, with train.py's optimizer choice: fused on CUDA, foreach on CPU)."""
    from model.training.step import build_model
    from model.training.runtime import Runtime
    from model.losses.objective import make_loss_fn
    from model.training.step import TrainStep, make_optimizer
    from model.vae import VAEConfig

    torch.manual_seed(seed)
    channels_last = v.amp != "off" or device.type == "cuda"
    rt = Runtime(device, 0, 0, 1, v.amp, channels_last, v.compile != "eager", False,
                 "default" if v.compile == "eager" else v.compile)
    if rt.compile:
        # Each variant compiles from scratch: otherwise dynamo's cache from the previous batch size
        # would make this one dynamic-shaped (slower) and charge its compile to the wrong row.
        torch._dynamo.reset()
    raw, model = build_model(VAEConfig(image_size=image_size), rt, v.loss)
    params = list(raw.parameters())
    cfg = {"lr": 1e-3, "adam_betas": (0.9, 0.999), "weight_decay": 0.0}
    opt = make_optimizer([{"params": params}], cfg, device)
    if compile_update and not opt.defaults.get("fused"):  # the CUDA update, traced on a CPU: fused works there
        opt = torch.optim.AdamW(params, lr=1e-3, fused=True)
    step = TrainStep(model, make_loss_fn(v.loss, False), opt, rt.grad_scaler(), device=device, autocast=rt.autocast,
                     grad_clip=1.0, params=params, lr_table=[1e-3], beta_table=[1.0],
                     compile_mode=rt.step_compile_mode, compile_backend=compile_backend, compile_update=compile_update)
    return Harness(step, raw, rt)


def resident_batch(batch_size: int, device: torch.device, channels_last: bool, image_size: int = 64) -> torch.Tensor:
    """A batch of images in [0, 1] already on the device, laid out like the loader delivers it."""
    g = torch.Generator().manual_seed(1234)
    x = torch.rand(batch_size, 3, image_size, image_size, generator=g).to(device)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def time_variant(v: Variant, device: torch.device, *, warmup: int, steps: int, repeats: int) -> dict[str, Any]:
    """Median images/s over ``repeats`` timed windows of ``steps`` steps, after ``warmup`` steps
    (which include compilation; its time is reported separately)."""
    h = build_harness(v, device)
    x = resident_batch(v.batch_size, device, h.runtime.channels_last)
    t0 = time.perf_counter()
    for _ in range(warmup):
        parts = h.step(x)
    sync(device)
    warmup_s = time.perf_counter() - t0
    windows = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(steps):
            parts = h.step(x)
        sync(device)
        windows.append(time.perf_counter() - t0)
    sec = median(windows)
    loss = float(parts.loss.detach())
    h.step.read_logs()  # the step's own log sums, read as train.py does at a log point
    return {
        "variant": v.label, "compile": v.compile, "amp": v.amp, "loss": v.loss, "batch_size": v.batch_size,
        "images_per_s": v.batch_size * steps / sec, "ms_per_step": 1e3 * sec / steps,
        "warmup_s": warmup_s, "final_loss": loss, "finite": bool(torch.isfinite(torch.tensor(loss))),
    }


#: Display and priority order of the compile modes; the CUDA-graph modes are extra rows (see variants()).
COMPILE_MODES = ("eager", "default", "reduce-overhead", "max-autotune")
#: The batch of the headline target (compile+bf16 vs eager fp32): measured first, so a time budget cuts the others.
HEADLINE_BATCH = 256


def variants(device: torch.device, quick: bool, batch_sizes: list[int] | None) -> tuple[list[Variant], list[dict]]:
    """The grid for this device in priority order, plus the combinations skipped and why.

    The full grid is {eager, compile} × {fp32, bf16} × {torch, triton loss} × batch. On CUDA (not
    --quick) the CUDA-graph modes are tried on top, with bf16 only: reduce-overhead at batches ≤ 256
    (where launch overhead matters) and max-autotune at the headline batch, whose autotuning costs
    minutes per variant."""
    cuda = device.type == "cuda"
    explicit = batch_sizes is not None
    if batch_sizes is None:
        batch_sizes = ([64, 256] if quick else [64, 256, 1024]) if cuda else ([32] if quick else [64, 256])
    batch_sizes = sorted(set(batch_sizes), key=lambda b: (b != HEADLINE_BATCH, b))
    grid = list(itertools.product(["eager", "default"], ["off", "bf16"], ["torch", "triton"], batch_sizes))
    if cuda and not quick:
        small = [b for b in batch_sizes if explicit or b <= HEADLINE_BATCH]
        grid += [("reduce-overhead", "bf16", l, b) for l in ("torch", "triton") for b in small]
        grid += [("max-autotune", "bf16", l, b) for l in ("torch", "triton")
                 for b in (batch_sizes if explicit else [b for b in batch_sizes if b == HEADLINE_BATCH])]
    elif cuda and HEADLINE_BATCH in batch_sizes:  # --quick on CUDA still times the preset's step
        grid += [("reduce-overhead", "bf16", "triton", HEADLINE_BATCH)]

    def priority(g: tuple[str, str, str, int]) -> tuple:
        # on CUDA the GPU preset's step (CUDA graphs + bf16 + fused loss at the headline batch) and its
        # baseline (eager fp32) first; then the headline batch, the smaller batches, the CUDA-graph rows
        # (max-autotune, the slowest to compile, last), then the larger batches
        mode, amp, loss, batch = g
        if cuda and batch == HEADLINE_BATCH and g in (("reduce-overhead", "bf16", "triton", batch),
                                                      ("eager", "off", "torch", batch)):
            return -1, mode != "reduce-overhead"
        if mode in COMPILE_MODES[2:]:
            return 2, COMPILE_MODES.index(mode), batch_sizes.index(batch), amp != "off", loss
        group = 0 if batch == HEADLINE_BATCH else 1 if batch < HEADLINE_BATCH else 3
        return group, batch_sizes.index(batch), COMPILE_MODES.index(mode), amp != "off", loss

    keep, skipped = [], []
    for c, a, l, b in sorted(grid, key=priority):
        v = Variant(c, a, l, b)
        if l == "triton" and not cuda:
            skipped.append({"variant": v.label, "reason": "Triton is a CUDA speed path (interpreter on CPU)"})
        elif c != "eager" and not cuda and quick:
            skipped.append({"variant": v.label, "reason": "--quick on CPU: compile time dominates"})
        else:
            keep.append(v)
    return keep, skipped


def run(quick: bool = False, json_path: str | None = None, device: str | None = None,
        batch_sizes: list[int] | None = None, print_results: bool = True,
        budget_s: float | None = None) -> dict[str, Any]:
    """Time every variant of the grid. With ``budget_s``, variants that would start after that many
    seconds (the first always runs) are listed as skipped instead -- the grid is in priority order,
    the headline batch first -- so the part fits a bounded call on a lent GPU; with ``json_path`` the
    file is rewritten after every variant, so a run cut short keeps what it measured."""
    device = resolve_device(device)
    from model.flops import vae_flops_per_image
    from model.training.observe import measure_matmul_peak
    from model.vae import VAEConfig

    grid, skipped = variants(device, quick, batch_sizes)
    warmup, steps, repeats = (2, 3, 1) if quick else ((10, 30, 3) if device.type == "cuda" else (3, 10, 3))
    fpi = vae_flops_per_image(VAEConfig())
    peaks = {amp: measure_matmul_peak(device, torch.float32 if amp == "off" else torch.bfloat16,
                                      seconds=0.2 if quick else 1.0) for amp in {v.amp for v in grid}}
    settings = {"device": str(device), "quick": quick, "warmup_steps": warmup, "steps": steps, "repeats": repeats,
                "flops_per_image": fpi, "matmul_peak_flops": peaks, "budget_s": budget_s}
    rows, started = [], time.perf_counter()
    for v in grid:
        if budget_s is not None and rows and time.perf_counter() - started > budget_s:
            skipped.append({"variant": v.label, "reason": f"time budget of {budget_s:.0f} s spent"})
            continue
        r = time_variant(v, device, warmup=warmup, steps=steps, repeats=repeats)
        r["mfu"] = fpi * r["images_per_s"] / peaks[v.amp]
        rows.append(r)
        if print_results:
            print(f"  {v.label}: {r['images_per_s']:,.0f} images/s, warm-up {r['warmup_s']:.1f} s", flush=True)
        if json_path:  # a run cut short (a device call's time limit) keeps the rows measured so far
            save_json(json_path, "train_step", {"rows": rows, "skipped": skipped, "complete": False}, settings)
    rows.sort(key=lambda r: (r["batch_size"], COMPILE_MODES.index(r["compile"]), r["amp"] != "off", r["loss"]))
    # The headline ratio the issue asks for: compile+bf16 vs eager fp32 at the largest common batch.
    speedups = {}
    for b in sorted({r["batch_size"] for r in rows}):
        base = next((r for r in rows if (r["compile"], r["amp"], r["loss"], r["batch_size"]) == ("eager", "off", "torch", b)), None)
        if base is None:
            continue
        for r in rows:
            if r["batch_size"] == b:
                r["speedup_vs_eager_fp32"] = r["images_per_s"] / base["images_per_s"]
        compiled_bf16 = [r for r in rows if r["batch_size"] == b and r["compile"] != "eager" and r["amp"] == "bf16"]
        if compiled_bf16:
            speedups[f"compile_bf16_vs_eager_fp32@B{b}"] = max(r["speedup_vs_eager_fp32"] for r in compiled_bf16)
    best = max(rows, key=lambda r: r["images_per_s"]) if rows else None
    results = {"rows": rows, "skipped": skipped, "best": best and best["variant"], "speedups": speedups,
               "complete": True}
    if print_results:
        print_table(
            f"train step on device-resident data ({device})",
            ["variant", "images/s", "ms/step", "× eager fp32", "MFU %", "warm-up s", "loss"],
            [(r["variant"], r["images_per_s"], r["ms_per_step"], r.get("speedup_vs_eager_fp32"),
              100 * r["mfu"], r["warmup_s"], r["final_loss"]) for r in rows],
            caption=(f"{fpi / 1e6:.1f} MFLOP/image fwd+bwd (counted); MFU = FLOPs·images/s ÷ measured matmul peak "
                     + ", ".join(f"{'fp32' if k == 'off' else k} {p / 1e12:.2f} TFLOP/s" for k, p in peaks.items())
                     + (f"; skipped {len(skipped)}: " + "; ".join(sorted({s['reason'] for s in skipped})) if skipped else "")),
        )
    return save_json(json_path, "train_step", results, settings)


def count_graph_breaks(loss: str, device: torch.device, batch_size: int = 8) -> int:
    """Graph breaks Dynamo reports over the whole train step with ``loss`` ("torch" or "triton"): the
    forward + loss graph and the update's graph, as the GPU preset compiles them (reduce-overhead, bf16,
    fused AdamW). On CPU the update is compiled too (fused AdamW runs there), Dynamo traces without code
    generation (backend "eager": graph breaks are Dynamo's decision, whatever backend follows), and the
    Triton loss runs in the interpreter, where its launchers are opaque custom ops instead of triton_ops."""
    from torch._dynamo.utils import counters

    cuda = device.type == "cuda"
    torch._dynamo.reset()
    counters.clear()
    v = Variant("reduce-overhead" if cuda else "default", "bf16", loss, batch_size)
    h = build_harness(v, device, compile_backend="inductor" if cuda else "eager", compile_update=True)
    x = resident_batch(batch_size, device, h.runtime.channels_last)
    for _ in range(3):  # the first steps trace; later ones must reuse the graphs
        h.step(x)
    h.step.read_logs()
    sync(device)
    return sum(counters["graph_break"].values())


def ops_per_step(v: Variant, device: torch.device, steps: int = 3) -> float:
    """Operators dispatched per step, after two warm-up steps: the outermost aten (and the fused loss's own)
    operators in the torch profiler's CPU trace, not what they call inside (a CPU ``_foreach_*`` op loops
    over its tensors; on CUDA it is one multi-tensor launch). The CPU's proxy for kernel launches, which a
    compiled step fuses and a CUDA graph replays."""
    from torch.profiler import ProfilerActivity, profile

    h = build_harness(v, device)
    x = resident_batch(v.batch_size, device, h.runtime.channels_last)
    for _ in range(2):
        h.step(x)
    sync(device)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            h.step(x)
        sync(device)
    def op(e) -> bool:
        return e.name.startswith(("aten::", "celeba_vae::"))

    def outermost(e) -> bool:
        parent = e.cpu_parent
        while parent is not None:
            if op(parent):
                return False
            parent = parent.cpu_parent
        return True

    return sum(1 for e in prof.events() if op(e) and outermost(e)) / steps


def op_counts(device: torch.device, batch_size: int = 64) -> dict[str, float]:
    """:func:`ops_per_step` for eager, compiled, and compiled with the fused loss (fp32, the CPU's AMP off)."""
    cuda = device.type == "cuda"
    mode = "reduce-overhead" if cuda else "default"
    rows = {"eager": Variant("eager", "off", "torch", batch_size),
            "compiled": Variant(mode, "off", "torch", batch_size),
            "compiled + fused loss": Variant(mode, "off", "triton", batch_size)}
    return {name: ops_per_step(v, device) for name, v in rows.items()}


@cli_entry
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.train_step", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="small grid, few steps (a CPU smoke run)")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=None)
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda if available)")
    p.add_argument("--json", default=None, help="write results here")
    p.add_argument("--budget", type=float, default=None, metavar="SECONDS",
                   help="start no new variant after this many seconds (the rest are listed as skipped)")
    p.add_argument("--graph-breaks", action="store_true",
                   help="only count Dynamo's graph breaks over the whole step, per loss implementation")
    p.add_argument("--ops", action="store_true",
                   help="only count the operators dispatched per step (eager, compiled, compiled + fused loss)")
    a = p.parse_args(argv)
    device = resolve_device(a.device)
    if a.graph_breaks or a.ops:
        from kernels.impl import interpreting

        if device.type != "cuda" and not interpreting():
            print("note: the triton rows need TRITON_INTERPRET=1 on a machine without CUDA (set it and rerun)")
        results: dict[str, Any] = {}
        if a.graph_breaks:
            note = "" if device.type == "cuda" else " (CPU: Dynamo's trace without code generation; Triton interpreted)"
            results["graph_breaks"] = {}
            for loss in ("torch", "triton"):
                n = count_graph_breaks(loss, device)
                results["graph_breaks"][loss] = n
                print(f"graph breaks ({loss}): {n}", flush=True)
            print(f"note: whole train step, {device.type}{note}")
        if a.ops:
            results["ops_per_step"] = op_counts(device)
            for name, n in results["ops_per_step"].items():
                print(f"ops per step ({name}): {n:.0f}", flush=True)
        save_json(a.json, "train_step_checks", results, {"device": str(device)})
        return 0
    run(a.quick, a.json, a.device, a.batch_sizes, budget_s=a.budget)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
