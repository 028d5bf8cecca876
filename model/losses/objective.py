"""The training objective: the seed's SSE + β·KL through the fused kernels, plus what config adds.

    loss = R + β·K + perceptual_weight·P + ssim_weight·S            (each a mean over the batch)

- R, the reconstruction term (``recon``): "sse", Σ(x̂ − x)² per image (the seed's; at β = 1 the loss
  is the negative ELBO of a Gaussian decoder with σ² = ½, up to a constant); "gaussian_learned_sigma",
  the σ-VAE of Rybkin, Daniilidis and Levine (2021, "Simple and Effective VAE Training with Calibrated
  Decoders"): −log N(x; x̂, σ²I) = SSE/(2σ²) + D·log σ + (D/2)·log 2π with one σ learned with the
  network (it starts at σ² = ½, the seed's); "gaussian_optimal_sigma": the same with σ² set to the
  batch's MSE, the maximum-likelihood σ (their "optimal σ"), so R = (D/2)(1 + log 2π·MSE).
  A badly weighted MSE is the usual cause of VAE blur (their §3): σ balances R against the KL.
- K: the batch mean of KL(q(z|x) ‖ N(0, I)), or with ``free_bits`` λ > 0 Σ_j max(λ, E_batch KL_j)
  (model/losses/kl.py; the number of dimensions under the floor is logged as ``kl_dims_under_floor``).
- P: VGG feature matching (model/losses/perceptual.py); S: 1 − SSIM, or 1 − MS-SSIM with
  ``ssim_scales`` > 1 (model/losses/structural.py).

What runs where. z always comes from the fused reparameterisation (``kernels.reparam_kl``, inside the
model's forward) and the SSE from the fused loss (``kernels.vae_loss`` over the logits), whatever is
added: the reconstruction's gradient reaches μ and logvar through those kernels' backward. The KL
penalty comes from the same kernels' per-image KL, except under free bits: the floor applies to each
dimension's batch-mean KL, which the kernel (it sums over dimensions per image) does not give, so that
penalty and its gradient are computed in plain torch from μ and logvar (model/losses/kl.py), and the
kernel's KL is then only logged (``kl``). The σ-VAE's scaling of the SSE, the VGG and the (MS-)SSIM are torch.
``forward`` returns :class:`LossTerms`; ``extra`` holds each added term (detached) for the logs.
"""
from __future__ import annotations

import contextlib
import math
from typing import Any, Callable, NamedTuple

import torch
from torch import nn

from model.losses.kl import free_bits_kl, kl_floor_active
from model.losses.structural import check_scales, ms_ssim_loss, ssim_loss

LOG_2PI = math.log(2 * math.pi)


def make_loss_fn(impl: str, compile_eager: bool, *, unpacked: bool = False) -> Callable[..., Any]:
    """The seed's loss, ``vae_loss`` bound to the resolved implementation, called as ``fn(out, x, beta)``
    with the model's output (``unpacked``: as ``fn(logits, x, kl, beta)``). The eager reference is
    compiled when asked (the Triton path is already one fused kernel). ``model.losses.Objective``
    builds on it when config adds terms to the loss."""
    from functools import partial

    from kernels import vae_loss

    fn = partial(vae_loss, logits=True, impl=impl)
    if impl == "torch" and compile_eager:
        fn = torch.compile(fn, dynamic=False)
    if unpacked:
        return fn
    return lambda out, x, beta: fn(out.logits, x, out.kl, beta)


class LossTerms(NamedTuple):
    """0-dim fp32 tensors: the total, mean SSE and mean KL per image, and the added terms by name."""

    loss: torch.Tensor
    rec: torch.Tensor
    kl: torch.Tensor
    extra: dict[str, torch.Tensor]


class Objective(nn.Module):
    """Callable as ``objective(out, x, beta)`` with the model's :class:`~model.vae.VAEOutput`."""

    def __init__(self, cfg: dict[str, Any], *, impl: str, compile_eager: bool = False, download_weights: bool = False,
                 random_perceptual: bool = False, autocast: Callable[[], Any] = contextlib.nullcontext):
        super().__init__()
        self.autocast = autocast  # the VGG runs under the network's autocast
        self.vae_loss = make_loss_fn(impl, compile_eager, unpacked=True)
        self.recon = cfg["recon"]
        self.free_bits = float(cfg["free_bits"])
        self.perceptual_weight = float(cfg["perceptual_weight"])
        self.ssim_weight = float(cfg["ssim_weight"])
        self.ssim_scales = int(cfg["ssim_scales"])
        if self.ssim_weight:  # validate() checks it too; an Objective may be built from a hand-made dict
            check_scales(self.ssim_scales, cfg["image_size"])
        self.log_sigma = None
        if self.recon == "gaussian_learned_sigma":
            self.log_sigma = nn.Parameter(torch.tensor(-0.5 * math.log(2.0)))  # σ² = ½: the seed's loss at step 0
            self.log_sigma.register_hook(self._average_over_ranks)
        self.perceptual = None
        if self.perceptual_weight:
            from model.losses.perceptual import PerceptualLoss

            # perceptual_weights "random": an untrained VGG, for benchmarks on machines without the file
            random_init = random_perceptual or cfg["perceptual_weights"] == "random"
            self.perceptual = PerceptualLoss(cfg["perceptual_network"], tuple(cfg["perceptual_layers"]),
                                             None if random_init else cfg["perceptual_weights"],
                                             download=download_weights, random_init=random_init)
        self.plain = self.recon == "sse" and not (self.free_bits or self.perceptual_weight or self.ssim_weight)

    def describe(self) -> str:
        """One line for the run header: what the loss is made of."""
        parts = [{"sse": "SSE", "gaussian_learned_sigma": "Gaussian NLL, learned σ",
                  "gaussian_optimal_sigma": "Gaussian NLL, optimal σ"}[self.recon],
                 "β·KL" + (f" (free bits {self.free_bits:g})" if self.free_bits else "")]
        if self.perceptual is not None:
            kind = "" if self.perceptual.pretrained else ", random weights"
            parts.append(f"{self.perceptual_weight:g}·perceptual ({self.perceptual.network}{kind})")
        if self.ssim_weight:
            parts.append(f"{self.ssim_weight:g}·(1 − {'MS-SSIM' if self.ssim_scales > 1 else 'SSIM'})")
        return " + ".join(parts)

    def trainable(self) -> list[nn.Parameter]:
        """Parameters the optimizer must update besides the network's (the learned σ)."""
        return [self.log_sigma] if self.log_sigma is not None else []

    def state(self) -> dict[str, torch.Tensor]:
        """What a checkpoint keeps (the learned σ; the frozen VGG is read from its own file)."""
        return {"log_sigma": self.log_sigma.detach().cpu()} if self.log_sigma is not None else {}

    def decoder_log_sigma(self) -> float | None:
        """The learned log σ, for the evaluation's likelihood (None: no σ is learned, σ² = ½ is the SSE's)."""
        return float(self.log_sigma.detach()) if self.log_sigma is not None else None

    def load_state(self, state: dict[str, torch.Tensor] | None) -> None:
        if self.log_sigma is not None and state and "log_sigma" in state:
            with torch.no_grad():
                self.log_sigma.copy_(state["log_sigma"])

    @staticmethod
    def _average_over_ranks(grad: torch.Tensor) -> torch.Tensor:
        """The learned σ lives outside the DDP-wrapped network: its gradient is averaged here, in the
        backward of every rank (each computes it once per step, so the collectives pair up)."""
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            grad = grad.clone()
            dist.all_reduce(grad)
            grad /= dist.get_world_size()
        return grad

    def forward(self, out, x: torch.Tensor, beta: torch.Tensor) -> LossTerms:
        parts = self.vae_loss(out.logits, x, out.kl, beta)
        if self.plain:
            return LossTerms(parts.loss, parts.rec, parts.kl, {})
        extra: dict[str, torch.Tensor] = {}
        dims = x[0].numel()
        if self.recon == "sse":
            rec_term = parts.rec
        else:
            if self.log_sigma is not None:
                log_var = 2 * self.log_sigma.float()
            else:  # the maximum-likelihood σ² of this batch; no gradient needed through it (it is optimal)
                log_var = torch.log((parts.rec.detach() / dims).clamp_min(1e-6))
            rec_term = 0.5 * parts.rec * torch.exp(-log_var) + 0.5 * dims * (log_var + LOG_2PI)
            extra["sigma"] = torch.exp(0.5 * log_var).detach()
            extra["rec_nll"] = rec_term.detach()
        if self.free_bits:  # the one KL in plain torch: the floor needs each dimension's batch mean
            kl_term = free_bits_kl(out.mu, out.logvar, self.free_bits)
            extra["kl_penalty"] = kl_term.detach()
            extra["kl_dims_under_floor"] = kl_floor_active(out.mu, out.logvar, self.free_bits).float()
        else:
            kl_term = parts.kl
        loss = rec_term + beta * kl_term
        if self.perceptual is not None or self.ssim_weight:
            x_hat = torch.sigmoid(out.logits.float())
            if self.perceptual is not None:
                with self.autocast():
                    p = self.perceptual(x_hat, x).float().mean()
                loss = loss + self.perceptual_weight * p
                extra["perceptual"] = p.detach()
            if self.ssim_weight:
                s = (ms_ssim_loss(x_hat, x, self.ssim_scales) if self.ssim_scales > 1 else ssim_loss(x_hat, x)).mean()
                loss = loss + self.ssim_weight * s
                extra["ssim_loss"] = s.detach()
        return LossTerms(loss, parts.rec, parts.kl, extra)
