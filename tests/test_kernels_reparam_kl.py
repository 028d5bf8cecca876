"""kernels.reparam_kl (fused Triton) against kernels.reference.reparam_kl_ref.

On CPU the Triton kernels run in the interpreter (conftest sets TRITON_INTERPRET=1 when there is
no GPU); on a CUDA machine the same tests run compiled on the GPU.
"""
import pytest
import torch

from kernels import KernelInputError, reparam_kl
from kernels.reference import reparam_kl_ref
from tests.utils import DEVICES, TOL, latents, needs_triton_path, normal, outputs_and_grads, uniform

pytestmark = needs_triton_path


def _run(fn, mu, logvar, eps, dz, dkl):
    """(z, kl, dmu, dlogvar) for upstream gradients dz, dkl."""
    return outputs_and_grads(fn, (mu, logvar, eps), (0, 1), (dz, dkl))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("B", [1, 3, 257])
@pytest.mark.parametrize("D", [1, 100, 128, 513])
def test_matches_reference_forward_and_backward(device, dtype, B, D):
    mu, logvar, eps = latents(B, D, dtype, device)
    gen = torch.Generator().manual_seed(1)
    # Upstream gradients ≠ 1, as when z feeds a decoder and β·KL is in the loss.
    dz = normal((B, D), device, dtype, seed=gen)
    dkl = uniform((B,), device, seed=gen) + 0.5
    ours = _run(lambda m, l, e: reparam_kl(m, l, e, impl="triton"), mu, logvar, eps, dz, dkl)
    ref = _run(reparam_kl_ref, mu, logvar, eps, dz, dkl)
    assert "ReparamKLFunction" in type(ours[0].grad_fn).__name__  # really the fused path
    assert ours[0].dtype == dtype and ours[1].dtype == torch.float32 and ours[1].shape == (B,)
    for name, got, want in zip(("z", "kl", "dmu", "dlogvar"), ours, ref):
        torch.testing.assert_close(got, want, **TOL[dtype], msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("device", DEVICES)
def test_strided_rows_and_transposed_inputs(device):
    """mu, logvar = h.chunk(2, 1) (row stride 2·D) is read in place; a transposed view is copied."""
    mu, logvar, eps = latents(9, 33, torch.float32, device)
    h = torch.cat((mu, logvar), dim=1).requires_grad_(True)
    mu, logvar = h.chunk(2, dim=1)
    z, kl = reparam_kl(mu, logvar, eps, impl="triton")
    g = torch.autograd.grad(z.sum() + kl.sum(), h)[0]
    z_ref, kl_ref = reparam_kl_ref(mu, logvar, eps)
    g_ref = torch.autograd.grad(z_ref.sum() + kl_ref.sum(), h)[0]
    torch.testing.assert_close((z, kl, g), (z_ref, kl_ref, g_ref), **TOL[torch.float32])

    mu_t = normal((33, 9), device, seed=1).t()
    z, kl = reparam_kl(mu_t, mu_t * 0.1, eps, impl="triton")
    torch.testing.assert_close((z, kl), reparam_kl_ref(mu_t, mu_t * 0.1, eps), **TOL[torch.float32])


@pytest.mark.slow  # a statistical check of the noise
@pytest.mark.parametrize("device", DEVICES)
def test_in_kernel_noise_is_seeded_standard_normal(device):
    B, D = 257, 513
    mu = torch.zeros(B, D, device=device)
    logvar = torch.zeros(B, D, device=device)  # σ = 1, so z = eps
    z1, _ = reparam_kl(mu, logvar, seed=1234, impl="triton")
    z2, _ = reparam_kl(mu, logvar, seed=torch.tensor([1234], device=device), impl="triton")
    z3, _ = reparam_kl(mu, logvar, seed=1235, impl="triton")
    assert torch.equal(z1, z2)
    assert not torch.equal(z1, z3)
    assert abs(z1.mean().item()) < 0.01 and abs(z1.std().item() - 1) < 0.01
    # Every element gets its own number: no repeated rows or columns.
    assert z1[0].ne(z1[1]).all() and z1[:, 0].ne(z1[:, 1]).all()
    # Without a seed, torch's generator picks one: torch.manual_seed makes it reproducible.
    torch.manual_seed(7)
    a, _ = reparam_kl(mu, logvar, impl="triton")
    torch.manual_seed(7)
    b, _ = reparam_kl(mu, logvar, impl="triton")
    c, _ = reparam_kl(mu, logvar, impl="triton")
    assert torch.equal(a, b) and not torch.equal(b, c)


@pytest.mark.parametrize("device", DEVICES)
def test_backward_regenerates_the_forward_noise(device):
    """With in-kernel noise the backward must see the same eps as the forward."""
    mu, logvar, _ = latents(37, 130, torch.float32, device, seed=3)
    gen = torch.Generator().manual_seed(4)
    dz, dkl = normal((37, 130), device, seed=gen), uniform((37,), device, seed=gen)
    z, kl, dmu, dlv = _run(lambda m, l, e: reparam_kl(m, l, seed=99, impl="triton"), mu, logvar, None, dz, dkl)
    eps = (z - mu) / torch.exp(0.5 * logvar)  # the noise the forward used
    ref = _run(reparam_kl_ref, mu, logvar, eps, dz, dkl)
    torch.testing.assert_close((z, kl, dmu, dlv), ref, **TOL["recovered_eps"])


@pytest.mark.slow  # float64 numerical Jacobians through Triton's interpreter; the fast tier compares with the reference
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("noise", ["eps", "seed"])
def test_gradcheck_float64(device, noise):
    mu, logvar, eps = latents(3, 5, torch.float64, device)
    mu.requires_grad_(True)
    logvar.requires_grad_(True)
    if noise == "eps":
        eps.requires_grad_(True)
        assert torch.autograd.gradcheck(lambda m, l, e: reparam_kl(m, l, e, impl="triton"), (mu, logvar, eps))
    else:  # a fixed seed makes the in-kernel noise a deterministic function: gradcheck applies
        assert torch.autograd.gradcheck(lambda m, l: reparam_kl(m, l, seed=5, impl="triton"), (mu, logvar))


@pytest.mark.parametrize("device", DEVICES)
def test_only_one_output_used(device):
    """An unused output's gradient arrives as None: the kernel must skip that term, not crash."""
    mu, logvar, eps = latents(4, 6, torch.float32, device)
    for pick in (0, 1):
        ours = [t.detach().clone().requires_grad_(True) for t in (mu, logvar)]
        refs = [t.detach().clone().requires_grad_(True) for t in (mu, logvar)]
        out = reparam_kl(*ours, eps, impl="triton")[pick].sum() * 2
        ref = reparam_kl_ref(*refs, eps)[pick].sum() * 2
        torch.testing.assert_close(torch.autograd.grad(out, ours), torch.autograd.grad(ref, refs))


# The interpreter evaluates with numpy, which warns about the very NaNs this test feeds in.
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
@pytest.mark.parametrize("device", DEVICES)
def test_nan_and_inf_propagate_like_the_reference(device):
    mu, logvar, eps = latents(4, 5, torch.float32, device)
    mu[0, 1], mu[1, 2], logvar[2, 3], logvar[3, 0], logvar[3, 4] = (float("nan"), float("inf"), float("nan"),
                                                                    float("inf"), -float("inf"))
    dz = torch.ones_like(mu)
    dkl = torch.ones(4, device=device)
    ours = _run(lambda m, l, e: reparam_kl(m, l, e, impl="triton"), mu, logvar, eps, dz, dkl)
    ref = _run(reparam_kl_ref, mu, logvar, eps, dz, dkl)
    for got, want in zip(ours, ref):
        assert torch.equal(got.isnan(), want.isnan())
        assert torch.equal(got.isinf(), want.isinf())
        finite = want.isfinite()
        torch.testing.assert_close(got[finite], want[finite])


@pytest.mark.parametrize("device", DEVICES)
def test_under_autocast(device):
    """An encoder head under autocast hands bf16 mu/logvar over: z stays bf16, KL is fp32."""
    torch.manual_seed(0)
    head = torch.nn.Linear(16, 2 * 8).to(device)
    h, eps = normal((5, 16), device), normal((5, 8), device, seed=1)
    results = []
    for fn in (lambda m, l: reparam_kl(m, l, eps, impl="triton"), lambda m, l: reparam_kl_ref(m, l, eps)):
        with torch.autocast(device_type=device, dtype=torch.bfloat16):
            out = head(h)
            out.retain_grad()
            mu, logvar = out.chunk(2, dim=1)
            z, kl = fn(mu, logvar)
        assert mu.dtype == torch.bfloat16 and z.dtype == torch.bfloat16 and kl.dtype == torch.float32
        (z.float().square().sum() + kl.sum()).backward()
        # The gradient at the head's output is what the kernel produces; the weight gradient
        # would add a bf16 matmul whose cancellations amplify one-ulp differences in z.
        results.append((z, kl, out.grad))
    torch.testing.assert_close(results[0], results[1], **TOL[torch.bfloat16])


def test_bad_inputs_raise_one_clear_error():
    mu = torch.zeros(2, 3)
    with pytest.raises(KernelInputError, match="B×D"):
        reparam_kl(torch.zeros(6), torch.zeros(6), impl="torch")
    with pytest.raises(KernelInputError, match="logvar shape"):
        reparam_kl(mu, torch.zeros(2, 4), impl="torch")
    with pytest.raises(KernelInputError, match="float16, bfloat16"):
        reparam_kl(mu.long(), mu.long(), impl="torch")
    with pytest.raises(KernelInputError, match="eps shape"):
        reparam_kl(mu, mu, torch.zeros(3, 2), impl="torch")
    with pytest.raises(KernelInputError, match="non-empty"):
        reparam_kl(torch.zeros(0, 3), torch.zeros(0, 3), impl="torch")
    if DEVICES:
        with pytest.raises(KernelInputError, match="seed must be"):
            reparam_kl(mu.to(DEVICES[0]), mu.to(DEVICES[0]), seed=1.5, impl="triton")


@pytest.mark.parametrize("impl", ["torch", "triton"])
def test_compiled_across_batch_sizes_with_in_kernel_noise(impl):
    """A compiled model sees new batch sizes (eval batches, a short last batch): dynamo then traces
    with a symbolic batch dimension, which the noise draw must survive (regression: the reference's
    ``torch.randn(mu.shape, generator=None)`` could not be traced with a symbolic shape)."""
    torch._dynamo.reset()

    def step(mu, logvar):
        z, kl = reparam_kl(mu, logvar, impl=impl)
        return z, kl

    compiled = torch.compile(step, backend="aot_eager")
    for B in (4, 8, 5):
        mu, logvar, _ = latents(B, 16, torch.float32, DEVICES[0], seed=B)
        z, kl = compiled(mu, logvar)
        assert z.shape == (B, 16) and torch.isfinite(z).all()
        torch.testing.assert_close(kl, reparam_kl_ref(mu, logvar, torch.zeros_like(mu))[1])
