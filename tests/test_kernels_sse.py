"""kernels.sse and kernels.sigmoid_sse (fused Triton) against their references in kernels.reference."""
import pytest
import torch

from kernels import KernelInputError, sigmoid_sse, sse
from kernels.reference import sigmoid_sse_ref, sse_ref
from tests.utils import DEVICES, TOL, image_pair, needs_triton_path, outputs_and_grads, uniform

pytestmark = needs_triton_path
OPS = {"sse": (sse, sse_ref), "sigmoid_sse": (sigmoid_sse, sigmoid_sse_ref)}
# B ∈ {1, 3, 257} with odd C·H·W; 2×3×64×64 is the real image (3 column chunks of 4096 on a GPU).
SHAPES = [(1, 3, 5, 7), (3, 3, 11, 13), (257, 3, 5, 7), (2, 3, 64, 64), (3, 1)]


def _run(fn, pred, target, upstream, target_grad=False):
    return outputs_and_grads(fn, (pred, target), (0, 1) if target_grad else (0,), upstream)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_matches_reference_forward_and_backward(device, op, dtype, shape):
    fused, ref = OPS[op]
    pred, target = image_pair(shape, dtype, device)
    upstream = uniform((shape[0],), device, seed=1) + 0.5  # per-sample weights ≠ 1
    ours = _run(lambda a, b: fused(a, b, impl="triton"), pred, target, upstream)
    want = _run(ref, pred, target, upstream)
    assert "SSEFunction" in type(ours[0].grad_fn).__name__  # really the fused path
    assert ours[0].dtype == torch.float32 and ours[0].shape == (shape[0],) and ours[1].dtype == dtype
    torch.testing.assert_close(ours, want, **TOL[dtype])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("grad_in_forward", [True, False], ids=["grad-in-forward", "recompute-in-backward"])
def test_mixed_dtypes_and_target_gradient(device, op, grad_in_forward):
    """bf16 decoder output against fp32 images (the AMP case); both gradient strategies; a target
    that needs a gradient too."""
    fused, ref = OPS[op]
    pred, target = image_pair((5, 3, 9, 7), torch.bfloat16, device, target_dtype=torch.float32)
    upstream = torch.linspace(0.5, 2.0, 5, device=device)
    ours = _run(lambda a, b: fused(a, b, impl="triton", grad_in_forward=grad_in_forward), pred, target, upstream,
                target_grad=True)
    want = _run(ref, pred, target, upstream, target_grad=True)
    torch.testing.assert_close(ours, want, **TOL[torch.bfloat16])
    assert ours[2].dtype == torch.float32


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_grad_in_forward_picks_the_strategy(device, op, dtype):
    """The forward stores the gradient exactly when asked to, except for fp16, which always
    recomputes; both strategies give the same gradient."""
    fused, _ = OPS[op]
    pred, target = image_pair((2, 3, 4, 5), dtype, device)
    grads = []
    for grad_in_forward in (True, False):
        leaf = pred.detach().clone().requires_grad_(True)
        out = fused(leaf, target, impl="triton", grad_in_forward=grad_in_forward)
        stored, kept_pred, _ = out.grad_fn.saved_tensors  # the stored gradient, or the inputs to recompute it
        assert (stored is not None) == (grad_in_forward and dtype != torch.float16)
        assert (kept_pred is None) == (stored is not None)
        grads.append(torch.autograd.grad(out.sum(), leaf)[0])
    torch.testing.assert_close(grads[0], grads[1], **TOL[dtype])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("op", OPS)
def test_layouts(device, op):
    """channels_last pairs are read in place; mixed layouts and batch slices are handled."""
    fused, ref = OPS[op]
    pred, target = image_pair((6, 3, 5, 7), torch.float32, device)
    cl = torch.channels_last
    cases = {
        "channels_last": (pred.to(memory_format=cl), target.to(memory_format=cl)),
        "mixed": (pred.to(memory_format=cl), target),
        "batch-slice": (pred[::2], target[::2]),
        "transposed": (pred.transpose(2, 3), target.transpose(2, 3).contiguous()),
    }
    upstream = uniform((6,), device, seed=1)
    for name, (a, b) in cases.items():
        u = upstream[: a.shape[0]]
        ours = _run(lambda x, y: fused(x, y, impl="triton"), a, b, u)
        want = _run(ref, a, b, u)
        torch.testing.assert_close(ours, want, **TOL[torch.float32], msg=lambda m: f"{name}: {m}")


@pytest.mark.slow  # float64 numerical Jacobians through Triton's interpreter; the fast tier compares with the reference
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("op", OPS)
def test_gradcheck_float64(device, op):
    fused, _ = OPS[op]
    pred, target = image_pair((3, 2, 3, 5), torch.float64, device)
    pred.requires_grad_(True)
    target.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a, b: fused(a, b, impl="triton"), (pred, target))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("op", OPS)
def test_no_grad_forward(device, op):
    fused, ref = OPS[op]
    pred, target = image_pair((4, 3, 5, 7), torch.float32, device)
    with torch.no_grad():
        got = fused(pred, target, impl="triton")
    assert got.grad_fn is None
    torch.testing.assert_close(got, ref(pred, target))


# The interpreter evaluates with numpy, which warns about the very NaNs this test feeds in.
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("op", OPS)
def test_nan_and_inf_propagate_like_the_reference(device, op):
    fused, ref = OPS[op]
    pred, target = image_pair((5, 2, 3, 3), torch.float32, device)
    pred[0, 0, 0, 0] = float("nan")
    pred[1, 1, 2, 2] = float("inf")
    pred[2, 0, 1, 1] = -float("inf")
    target[3, 1, 0, 2] = float("nan")
    upstream = torch.ones(5, device=device)
    ours = _run(lambda a, b: fused(a, b, impl="triton"), pred, target, upstream)
    want = _run(ref, pred, target, upstream)
    for got, exp in zip(ours, want):
        assert torch.equal(got.isnan(), exp.isnan())
        assert torch.equal(got.isinf(), exp.isinf())
        finite = exp.isfinite()
        torch.testing.assert_close(got[finite], exp[finite])


def test_bad_inputs_raise_one_clear_error():
    x = torch.zeros(2, 3, 4, 4)
    with pytest.raises(KernelInputError, match="differs from"):
        sse(x, torch.zeros(2, 3, 4, 5), impl="torch")
    with pytest.raises(KernelInputError, match="at least 2 dims"):
        sigmoid_sse(torch.zeros(4), torch.zeros(4), impl="torch")
    with pytest.raises(KernelInputError, match="float16, bfloat16"):
        sse(x.to(torch.uint8), x, impl="torch")
    with pytest.raises(KernelInputError, match="non-empty"):
        sse(torch.zeros(0, 3), torch.zeros(0, 3), impl="torch")
    with pytest.raises(KernelInputError, match="must be a tensor"):
        sse(x, x.numpy(), impl="torch")
