"""Validation/test metrics, and the worst reconstructions for failures.png.

Per image: reconstruction error SSE (sum over C·H·W of (sigmoid(logits) − x)²), KL(q(z|x) ‖ N(0, I))
summed over latents, and the ELBO = −(SSE + KL) with β = 1 (the bound itself, whatever β training
used). Reported: MSE per pixel = SSE / (C·H·W), KL per image, ELBO per image, all means over the split.
z is sampled with a generator of its own (seed + rank), so evaluating never moves the training RNG
and gives the same numbers every time for the same weights.
"""
from __future__ import annotations

import heapq
import itertools
from dataclasses import dataclass, field
from typing import Any, Iterable

import torch
from torch import nn

from model.training.runtime import Runtime


@dataclass(order=True)
class Failure:
    """One badly reconstructed image, ranked by ``score`` (then arrival), never by its tensors."""

    score: float
    tie: int
    key: str = field(compare=False)
    image: torch.Tensor = field(compare=False, repr=False)  # 3×H×W, CPU, [0, 1]
    reconstruction: torch.Tensor = field(compare=False, repr=False)
    value: float = field(compare=False, default=0.0)  # what its label shows (SSE, MSE, sharpness …)


class WorstK:
    """The K highest-scoring images seen so far (a min-heap; only those images go to the CPU)."""

    def __init__(self, k: int):
        self.k, self.heap, self._arrival = k, [], itertools.count()

    def push(self, scores: torch.Tensor, values: torch.Tensor, keys: list[str] | None, x: torch.Tensor,
             recon: torch.Tensor) -> None:
        """Merge a batch: ``scores`` rank (non-finite ones never enter), ``values`` label the images."""
        valid = torch.isfinite(scores)
        if not self.k or not bool(valid.any()):
            return
        top = torch.topk(scores.masked_fill(~valid, float("-inf")), min(self.k, int(valid.sum())))
        idx = top.indices
        images, recons = x[idx].float().cpu(), recon[idx].float().cpu()
        for j, (score, i) in enumerate(zip(top.values.tolist(), idx.tolist())):
            item = Failure(score, next(self._arrival), keys[i] if keys else str(i), images[j].contiguous(),
                           recons[j].contiguous(), float(values[i]))
            if len(self.heap) < self.k:
                heapq.heappush(self.heap, item)
            elif item > self.heap[0]:
                heapq.heapreplace(self.heap, item)


@dataclass
class EvalResult:
    metrics: dict[str, float]
    failures: list[Failure] = field(default_factory=list)  # worst first


@torch.no_grad()
def evaluate(model: nn.Module, batches: Iterable[Any], rt: Runtime, *, impl: str, seed: int,
             worst_k: int = 0) -> EvalResult:
    """Mean SSE, MSE/pixel, KL and ELBO over ``batches`` (all ranks together under DDP).

    ``batches`` yields images, or (images, keys) when ``worst_k`` > 0 (keys name the failures).
    """
    from kernels import sigmoid_sse

    was_training = model.training
    model.eval()
    gen = torch.Generator(device=rt.device).manual_seed(seed + 7919 * rt.rank)
    sums = torch.zeros(3, dtype=torch.float64, device=rt.device)  # SSE, KL, count
    worst = WorstK(worst_k)
    pixels = None
    try:
        for batch in batches:
            x, keys = batch if isinstance(batch, (tuple, list)) else (batch, None)
            pixels = x[0].numel()
            # The training forward with noise from this evaluation's own generator.
            eps = torch.randn(x.shape[0], model.cfg.latent_dim, generator=gen, device=x.device)
            with rt.autocast():
                logits, _, _, kl = model(x, eps)
            sse = sigmoid_sse(logits, x, impl=impl)
            sums += torch.stack([sse.sum().double(), kl.sum().double(),
                                 torch.tensor(float(x.shape[0]), dtype=torch.float64, device=x.device)])
            if worst_k:
                worst.push(sse, sse, keys, x, torch.sigmoid(logits.float()))
    finally:
        model.train(was_training)

    found = worst.heap
    if rt.distributed:
        import torch.distributed as dist

        dist.all_reduce(sums)
        if worst_k:
            gathered: list[list[Failure]] = [[] for _ in range(rt.world_size)]
            dist.all_gather_object(gathered, found)
            found = [f for part in gathered for f in part]
    sse_sum, kl_sum, count = (float(v) for v in sums.cpu())
    n = max(count, 1.0)
    metrics = {
        "count": int(count),
        "rec": sse_sum / n,
        "mse_per_pixel": sse_sum / n / (pixels or 1),
        "kl": kl_sum / n,
        "elbo": -(sse_sum + kl_sum) / n,
        "elbo_loss": (sse_sum + kl_sum) / n,
    }
    return EvalResult(metrics, sorted(found, reverse=True)[:worst_k] if worst_k else [])

