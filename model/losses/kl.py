"""The KL term per latent dimension, and free bits.

For a diagonal Gaussian posterior q(z|x) = N(μ, diag(exp(logvar))) and the prior N(0, I), the KL
divergence splits over the latent dimensions j:

    KL_j = ½ (μ_j² + exp(logvar_j) − 1 − logvar_j)        (nats; Σ_j KL_j is the usual KL term)

Everything is computed in fp32 whatever the inputs' dtype (bf16 under autocast), like the loss kernels.
"""
from __future__ import annotations

import torch


def kl_per_dim(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(q(z_j|x) || N(0, 1)) for every sample and dimension: a [B, L] fp32 tensor,
    ½(μ² + exp(logvar) − 1 − logvar)."""
    if mu.shape != logvar.shape or mu.dim() != 2:
        raise ValueError(f"mu and logvar must both be [B, L], got {tuple(mu.shape)} and {tuple(logvar.shape)}")
    m, lv = mu.float(), logvar.float()
    return 0.5 * (m * m + torch.exp(lv) - 1.0 - lv)


def free_bits_kl(mu: torch.Tensor, logvar: torch.Tensor, lam: float) -> torch.Tensor:
    """The KL term with a floor of ``lam`` nats per dimension ("free bits"): a 0-dim fp32 tensor,

        Σ_j max(λ, E_batch[KL_j]),       E_batch[KL_j] = (1/B) Σ_b KL_bj,

    after Kingma et al. 2016, "Improved Variational Inference with Inverse Autoregressive Flow"
    (NeurIPS), appendix C.8 "free bits", with each latent dimension as its own group and the
    expectation taken over the minibatch.

    ``lam`` = 0 gives exactly the usual KL term, the batch mean of Σ_j KL_j (computed in that order).
    For λ > 0, a dimension whose batch-mean KL is below λ contributes the constant λ, so its gradient
    is zero: the optimiser stops pushing that dimension towards the prior, and the first λ nats of
    information per dimension are "free". Dimensions above the floor get the usual gradient. (At a
    batch mean exactly equal to λ the gradient is passed, as ``torch.clamp`` does.)
    """
    if lam < 0:
        raise ValueError(f"free bits λ must be >= 0, got {lam}")
    kl = kl_per_dim(mu, logvar)
    if lam == 0:
        return kl.sum(dim=1).mean()
    return kl.mean(dim=0).clamp(min=lam).sum()


@torch.no_grad()
def kl_floor_active(mu: torch.Tensor, logvar: torch.Tensor, lam: float) -> torch.Tensor:
    """How many dimensions have a batch-mean KL under the floor ``lam`` (0-dim int64; the objective logs
    it as ``kl_dims_under_floor``: those dimensions get no KL gradient from :func:`free_bits_kl`). Does not
    synchronise the device."""
    return (kl_per_dim(mu, logvar).mean(dim=0) < lam).sum()
