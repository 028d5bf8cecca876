"""kernels.vae_loss (fused) against the reference; resolve_impl; the loss path under torch.compile."""
import importlib

import pytest
import torch

from kernels import LossParts, reparam_kl, resolve_impl, sigmoid_sse, vae_loss
from kernels.launch import interpreting
from kernels.reference import reparam_kl_ref, vae_loss_ref
from pipeline.errors import ConfigError

# The function kernels.sse / kernels.vae_loss shadow the modules of the same name on the package.
sse_module = importlib.import_module("kernels.sse")
vae_loss_module = importlib.import_module("kernels.vae_loss")

DEVICES = (["cpu"] if interpreting() else []) + (["cuda"] if torch.cuda.is_available() else [])
needs_triton_path = pytest.mark.skipif(not DEVICES, reason="no CUDA and TRITON_INTERPRET unset")

TOL = {torch.float32: dict(rtol=1e-5, atol=1e-5), torch.bfloat16: dict(rtol=2e-2, atol=2e-2),
       torch.float16: dict(rtol=2e-2, atol=2e-2), torch.float64: dict(rtol=1e-10, atol=1e-10)}


def _batch(B, shape, dtype, device, seed=0):
    gen = torch.Generator().manual_seed(seed)
    out = (2 * torch.randn(B, *shape, generator=gen)).to(device=device, dtype=dtype)
    x = torch.rand(B, *shape, generator=gen).to(device)  # fp32 images, as the loader gives them
    kl = (10 * torch.rand(B, generator=gen)).to(device)
    return out, x, kl


def _run(fn, out, x, kl, beta):
    out = out.detach().clone().requires_grad_(True)
    kl = kl.detach().clone().requires_grad_(True)
    parts = fn(out, x, kl, beta)
    # Weights ≠ 1 on every output, so each output's gradient path is exercised.
    total = 3 * parts.loss + 0.5 * parts.rec + 0.25 * parts.kl
    return (*parts, *torch.autograd.grad(total, [out, kl]))


@needs_triton_path
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("logits", [True, False], ids=["logits", "images"])
@pytest.mark.parametrize("B,shape", [(1, (3, 5, 7)), (3, (3, 64, 64)), (257, (3, 3, 5))])
@pytest.mark.parametrize("beta_kind", ["float", "tensor"])
def test_matches_reference(device, dtype, logits, B, shape, beta_kind):
    out, x, kl = _batch(B, shape, dtype, device)
    beta = 0.7 if beta_kind == "float" else torch.tensor(0.7, device=device)
    ours = _run(lambda *a: vae_loss(*a, logits=logits, impl="triton"), out, x, kl, beta)
    want = _run(lambda *a: vae_loss_ref(*a, logits=logits), out, x, kl, beta)
    assert "VAELossFunction" in type(ours[0].grad_fn).__name__  # really the fused path
    assert all(t.shape == () and t.dtype == torch.float32 for t in ours[:3])
    torch.testing.assert_close(ours, want, **TOL[dtype])


@needs_triton_path
@pytest.mark.parametrize("device", DEVICES)
def test_gradients_for_target_and_beta_and_single_outputs(device):
    out, x, kl = _batch(4, (2, 3, 5), torch.float32, device)
    for pick in ("loss", "rec", "kl"):
        results = []
        for fn in (lambda *a: vae_loss(*a, impl="triton"), vae_loss_ref):
            leaves = [t.detach().clone().requires_grad_(True) for t in (out, x, kl)]
            beta = torch.tensor(0.3, device=device, requires_grad=True)
            value = getattr(fn(*leaves, beta), pick)
            wants = leaves + [beta] if pick == "loss" else leaves
            grads = torch.autograd.grad(2 * value, wants, allow_unused=True)
            results.append([torch.zeros_like(w) if g is None else g for g, w in zip(grads, wants)])
        torch.testing.assert_close(results[0], results[1], rtol=1e-5, atol=1e-6, msg=lambda m: f"{pick}: {m}")


@needs_triton_path
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("store", [True, False], ids=["grad-in-forward", "recompute-in-backward"])
def test_gradcheck_float64(device, store, monkeypatch):
    monkeypatch.setattr(sse_module, "GRAD_IN_FORWARD", store)
    out, x, kl = _batch(3, (2, 2, 3), torch.float64, device)
    x = x.double()
    beta = torch.tensor(0.4, dtype=torch.float64, device=device, requires_grad=True)
    inputs = [t.detach().clone().requires_grad_(True) for t in (out, x, kl.double())] + [beta]
    assert torch.autograd.gradcheck(lambda o, t, k, b: tuple(vae_loss(o, t, k, b, impl="triton")), inputs)


@needs_triton_path
@pytest.mark.parametrize("device", DEVICES)
def test_whole_loss_path_matches_reference(device):
    """Encoder head → reparam_kl → decoder → vae_loss: the KL gradient reaches mu/logvar through the
    stride-0 per-sample gradient the fused total hands back."""
    torch.manual_seed(0)
    head, dec = torch.nn.Linear(10, 2 * 6).to(device), torch.nn.Linear(6, 3 * 4 * 5).to(device)
    h, x = torch.randn(7, 10, device=device), torch.rand(7, 3, 4, 5, device=device)
    eps = torch.randn(7, 6, device=device)
    grads = []
    for rk, loss in ((lambda m, l: reparam_kl(m, l, eps, impl="triton"), lambda *a: vae_loss(*a, impl="triton")),
                     (lambda m, l: reparam_kl_ref(m, l, eps), vae_loss_ref)):
        mu, logvar = head(h).chunk(2, dim=1)
        z, kl = rk(mu, logvar)
        parts = loss(dec(z).view(7, 3, 4, 5), x, kl, 0.5)
        grads.append((parts.loss, *torch.autograd.grad(parts.loss, [*head.parameters(), *dec.parameters()])))
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-5, atol=1e-6)


# The interpreter evaluates with numpy, which warns about the very NaNs this test feeds in.
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
@needs_triton_path
@pytest.mark.parametrize("device", DEVICES)
def test_no_grad_and_nan(device):
    out, x, kl = _batch(5, (3, 4, 4), torch.float32, device)
    with torch.no_grad():
        got = vae_loss(out, x, kl, 1.0, impl="triton")
    assert got.loss.grad_fn is None
    torch.testing.assert_close(got, vae_loss_ref(out, x, kl, 1.0))
    kl[2] = float("inf")  # β·KL with β = 0 is 0·inf = NaN in the reference too
    for beta in (1.0, 0.0):
        got, want = vae_loss(out, x, kl, beta, impl="triton"), vae_loss_ref(out, x, kl, beta)
        assert [t.isnan().item() for t in got] == [t.isnan().item() for t in want]
        assert [t.isinf().item() for t in got] == [t.isinf().item() for t in want]


def _loss_step(h, x, beta):
    mu, logvar = h.chunk(2, dim=1)
    z, kl = reparam_kl(mu, logvar, impl="triton")
    logits = z.repeat(1, 10)[:, :x[0].numel()].reshape(x.shape)
    return vae_loss(logits, x, kl, beta, impl="triton")


@needs_triton_path
@pytest.mark.parametrize("device", DEVICES)
def test_traces_without_graph_breaks(device):
    """Each launch is one custom op to Dynamo: the whole loss path is one graph, forward and backward."""
    h = torch.randn(6, 16, device=device, requires_grad=True)
    x = torch.rand(6, 3, 4, 5, device=device)
    torch._dynamo.reset()
    explained = torch._dynamo.explain(_loss_step)(h, x, torch.tensor(0.5, device=device))
    assert explained.graph_break_count == 0, explained.break_reasons
    assert explained.graph_count == 1


@needs_triton_path
@pytest.mark.parametrize("device", DEVICES)
def test_compiled_matches_eager(device):
    """fullgraph compile of forward + backward. On CPU with the aot_eager backend (AOTAutograd with
    the registered fake kernels; inductor's C++ build is too slow for this suite), inductor on CUDA."""
    backend = "inductor" if device == "cuda" else "aot_eager"
    h = torch.randn(6, 16, device=device, requires_grad=True)
    x = torch.rand(6, 3, 4, 5, device=device)
    beta = torch.tensor(0.5, device=device)
    torch._dynamo.reset()
    compiled = torch.compile(_loss_step, backend=backend, fullgraph=True)
    results = []
    for fn in (_loss_step, compiled):
        torch.manual_seed(3)
        parts = fn(h, x, beta)
        results.append((*parts, torch.autograd.grad(parts.loss, h)[0]))
    if device == "cuda":  # inductor draws the seed with its own RNG: compare structure, not values
        assert all(torch.isfinite(t).all() for t in results[1])
    else:
        torch.testing.assert_close(results[0], results[1])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_step_has_no_host_sync():
    """Forward and backward of the fused loss path never wait for the GPU."""
    h = torch.randn(64, 256, device="cuda", requires_grad=True)
    x = torch.rand(64, 3, 64, 64, device="cuda")
    beta = torch.tensor(1.0, device="cuda")
    _loss_step(h, x, beta).loss.backward()  # warm-up: compile the kernels
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        _loss_step(h, x, beta).loss.backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_resolve_impl(monkeypatch, capsys):
    monkeypatch.setattr(vae_loss_module, "_noticed", set())
    assert resolve_impl("torch", "cuda") == "torch"
    with pytest.raises(ConfigError, match="one of auto, triton, torch"):
        resolve_impl("fast", "cpu")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert resolve_impl("auto", "cpu") == "torch"
    assert capsys.readouterr().err == ""  # auto on CPU is not a fallback: no notice
    assert resolve_impl("triton", "cpu") == "torch"
    assert resolve_impl("triton", torch.device("cpu")) == "torch"
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "notice:" in err  # one line, once
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert resolve_impl("auto", "cpu") == resolve_impl("triton", "cpu") == "triton"
    if vae_loss_module.HAS_TRITON:
        assert resolve_impl("auto", "cuda") == "triton"
    monkeypatch.setattr(vae_loss_module, "HAS_TRITON", False)
    assert resolve_impl("auto", "cuda") == "torch"
    assert resolve_impl("triton", "cuda") == "torch"
    assert "not installed" in capsys.readouterr().err


def test_ops_fall_back_to_the_reference(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    out, x, kl = _batch(2, (3, 4, 4), torch.float32, "cpu")
    parts = vae_loss(out.requires_grad_(True), x, kl, 0.5, impl="auto")
    assert isinstance(parts, LossParts) and "VAELossFunction" not in type(parts.loss.grad_fn).__name__
    assert sigmoid_sse(out, x).grad_fn is not None


def test_bad_inputs_raise_one_clear_error():
    out, x, kl = _batch(3, (3, 4, 4), torch.float32, "cpu")
    with pytest.raises(ValueError, match=r"kl must be per-sample with shape \(3,\)"):
        vae_loss(out, x, kl[:2], 1.0, impl="torch")
    with pytest.raises(ValueError, match="differs from"):
        vae_loss(out, x[:, :2], kl, 1.0, impl="torch")
    if DEVICES:
        with pytest.raises(ConfigError, match="beta must be"):
            vae_loss(out, x, kl, torch.ones(2), impl="triton")
        with pytest.raises(ConfigError, match="beta must be"):
            vae_loss(out, x, kl, "1.0", impl="triton")
