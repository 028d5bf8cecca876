"""The fused Triton ops, one file each: its kernels, their launchers and its autograd.Function.

    sse.py         per-sample (sigmoid-)SSE, with the gradient written in the forward or recomputed
    reparam_kl.py  reparameterization + per-sample KL, Philox noise regenerated in the backward
    vae_loss.py    the loss total: SSE + β·KL reduced on the device, no host sync
    utils.py       what the op files share: the accumulator dtype, the custom-op launcher

Nothing is imported here: these modules need Triton, and ``kernels.api`` imports them only where it
is installed. Call them through ``kernels`` (which validates inputs and picks the implementation).
"""
