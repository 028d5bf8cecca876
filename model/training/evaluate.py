"""Validation/test metrics, and the worst reconstructions for failures.png.

Per image: reconstruction error SSE (sum over C·H·W of (sigmoid(logits) − x)²), KL(q(z|x) ‖ N(0, I))
summed over latents, and the ELBO = −(SSE + KL) with β = 1 (the bound itself, whatever β training
used). Reported: MSE per pixel = SSE / (C·H·W), KL per image, ELBO per image, all means over the split.
z is sampled with a generator of its own (seed + rank), so evaluating never moves the training RNG
and gives the same numbers every time for the same weights.
"""
from __future__ import annotations

import heapq
from dataclasses import dataclass, field
from typing import Any, Iterable

import torch
from torch import nn

from model.training.runtime import Runtime


@dataclass
class Failure:
    error: float  # SSE of this image
    key: str
    image: torch.Tensor  # 3×H×W, CPU, [0, 1]
    reconstruction: torch.Tensor

    def __lt__(self, other: "Failure") -> bool:  # heapq keeps the K largest errors
        return self.error < other.error


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
    worst: list[Failure] = []
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
                _keep_worst(worst, worst_k, sse, keys, x, logits)
    finally:
        model.train(was_training)

    if rt.distributed:
        import torch.distributed as dist

        dist.all_reduce(sums)
        if worst_k:
            gathered: list[list[Failure]] = [[] for _ in range(rt.world_size)]
            dist.all_gather_object(gathered, worst)
            worst = [f for part in gathered for f in part]
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
    return EvalResult(metrics, sorted(worst, reverse=True)[:worst_k] if worst_k else [])


def _keep_worst(heap: list[Failure], k: int, sse: torch.Tensor, keys: list[str] | None, x: torch.Tensor,
                logits: torch.Tensor) -> None:
    """Merge this batch's K largest errors into a size-K min-heap (only those images go to the CPU)."""
    top = torch.topk(sse, min(k, sse.shape[0]))
    errors = top.values.tolist()
    idx = top.indices
    images = x[idx].float().cpu()
    recons = torch.sigmoid(logits[idx].float()).cpu()
    for j, (err, i) in enumerate(zip(errors, idx.tolist())):
        item = Failure(err, keys[i] if keys else str(i), images[j].contiguous(), recons[j].contiguous())
        if len(heap) < k:
            heapq.heappush(heap, item)
        elif err > heap[0].error:
            heapq.heapreplace(heap, item)
