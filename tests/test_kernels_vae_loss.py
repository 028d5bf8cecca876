"""kernels.vae_loss (fused) against the reference; resolve_impl; the loss path under torch.compile."""
import pytest
import torch

import kernels.impl
from kernels import KernelConfigError, LossParts, reparam_kl, resolve_impl, sigmoid_sse, vae_loss
from kernels.reference import reparam_kl_ref, vae_loss_ref
from tests.utils import DEVICES, TOL, loss_batch, needs_triton_path, normal, outputs_and_grads, uniform


def _run(fn, out, x, kl, beta):
    """(loss, rec, kl, d out, d kl). Weights ≠ 1 on every output, so each output's gradient path is exercised."""
    weights = [torch.tensor(w, device=out.device) for w in (3.0, 0.5, 0.25)]
    return outputs_and_grads(fn, (out, x, kl, beta), (0, 2), weights)


@needs_triton_path
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("logits", [True, False], ids=["logits", "images"])
@pytest.mark.parametrize("B,shape", [(1, (3, 5, 7)), (3, (3, 64, 64)), (257, (3, 3, 5))])
@pytest.mark.parametrize("beta_kind", ["float", "tensor"])
def test_matches_reference(device, dtype, logits, B, shape, beta_kind):
    out, x, kl = loss_batch(B, shape, dtype, device)
    beta = 0.7 if beta_kind == "float" else torch.tensor(0.7, device=device)
    ours = _run(lambda *a: vae_loss(*a, logits=logits, impl="triton"), out, x, kl, beta)
    want = _run(lambda *a: vae_loss_ref(*a, logits=logits), out, x, kl, beta)
    assert "VAELossFunction" in type(ours[0].grad_fn).__name__  # really the fused path
    assert all(t.shape == () and t.dtype == torch.float32 for t in ours[:3])
    torch.testing.assert_close(ours, want, **TOL[dtype])


@needs_triton_path
@pytest.mark.parametrize("device", DEVICES)
def test_gradients_for_target_and_beta_and_single_outputs(device):
    out, x, kl = loss_batch(4, (2, 3, 5), torch.float32, device)
    for pick in ("loss", "rec", "kl"):
        results = []
        for fn in (lambda *a: vae_loss(*a, impl="triton"), vae_loss_ref):
            leaves = [t.detach().clone().requires_grad_(True) for t in (out, x, kl)]
            beta = torch.tensor(0.3, device=device, requires_grad=True)
            value = getattr(fn(*leaves, beta), pick)
            wants = leaves + [beta] if pick == "loss" else leaves
            grads = torch.autograd.grad(2 * value, wants, allow_unused=True)
            results.append([torch.zeros_like(w) if g is None else g for g, w in zip(grads, wants)])
        torch.testing.assert_close(results[0], results[1], **TOL["loss_grads"], msg=lambda m: f"{pick}: {m}")


@pytest.mark.slow  # float64 numerical Jacobians through Triton's interpreter; the fast tier compares with the reference
@needs_triton_path
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("grad_in_forward", [True, False], ids=["grad-in-forward", "recompute-in-backward"])
def test_gradcheck_float64(device, grad_in_forward):
    out, x, kl = loss_batch(3, (2, 2, 3), torch.float64, device)
    x = x.double()
    beta = torch.tensor(0.4, dtype=torch.float64, device=device, requires_grad=True)
    inputs = [t.detach().clone().requires_grad_(True) for t in (out, x, kl.double())] + [beta]
    assert torch.autograd.gradcheck(
        lambda o, t, k, b: tuple(vae_loss(o, t, k, b, impl="triton", grad_in_forward=grad_in_forward)), inputs)


@needs_triton_path
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_grad_in_forward_picks_the_strategy(device, dtype):
    """The forward stores the gradient exactly when asked to, except for fp16, which always
    recomputes; both strategies give the same gradient."""
    out, x, kl = loss_batch(2, (3, 4, 5), dtype, device)
    grads = []
    for grad_in_forward in (True, False):
        leaf = out.detach().clone().requires_grad_(True)
        parts = vae_loss(leaf, x, kl, 0.5, impl="triton", grad_in_forward=grad_in_forward)
        stored, kept_out = parts.loss.grad_fn.saved_tensors[:2]  # the stored gradient, or the inputs
        assert (stored is not None) == (grad_in_forward and dtype != torch.float16)
        assert (kept_out is None) == (stored is not None)
        grads.append(torch.autograd.grad(parts.loss, leaf)[0])
    torch.testing.assert_close(grads[0], grads[1], **TOL[dtype])


@needs_triton_path
@pytest.mark.parametrize("device", DEVICES)
def test_whole_loss_path_matches_reference(device):
    """Encoder head → reparam_kl → decoder → vae_loss: the KL gradient reaches mu/logvar through the
    stride-0 per-sample gradient the fused total hands back."""
    torch.manual_seed(0)
    head, dec = torch.nn.Linear(10, 2 * 6).to(device), torch.nn.Linear(6, 3 * 4 * 5).to(device)
    h, x, eps = normal((7, 10), device), uniform((7, 3, 4, 5), device), normal((7, 6), device, seed=1)
    grads = []
    for rk, loss in ((lambda m, l: reparam_kl(m, l, eps, impl="triton"), lambda *a: vae_loss(*a, impl="triton")),
                     (lambda m, l: reparam_kl_ref(m, l, eps), vae_loss_ref)):
        mu, logvar = head(h).chunk(2, dim=1)
        z, kl = rk(mu, logvar)
        parts = loss(dec(z).view(7, 3, 4, 5), x, kl, 0.5)
        grads.append((parts.loss, *torch.autograd.grad(parts.loss, [*head.parameters(), *dec.parameters()])))
    torch.testing.assert_close(grads[0], grads[1], **TOL["loss_grads"])


# The interpreter evaluates with numpy, which warns about the very NaNs this test feeds in.
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
@needs_triton_path
@pytest.mark.parametrize("device", DEVICES)
def test_no_grad_and_nan(device):
    out, x, kl = loss_batch(5, (3, 4, 4), torch.float32, device)
    with torch.no_grad():
        got = vae_loss(out, x, kl, 1.0, impl="triton")
    assert got.loss.grad_fn is None
    torch.testing.assert_close(got, vae_loss_ref(out, x, kl, 1.0))
    kl[2] = float("inf")  # β·KL with β = 0 is 0·inf = NaN in the reference too
    for beta in (1.0, 0.0):
        got, want = vae_loss(out, x, kl, beta, impl="triton"), vae_loss_ref(out, x, kl, beta)
        assert [t.isnan().item() for t in got] == [t.isnan().item() for t in want]
        assert [t.isinf().item() for t in got] == [t.isinf().item() for t in want]


def _loss_step(h, x, beta, seed=None, grad_in_forward=True):
    mu, logvar = h.chunk(2, dim=1)
    z, kl = reparam_kl(mu, logvar, seed=seed, impl="triton")
    logits = z.repeat(1, 10)[:, :x[0].numel()].reshape(x.shape)
    return vae_loss(logits, x, kl, beta, impl="triton", grad_in_forward=grad_in_forward)


@needs_triton_path
@pytest.mark.parametrize("device", DEVICES)
def test_traces_without_graph_breaks(device):
    """Each launch is one custom op to Dynamo: the whole loss path is one graph, forward and backward."""
    h, x = normal((6, 16), device).requires_grad_(True), uniform((6, 3, 4, 5), device)
    torch._dynamo.reset()
    explained = torch._dynamo.explain(_loss_step)(h, x, torch.tensor(0.5, device=device))
    assert explained.graph_break_count == 0, explained.break_reasons
    assert explained.graph_count == 1


@needs_triton_path
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("grad_in_forward", [True, False], ids=["grad-in-forward", "recompute-in-backward"])
def test_compiled_matches_eager(device, grad_in_forward):
    """fullgraph compile of forward + backward gives eager's values. On CPU with the aot_eager
    backend (AOTAutograd with the registered fake kernels; inductor's C++ build is too slow for this
    suite), inductor on CUDA. The noise seed is a device tensor: unseeded, inductor would draw it
    with its own RNG and the numbers could not be compared. The kernels are opaque custom ops and
    run identically in both. aot_eager runs eager's own ops, so torch's default fp32 tolerance holds;
    inductor may reorder the fp32 sums around the kernels (the backward of ``repeat`` adds 10
    copies), a few ulps, hence fp32's kernel-vs-reference tolerance there."""
    backend = "inductor" if device == "cuda" else "aot_eager"
    h, x = normal((6, 16), device).requires_grad_(True), uniform((6, 3, 4, 5), device)
    beta = torch.tensor(0.5, device=device)
    seed = torch.tensor([1234], device=device)
    torch._dynamo.reset()
    compiled = torch.compile(_loss_step, backend=backend, fullgraph=True)
    results = []
    for fn in (_loss_step, compiled):
        parts = fn(h, x, beta, seed, grad_in_forward)
        results.append((*parts, torch.autograd.grad(parts.loss, h)[0]))
    torch.testing.assert_close(results[1], results[0], **(TOL[torch.float32] if backend == "inductor" else {}))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("grad_in_forward", [True, False], ids=["grad-in-forward", "recompute-in-backward"])
def test_cuda_step_has_no_host_sync(grad_in_forward):
    """Forward and backward of the fused loss path never wait for the GPU: under sync-debug mode
    "error" any synchronizing call raises, so the step must run through without one."""
    h, x = normal((64, 256), "cuda").requires_grad_(True), uniform((64, 3, 64, 64), "cuda")
    beta = torch.tensor(1.0, device="cuda")
    _loss_step(h, x, beta, grad_in_forward=grad_in_forward).loss.backward()  # warm-up: compile the kernels
    h.grad = None
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        with pytest.raises(RuntimeError, match="synchroniz"):
            h.sum().item()  # the mode is live: a sync would be caught
        try:
            _loss_step(h, x, beta, grad_in_forward=grad_in_forward).loss.backward()
        except RuntimeError as err:
            pytest.fail(f"the fused loss step synchronized with the host: {err}")
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert h.grad is not None and torch.isfinite(h.grad).all()


def test_resolve_impl(monkeypatch, capsys):
    monkeypatch.setattr(kernels.impl, "_noticed", set())
    assert resolve_impl("torch", "cuda") == "torch"
    with pytest.raises(KernelConfigError, match="one of auto, triton, torch"):
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
    if kernels.impl.HAS_TRITON:
        assert resolve_impl("auto", "cuda") == "triton"
    monkeypatch.setattr(kernels.impl, "HAS_TRITON", False)
    assert resolve_impl("auto", "cuda") == "torch"
    assert resolve_impl("triton", "cuda") == "torch"
    assert "not installed" in capsys.readouterr().err


def test_ops_fall_back_to_the_reference(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    out, x, kl = loss_batch(2, (3, 4, 4), torch.float32, "cpu")
    parts = vae_loss(out.requires_grad_(True), x, kl, 0.5, impl="auto")
    assert isinstance(parts, LossParts) and "VAELossFunction" not in type(parts.loss.grad_fn).__name__
    assert sigmoid_sse(out, x).grad_fn is not None


def test_bad_inputs_raise_one_clear_error():
    out, x, kl = loss_batch(3, (3, 4, 4), torch.float32, "cpu")
    with pytest.raises(ValueError, match=r"kl must be per-sample with shape \(3,\)"):
        vae_loss(out, x, kl[:2], 1.0, impl="torch")
    with pytest.raises(ValueError, match="differs from"):
        vae_loss(out, x[:, :2], kl, 1.0, impl="torch")
    if DEVICES:
        with pytest.raises(KernelConfigError, match="beta must be"):
            vae_loss(out, x, kl, torch.ones(2), impl="triton")
        with pytest.raises(KernelConfigError, match="beta must be"):
            vae_loss(out, x, kl, "1.0", impl="triton")
