"""Every Triton kernel builds for the H100 (sm_90), checked without a GPU.

The interpreter tests check the kernels' values; these check that Triton's real compiler (down to
ptxas) accepts every launch the wrappers make (the fast tier, ``-m "not slow"``: one launch of each
kernel). They run in a subprocess because the test session sets TRITON_INTERPRET=1, under which
@triton.jit builds interpreter objects instead.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
KERNELS = {"_reparam_kl_fwd_kernel", "_reparam_kl_bwd_kernel", "_sse_kernel", "_finalize_kernel"}

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="Triton's CUDA compiler ships for Linux only")


def _python(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_every_kernel_launch_compiles_for_sm90(tmp_path):
    out = tmp_path / "launches.json"
    done = _python("-m", "kernels.cuda_compile", "--arch", "90", "--json", str(out))
    assert done.returncode == 0, done.stdout + done.stderr
    records = json.loads(out.read_text())
    assert not [r for r in records if "error" in r]
    assert {r["kernel"] for r in records} == KERNELS
    # every dtype reached the kernels, and both constexpr branches of the noise source
    dtypes = {a.split("[")[0] for r in records for a in r["args"].values() if isinstance(a, str) and "[" in a}
    assert {"float32", "bfloat16", "float16", "float64"} <= dtypes
    assert {r["args"]["HAS_EPS"] for r in records if r["kernel"] == "_reparam_kl_fwd_kernel"} == {True, False}


def test_one_launch_of_each_kernel_compiles_for_sm90_then_sm80(tmp_path):
    """The fast tier's share of the check above: each kernel once, for two architectures in one process
    (each must get its own build: a record built for another architecture is an error)."""
    out = tmp_path / "launches.json"
    done = _python("-m", "kernels.cuda_compile", "--quick", "--arch", "90", "--arch", "80", "--json", str(out))
    assert done.returncode == 0, done.stdout + done.stderr
    records = json.loads(out.read_text())
    assert not [r for r in records if "error" in r]
    assert sorted((r["kernel"], r["arch"]) for r in records) == sorted((k, a) for k in KERNELS for a in (90, 80))


_LOOP_TYPE_BUG = textwrap.dedent("""
    import triton
    import triton.language as tl


    @triton.jit
    def total(x_ptr, out_ptr, n, BLOCK: tl.constexpr):
        acc = 0  # an int that the loop turns into a float: Python does not mind, Triton's compiler does
        for start in range(0, n, BLOCK):
            offs = start + tl.arange(0, BLOCK)
            acc += tl.sum(tl.load(x_ptr + offs, mask=offs < n, other=0.0))
        tl.store(out_ptr, acc)
""")


@pytest.mark.slow
def test_a_kernel_only_the_interpreter_accepts_is_reported(tmp_path):
    """The check can fail where the interpreter tests pass: a loop-carried variable that changes type."""
    (tmp_path / "loop_type_bug.py").write_text(_LOOP_TYPE_BUG)
    launch = "total[(1,)](torch.ones(100), out, 100, BLOCK=32)"
    interpreted = _python("-c", textwrap.dedent(f"""
        import os, sys; os.environ["TRITON_INTERPRET"] = "1"; sys.path.insert(0, {str(tmp_path)!r})
        import torch
        from loop_type_bug import total
        out = torch.zeros(1); {launch}; print(float(out))
    """))
    assert interpreted.returncode == 0 and float(interpreted.stdout.split()[-1]) == 100.0, interpreted.stderr
    compiled = _python("-c", textwrap.dedent(f"""
        import sys; sys.path.insert(0, {str(tmp_path)!r})
        import torch
        from kernels.cuda_compile import compile_only
        from loop_type_bug import total
        out = torch.zeros(1)
        with compile_only(90) as launches:
            {launch}
        print(launches[0].get("error", "compiled"))
    """))
    assert compiled.returncode == 0, compiled.stderr
    assert "Loop-carried variable acc" in compiled.stdout


@pytest.mark.slow
def test_each_architecture_gets_its_own_build(tmp_path):
    """Triton caches a kernel's builds per device: sm_80 after sm_90 must be built for sm_80."""
    (tmp_path / "copy_kernel.py").write_text(textwrap.dedent("""
        import triton
        import triton.language as tl


        @triton.jit
        def copy(x_ptr, y_ptr, n, BLOCK: tl.constexpr):
            offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
            tl.store(y_ptr + offs, tl.load(x_ptr + offs, mask=offs < n), mask=offs < n)
    """))
    done = _python("-c", textwrap.dedent(f"""
        import sys; sys.path.insert(0, {str(tmp_path)!r})
        import torch
        from kernels.cuda_compile import compile_only
        from copy_kernel import copy
        for arch in (90, 80):
            with compile_only(arch) as launches:
                copy[(1,)](torch.ones(8), torch.empty(8), 8, BLOCK=8)
            print(arch, launches[0].get("error", "ok"))
    """))
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["90", "ok", "80", "ok"], done.stdout


@pytest.mark.slow
def test_importing_it_under_the_interpreter_is_one_clear_error():
    env_script = "import os; os.environ['TRITON_INTERPRET'] = '1'; import kernels.cuda_compile"
    done = _python("-c", env_script)
    assert done.returncode != 0 and "TRITON_INTERPRET unset" in done.stderr
