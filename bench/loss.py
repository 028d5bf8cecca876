"""Loss-path benchmark: reparam_kl + vae_loss, forward / backward / full step.

    python -m bench.loss [--json OUT] [--quick] [--batch 64 256 ...]

Variants: the eager torch reference, the same reference under ``torch.compile`` (fullgraph,
static shapes), the fused Triton kernels ("fused": gradient written in the forward, the default)
and the fused kernels with the gradient recomputed in the backward ("fused (recompute bwd)"), so
that the default of ``grad_in_forward`` (see ``kernels.ops.sse``) can be checked on real hardware. Shapes are the
training ones: latents B×128, images B×3×64×64; on CUDA mu/logvar/logits are bf16 and the
images fp32 (the AMP case), on CPU everything is fp32.

Times are medians: ``triton.testing.do_bench`` on CUDA, a wall-clock timer on CPU. On CPU Triton
is not a speed path: the fused rows are skipped unless TRITON_INTERPRET=1, and then they time the
interpreter (for correctness runs only, not comparable). Peak memory is the CUDA allocator's peak
above the inputs during one step.

GB/s is measured against the bytes the op must move, counted from its inputs and outputs:
  fwd:  read mu, logvar, logits, x;   write z, kl
  bwd:  read dz, mu, logvar and one logits-sized tensor (the saved state); write dmu, dlogvar, dlogits
  step: fwd + bwd
The fused step moves one logits-sized write+read more than that floor (the gradient stored in the
forward), so its ceiling on this scale is about 10/12 of copy bandwidth with bf16 logits.
The device-to-device copy bandwidth (``dst.copy_(src)``, 256 MiB) is measured in the same run.
"""
from __future__ import annotations

import argparse
import time
from typing import Any, Callable

import torch

from bench.common import median, print_table, save_json, sync, time_repeats
from pipeline.errors import cli_entry
from pipeline.limits import check_count
from pipeline.loader import resolve_device

BATCHES = (64, 256, 1024, 4096)
QUICK_BATCHES = (64, 256)
LATENT = 128
IMAGE = (3, 64, 64)
VARIANTS = ("eager", "compiled", "fused", "fused (recompute bwd)")


def _loss_path(impl: str, grad_in_forward: bool = True) -> Callable[..., tuple[torch.Tensor, torch.Tensor]]:
    from kernels import reparam_kl, vae_loss

    def step(mu, logvar, logits, x, beta):
        z, kl = reparam_kl(mu, logvar, impl=impl)
        return z, vae_loss(logits, x, kl, beta, logits=True, impl=impl, grad_in_forward=grad_in_forward).loss

    return step


def _inputs(B: int, device: torch.device, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    gen = torch.Generator(device=device).manual_seed(B)
    latent = dict(device=device, dtype=dtype, generator=gen)
    return {
        "mu": torch.randn(B, LATENT, **latent).requires_grad_(True),
        "logvar": (0.1 * torch.randn(B, LATENT, **latent)).requires_grad_(True),
        "logits": torch.randn(B, *IMAGE, **latent).requires_grad_(True),
        "x": torch.rand(B, *IMAGE, device=device, generator=gen),
        "dz": torch.randn(B, LATENT, **latent),
        "beta": torch.tensor(1.0, device=device),
    }


def _bytes(B: int, dtype: torch.dtype) -> dict[str, int]:
    s = torch.empty((), dtype=dtype).element_size()
    lat, img = B * LATENT, B * IMAGE[0] * IMAGE[1] * IMAGE[2]
    fwd = 2 * lat * s + img * (s + 4) + lat * s + B * 4
    bwd = 3 * lat * s + img * s + 2 * lat * s + img * s
    return {"fwd": fwd, "bwd": bwd, "step": fwd + bwd}


class _Timer:
    """Median milliseconds: ``triton.testing.do_bench`` on CUDA, perf_counter on CPU. ``setup`` runs
    before each timed call, outside the measurement (the forward that a backward needs)."""

    def __init__(self, device: torch.device, quick: bool):
        self.device = device
        cuda = device.type == "cuda"
        self.warmup, self.reps = (10, 40) if cuda and quick else (25, 200) if cuda else (2, 5) if quick else (2, 9)

    def __call__(self, fn: Callable[..., Any], setup: Callable[[], Any] | None = None) -> float:
        if setup is None and self.device.type == "cuda":
            from triton.testing import do_bench

            return float(do_bench(fn, warmup=self.warmup, rep=self.reps, return_mode="median"))
        if setup is None:
            return 1e3 * median(time_repeats(fn, self.reps, warmup=self.warmup, device=self.device))
        times = []
        for i in range(self.warmup + self.reps):
            state = setup()
            sync(self.device)  # the forward's launches must not overlap (and hide) the backward's
            if self.device.type == "cuda":
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn(state)
                end.record()
                end.synchronize()
                ms = start.elapsed_time(end)
            else:
                t0 = time.perf_counter()
                fn(state)
                ms = 1e3 * (time.perf_counter() - t0)
            if i >= self.warmup:
                times.append(ms)
        return median(times)


def _time_phases(fn, inp: dict[str, torch.Tensor], timer: _Timer) -> dict[str, float]:
    """fwd, bwd (after an untimed forward) and step (both) of ``fn``, median ms each."""
    args = (inp["mu"], inp["logvar"], inp["logits"], inp["x"], inp["beta"])
    wrt = [inp["mu"], inp["logvar"], inp["logits"]]

    def backward(outputs):
        z, loss = outputs
        return torch.autograd.grad([loss, z], wrt, [None, inp["dz"]])

    def step():
        return backward(fn(*args))

    step()  # warm-up: compile / first launches before timing
    return {"fwd": timer(lambda: fn(*args)), "bwd": timer(backward, setup=lambda: fn(*args)), "step": timer(step)}


def _peak_mib(fn, inp: dict[str, torch.Tensor], device: torch.device) -> float | None:
    """CUDA allocator peak above what is allocated before the step (inputs), in MiB."""
    if device.type != "cuda":
        return None
    sync(device)
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    z, loss = fn(inp["mu"], inp["logvar"], inp["logits"], inp["x"], inp["beta"])
    grads = torch.autograd.grad([loss, z], [inp["mu"], inp["logvar"], inp["logits"]], [None, inp["dz"]])
    sync(device)
    del z, loss, grads
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def copy_bandwidth_gbs(device: torch.device, timer: _Timer) -> float:
    """Device-to-device copy bandwidth, read + write bytes per second, in GB/s."""
    n = (64 if device.type == "cuda" else 16) * 2**20 // 4 * 4
    src = torch.empty(n, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    ms = timer(lambda: dst.copy_(src))
    return 2 * src.numel() * 4 / (ms * 1e-3) / 1e9


def run(quick: bool = False, json_path: str | None = None, batches: tuple[int, ...] | None = None) -> dict[str, Any]:
    """Time every variant and phase, print a table, return (and optionally save) the JSON document."""
    from kernels import resolve_impl
    from kernels.impl import interpreting

    device = resolve_device(None)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    if batches is None:
        # Interpreted Triton takes ~0.5 s per B=256 step: quick runs inside the test suite keep to B=64.
        batches = (QUICK_BATCHES[:1] if interpreting() else QUICK_BATCHES) if quick else BATCHES
    timer = _Timer(device, quick)
    fused_ok = resolve_impl("auto", device) == "triton"
    fused_is_speed_path = fused_ok and device.type == "cuda"
    variants = [v for v in VARIANTS if fused_ok or not v.startswith("fused")]
    if quick and device.type == "cpu":
        variants = [v for v in variants if v != "compiled"]  # inductor's C++ build alone exceeds the budget

    copy_gbs = copy_bandwidth_gbs(device, timer)
    rows, results = [], []
    for B in batches:
        inp = _inputs(B, device, dtype)
        need = _bytes(B, dtype)
        per_variant: dict[str, dict[str, Any]] = {}
        for variant in variants:
            fn = _loss_path("torch" if variant in ("eager", "compiled") else "triton",
                            grad_in_forward=variant != "fused (recompute bwd)")
            if variant == "compiled":
                torch._dynamo.reset()
                fn = torch.compile(fn, fullgraph=True, dynamic=False)
            ms = _time_phases(fn, inp, timer)
            peak = _peak_mib(fn, inp, device)
            gbs = {name: need[name] / (ms[name] * 1e-3) / 1e9 for name in ms}
            per_variant[variant] = {"ms": ms, "gb_s": gbs, "peak_mib": peak,
                                    "pct_copy_bw": 100 * gbs["step"] / copy_gbs}
        eager_ms = per_variant["eager"]["ms"]["step"]
        compiled_ms = per_variant.get("compiled", {}).get("ms", {}).get("step")
        for variant, r in per_variant.items():
            r["speedup_vs_eager"] = eager_ms / r["ms"]["step"]
            r["speedup_vs_compiled"] = None if compiled_ms is None else compiled_ms / r["ms"]["step"]
            results.append({"batch": B, "variant": variant, **r})
            rows.append([B, variant, r["ms"]["fwd"], r["ms"]["bwd"], r["ms"]["step"], r["gb_s"]["step"],
                         r["pct_copy_bw"], r["peak_mib"], f"{r['speedup_vs_eager']:.2f}×",
                         None if r["speedup_vs_compiled"] is None else f"{r['speedup_vs_compiled']:.2f}×"])
        del inp

    targets = _targets(results, copy_gbs) if fused_is_speed_path else None
    caption = (f"{device.type}, latents/logits {str(dtype).removeprefix('torch.')}, images float32; "
               f"copy bandwidth {copy_gbs:,.0f} GB/s. ")
    if device.type == "cpu":
        caption += ("CPU: Triton is not a speed path -- fused rows "
                    + ("time the interpreter (correctness only)." if fused_ok else "skipped (set TRITON_INTERPRET=1 "
                                                                                 "to run them, for correctness only)."))
    print_table("Loss path: reparam_kl + vae_loss (median ms)",
                ["B", "variant", "fwd ms", "bwd ms", "step ms", "step GB/s", "% copy BW", "peak MiB",
                 "vs eager", "vs compiled"], rows, caption=caption)
    if targets:
        print_table("H100 targets", ["target", "measured", "goal", "met"],
                    [[t["name"], t["measured"], t["goal"], "yes" if t["met"] else "NO"] for t in targets])
    settings = {"quick": quick, "batches": list(batches), "latent": LATENT, "image": list(IMAGE),
                "dtype": str(dtype), "device": device.type, "variants": variants,
                "fused_is_speed_path": fused_is_speed_path, "copy_bandwidth_gb_s": copy_gbs,
                "timer": "triton.testing.do_bench median" if device.type == "cuda" else "perf_counter median"}
    return save_json(json_path, "loss", {"rows": results, "targets": targets}, settings)


def _targets(results: list[dict[str, Any]], copy_gbs: float) -> list[dict[str, Any]]:
    """The issue's H100 goals, checked against this run."""
    get = {(r["batch"], r["variant"]): r for r in results}
    out = []
    if (256, "fused") in get:
        r = get[(256, "fused")]
        out.append({"name": "B=256 step, fused vs eager", "measured": r["speedup_vs_eager"], "goal": 3.0,
                    "met": r["speedup_vs_eager"] >= 3.0})
        if r["speedup_vs_compiled"] is not None:
            out.append({"name": "B=256 step, fused vs compiled", "measured": r["speedup_vs_compiled"], "goal": 1.2,
                        "met": r["speedup_vs_compiled"] >= 1.2})
    if (4096, "fused") in get:
        pct = get[(4096, "fused")]["pct_copy_bw"]
        out.append({"name": "B=4096 step, % of copy bandwidth", "measured": pct, "goal": 80.0, "met": pct >= 80.0})
    return out


@cli_entry
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.loss", description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", metavar="OUT", help="write the results (with env info) to this JSON file")
    parser.add_argument("--quick", action="store_true", help="B=64 and 256, fewer repeats (< 60 s on CPU)")
    parser.add_argument("--batch", type=int, nargs="+", metavar="B", help=f"batch sizes (default {list(BATCHES)})")
    args = parser.parse_args(argv)
    for batch in args.batch or ():
        check_count("--batch", batch, 1, 65_536, "images per timed call")
    run(args.quick, args.json, tuple(args.batch) if args.batch else None)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
