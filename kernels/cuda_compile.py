"""Compile every Triton kernel for an NVIDIA GPU on a machine that has none.

The tests run the kernels under ``TRITON_INTERPRET=1``, which checks their arithmetic but not
that they build: the interpreter executes the kernel body with numpy and accepts code that
Triton's compiler rejects (a loop-carried variable whose type changes, for one; the tests show
it). This module drives the real launchers -- forward and backward of every
autograd.Function, in each dtype and each constexpr branch the wrappers can take -- on CPU
tensors, while a stand-in driver reports a CUDA target (sm_90, the H100, by default) and every
launch becomes a compile-only warm-up. Triton then specializes the arguments as it would on the
GPU and runs its whole compiler chain down to ptxas, so a kernel that would not build on the H100
fails here, with the compiler's own message. Nothing is launched: values are not checked here
(that is what the interpreter tests do).

    python -m kernels.cuda_compile [--arch 90 ...] [--json OUT] [--quick]

``--quick`` builds one launch of each kernel (the fp32 training shapes: reparam + KL forward and backward,
the fused loss and its finalize step), a few seconds where every launch takes about a minute.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import torch

from kernels.impl import interpreting

if interpreting():
    # @triton.jit builds interpreter objects at import time when this is set; they cannot be compiled.
    raise ImportError("kernels.cuda_compile needs TRITON_INTERPRET unset (run it in its own process)")

#: Shared memory one block may use on each architecture (bytes), for the check after compilation.
MAX_SHARED = {80: 163 * 1024, 86: 99 * 1024, 89: 99 * 1024, 90: 227 * 1024, 100: 227 * 1024}


class _CompileOnlyDriver:
    """What ``JITFunction.run`` asks the driver for, without a GPU: a target, a device, a stream."""

    def __init__(self, target: Any):
        self.target = target

    def get_current_target(self) -> Any:
        return self.target

    def get_current_device(self) -> int:
        # Triton keys its per-kernel caches (and the target they were built for) by device, so each
        # architecture gets its own key: sm_80 after sm_90 must not reuse sm_90's binder and cubins.
        return self.target.arch

    def get_current_stream(self, device: int | None = None) -> int:
        return 0


@contextmanager
def compile_only(arch: int) -> Iterator[list[dict[str, Any]]]:
    """Within the block, every ``kernel[grid](...)`` compiles for ``sm_<arch>`` instead of launching.

    Yields the list that receives one record per launch: kernel name, signature and constexprs,
    the compiled kernel's metadata, and the error message where compilation failed."""
    from triton.backends.compiler import GPUTarget
    from triton.runtime.driver import driver
    from triton.runtime.jit import JITFunction

    records: list[dict[str, Any]] = []
    original_run = JITFunction.run

    def run(self, *args, grid, warmup, **kwargs):
        names = [p.name for p in self.params]
        bound = dict(zip(names, args)) | kwargs
        record = {
            "kernel": self.fn.__name__,
            "arch": arch,
            "args": {k: _describe(v) for k, v in bound.items()},
        }
        t0 = time.perf_counter()
        try:
            compiled = original_run(self, *args, grid=grid, warmup=True, **kwargs)
        except Exception as err:  # the compiler's message is the result
            record["error"] = f"{type(err).__name__}: {err}".strip()
            records.append(record)
            return None
        record["seconds"] = time.perf_counter() - t0
        meta = compiled.metadata
        built_for = getattr(getattr(meta, "target", None), "arch", None)
        record["shared_bytes"] = int(getattr(meta, "shared", 0))
        record["num_warps"] = int(getattr(meta, "num_warps", 0))
        limit = MAX_SHARED.get(arch)
        if limit is not None and record["shared_bytes"] > limit:
            record["error"] = f"needs {record['shared_bytes']} B of shared memory; sm_{arch} has {limit} B per block"
        if "cubin" not in compiled.asm:
            record["error"] = "no cubin was produced"
        if built_for != arch:
            record["error"] = f"compiled for sm_{built_for}, not sm_{arch}"
        records.append(record)
        return compiled

    # The previous driver, possibly None (not created yet): reading ``driver.active`` would try
    # to create the real one, which fails where there is no GPU.
    previous = getattr(driver, "_active", None)
    driver.set_active(_CompileOnlyDriver(GPUTarget("cuda", arch, 32)))
    JITFunction.run = run
    try:
        yield records
    finally:
        JITFunction.run = original_run
        driver.set_active(previous)


def _describe(v: Any) -> Any:
    if isinstance(v, torch.Tensor):
        return f"{str(v.dtype).removeprefix('torch.')}{list(v.shape)}"
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    return str(v)


def _cases() -> Iterator[tuple[str, Callable[[], None]]]:
    """(description, call) for every launch shape the wrappers produce in training and in tests."""
    from kernels.ops.reparam_kl import reparam_kl_triton
    from kernels.ops.sse import sigmoid_sse_triton, sse_triton
    from kernels.ops.vae_loss import VAELossFunction, split_beta, vae_loss_fwd

    def leaf(*shape: int, dtype: torch.dtype, channels_last: bool = False) -> torch.Tensor:
        t = torch.rand(*shape, dtype=dtype)
        if channels_last:
            t = t.contiguous(memory_format=torch.channels_last)
        return t.requires_grad_(True)

    dtypes = (torch.float32, torch.bfloat16, torch.float16, torch.float64)
    for dtype in dtypes:
        name = str(dtype).removeprefix("torch.")
        for B, D in ((64, 128), (3, 513)):
            def reparam(B=B, D=D, dtype=dtype, with_eps=False, grads=("z", "kl")):
                h = leaf(B, 2 * D, dtype=dtype)
                mu, logvar = h.chunk(2, dim=1)  # strided rows, as the encoder hands them over
                eps = leaf(B, D, dtype=dtype) if with_eps else None
                z, kl = reparam_kl_triton(mu, logvar, eps)
                outs = [o.float().sum() for o, g in ((z, "z"), (kl, "kl")) if g in grads]
                torch.autograd.backward(outs)

            yield f"reparam_kl {name} B={B} D={D}, in-kernel noise, z+kl grads", reparam
            yield f"reparam_kl {name} B={B} D={D}, given eps", lambda f=reparam: f(with_eps=True)
            yield f"reparam_kl {name} B={B} D={D}, z grad only", lambda f=reparam: f(grads=("z",))
            yield f"reparam_kl {name} B={B} D={D}, kl grad only", lambda f=reparam: f(grads=("kl",))
        for shape, cl in (((64, 3, 64, 64), True), ((5, 3, 7, 9), False)):
            def pair(fn, shape=shape, cl=cl, dtype=dtype):
                a, b = leaf(*shape, dtype=dtype, channels_last=cl), leaf(*shape, dtype=dtype, channels_last=cl)
                fn(a, b).sum().backward()

            yield f"sse {name} {list(shape)}", lambda p=pair: p(sse_triton)
            yield f"sigmoid_sse {name} {list(shape)}", lambda p=pair: p(sigmoid_sse_triton)
            for beta in (1.0, torch.tensor(0.5)):
                def total(shape=shape, cl=cl, dtype=dtype, beta=beta, sigmoid=True):
                    out, x = leaf(*shape, dtype=dtype, channels_last=cl), torch.rand(*shape, dtype=dtype)
                    kl = leaf(shape[0], dtype=torch.float32)
                    beta_t, beta_f = split_beta(beta, out.device)
                    # grad_in_forward=True, the default: fp16 (which always recomputes) builds the backward kernel.
                    loss, rec, klm = VAELossFunction.apply(out, x, kl, beta_t, beta_f, sigmoid, True)
                    loss.backward()

                def evaluate(shape=shape, cl=cl, dtype=dtype, beta=beta):
                    out, x = leaf(*shape, dtype=dtype, channels_last=cl), torch.rand(*shape, dtype=dtype)
                    beta_t, beta_f = split_beta(beta, out.device)
                    with torch.no_grad():
                        vae_loss_fwd(out, x, torch.rand(shape[0]), beta_t, beta_f, True, False)

                kind = "tensor" if isinstance(beta, torch.Tensor) else "float"
                yield f"vae_loss (fused, no grad) {name} {list(shape)}, beta {kind}", evaluate
                yield f"vae_loss (fused) {name} {list(shape)}, beta {kind}", total
                yield f"vae_loss (fused, plain output) {name} {list(shape)}, beta {kind}", \
                    lambda t=total: t(sigmoid=False)


#: The cases of ``--quick``: between them every kernel is launched once, at the training shapes in fp32.
QUICK_CASES = ("reparam_kl float32 B=64 D=128, in-kernel noise, z+kl grads",
               "vae_loss (fused) float32 [64, 3, 64, 64], beta tensor")


def check(archs: tuple[int, ...] = (90,), quick: bool = False) -> list[dict[str, Any]]:
    """Compile every kernel launch of every case (``quick``: of :data:`QUICK_CASES`) for each architecture;
    one record per launch."""
    records: list[dict[str, Any]] = []
    for arch in archs:
        for case, call in _cases():
            if quick and case not in QUICK_CASES:
                continue
            with compile_only(arch) as launches:
                try:
                    call()
                except Exception as err:  # the wrapper itself failed before or after a launch
                    launches.append({"kernel": "(wrapper)", "arch": arch, "error": f"{type(err).__name__}: {err}"})
            if not launches:
                launches.append({"kernel": "(none)", "arch": arch, "error": "the case launched no kernel"})
            for r in launches:
                r["case"] = case
            records.extend(launches)
    return records


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m kernels.cuda_compile", description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", type=int, action="append", default=None,
                   help="compute capability ×10 to compile for (default 90, the H100); repeat for several")
    p.add_argument("--json", default=None, help="write one record per compiled launch here")
    p.add_argument("--quick", action="store_true", help="one launch of each kernel instead of every launch")
    a = p.parse_args(argv)
    archs = tuple(a.arch or [90])
    t0 = time.perf_counter()
    records = check(archs, quick=a.quick)
    failed = [r for r in records if "error" in r]
    if a.json:
        with open(a.json, "w") as fh:
            json.dump(records, fh, indent=2)
    kernels = sorted({(r["kernel"], r["arch"]) for r in records if "error" not in r})
    distinct = len({json.dumps([r["kernel"], r["arch"], r["args"]], sort_keys=True) for r in records if "args" in r})
    print(f"compiled {len(records) - len(failed)} launches ({distinct} distinct signatures) of "
          f"{len({k for k, _ in kernels})} kernels for sm_{', sm_'.join(map(str, archs))} "
          f"in {time.perf_counter() - t0:.1f} s; {len(failed)} failed")
    for r in failed:
        print(f"FAILED sm_{r['arch']} {r['kernel']} [{r['case']}]: {r['error'].splitlines()[0] if r['error'] else ''}",
              file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
