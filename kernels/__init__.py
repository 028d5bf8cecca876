"""The VAE loss path as fused Triton kernels, each beside its plain-PyTorch reference.

    z, kl = reparam_kl(mu, logvar)                 # z = mu + eps·exp(½·logvar), KL per sample
    parts = vae_loss(logits, x, kl, beta)          # mean_b(Σ(sigmoid(logits) − x)² + β·KL_b)

Every op takes ``impl="auto" | "triton" | "torch"``, resolved by :func:`resolve_impl` (Triton on
CUDA, the reference elsewhere, Triton's interpreter on CPU when TRITON_INTERPRET=1). Inputs may
be fp32, bf16 or fp16 (fp64 too, for gradcheck); sums accumulate in fp32 and the per-sample and
total losses are fp32. Bad tensors raise :class:`KernelInputError`, bad options
:class:`KernelConfigError` (both ``ValueError``).

Where things are:

    api.py           the public ops: reparam_kl, sse, sigmoid_sse, vae_loss (validate, resolve, dispatch)
    impl.py          resolve_impl and HAS_TRITON: which implementation runs (imports no Triton)
    reference.py     the plain-PyTorch math that impl="torch" runs, and LossParts
    checks.py        input validation and the memory layouts the kernels read in place
    errors.py        KernelInputError, KernelConfigError
    ops/             one file per fused op: its Triton kernels, launchers and autograd.Function
    cuda_compile.py  ``python -m kernels.cuda_compile``: build every kernel for sm_90 without a GPU

This package imports nothing else from the project.
"""
from .api import reparam_kl, sigmoid_sse, sse, vae_loss
from .errors import KernelConfigError, KernelInputError
from .impl import resolve_impl
from .reference import LossParts

__all__ = ["reparam_kl", "sse", "sigmoid_sse", "vae_loss", "resolve_impl", "LossParts", "KernelInputError",
           "KernelConfigError"]
