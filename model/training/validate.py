"""Validation metrics (every epoch, :func:`validate`), the same numbers on the test split (:class:`ElboSums`,
fed by the closing pass), and the worst reconstructions for failures.png.

Per image: reconstruction error SSE (sum over C·H·W of (sigmoid(logits) − x)²), KL(q(z|x) ‖ N(0, I))
summed over latents, and the ELBO = −(SSE + KL) with β = 1 (the bound itself, whatever β training
used). Reported: MSE per pixel = SSE / (C·H·W), KL per image, ELBO per image, all means over the split.
z is sampled with a generator of its own (seed + rank), so evaluating never moves the training RNG
and gives the same numbers every time for the same weights.
"""
from __future__ import annotations

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
    """The K highest-scoring images seen so far, kept on the device: a batch is merged with
    ``torch.topk`` over the K kept and the batch's own top K, so ``push`` never waits for the device
    (no ``.item()``, no copy to the host); :meth:`result` copies the K images to the CPU once, at the end.
    Non-finite scores never enter (they are ranked as −inf and dropped by ``result``); among equal
    scores, which image is kept is torch.topk's choice."""

    def __init__(self, k: int):
        self.k = k
        self.keys: list[str] = []  # every key pushed, by arrival position (host side: keys are strings)
        self.scores = self.values = self.position = self.images = self.recons = None

    def push(self, scores: torch.Tensor, values: torch.Tensor, keys: list[str] | None, x: torch.Tensor,
             recon: torch.Tensor) -> None:
        """Merge a batch: ``scores`` rank (non-finite ones never enter), ``values`` label the images."""
        if not self.k:
            return
        n, start = scores.shape[0], len(self.keys)
        self.keys += list(keys) if keys else [str(start + i) for i in range(n)]
        ranked = scores.float().masked_fill(~torch.isfinite(scores), float("-inf"))
        top = torch.topk(ranked, min(self.k, n))  # shapes alone decide the sizes: no sync
        idx = top.indices
        batch = (top.values, values[idx].float(), idx + start, x[idx].float(), recon[idx].float())
        if self.scores is not None:
            batch = tuple(torch.cat([kept, new]) for kept, new in
                          zip((self.scores, self.values, self.position, self.images, self.recons), batch))
            keep = torch.topk(batch[0], min(self.k, batch[0].shape[0]), sorted=False).indices
            batch = tuple(t[keep] for t in batch)
        self.scores, self.values, self.position, self.images, self.recons = batch

    def result(self) -> list[Failure]:
        """The kept images as :class:`Failure` (CPU tensors), worst first: the one copy to the host."""
        if self.scores is None:
            return []
        scores, values, position = (t.double().cpu() for t in (self.scores, self.values, self.position))
        images, recons = self.images.cpu(), self.recons.cpu()
        found = [Failure(float(s), int(p), self.keys[int(p)], images[j].contiguous(), recons[j].contiguous(), float(v))
                 for j, (s, v, p) in enumerate(zip(scores, values, position)) if s > float("-inf")]
        return worst_first(found, self.k)


def worst_first(failures: list[Failure], k: int) -> list[Failure]:
    """The ``k`` highest scores, highest first (equal scores: the earlier arrival first)."""
    return sorted(failures, key=lambda f: (-f.score, f.tie))[:k]


@dataclass
class EvalResult:
    metrics: dict[str, float]
    failures: list[Failure] = field(default_factory=list)  # worst first


class ElboSums:
    """The validation's sums (SSE, KL, images) and worst reconstructions, a batch at a time (:meth:`add`),
    so that the test's numbers can ride along the closing evaluation's pass over the split instead of a
    pass of their own (train.py). ``add`` runs the model as it is: the caller puts it in eval mode."""

    def __init__(self, model: nn.Module, rt: Runtime, *, impl: str, seed: int, worst_k: int = 0):
        from kernels import sigmoid_sse

        self.model, self.rt, self.impl, self.worst_k, self._sse = model, rt, impl, worst_k, sigmoid_sse
        self.gen = torch.Generator(device=rt.device).manual_seed(seed + 7919 * rt.rank)
        self.sums = torch.zeros(3, dtype=torch.float64, device=rt.device)  # SSE, KL, count (added on the device)
        self.worst = WorstK(worst_k)
        self.pixels: int | None = None

    @torch.no_grad()
    def add(self, x: torch.Tensor, keys: list[str] | None = None) -> None:
        """One batch; ``keys`` name its images among the failures."""
        self.pixels = x[0].numel()
        # The training forward with noise from this evaluation's own generator.
        eps = torch.randn(x.shape[0], self.model.cfg.latent_dim, generator=self.gen, device=x.device)
        with self.rt.autocast():
            logits, _, _, kl = self.model(x, eps)
        sse = self._sse(logits, x, impl=self.impl)
        self.sums[:2] += torch.stack([sse.sum(), kl.sum()]).double()
        self.sums[2] += x.shape[0]  # a Python number: a kernel argument, not a copy from the host
        if self.worst_k:
            self.worst.push(sse, sse, keys, x, torch.sigmoid(logits.float()))

    def result(self) -> EvalResult:
        """Means over every batch added, all ranks together under DDP (every rank calls this)."""
        found = self.worst.result()
        sums = self.sums
        if self.rt.distributed:
            import torch.distributed as dist

            dist.all_reduce(sums)
            if self.worst_k:
                gathered: list[list[Failure]] = [[] for _ in range(self.rt.world_size)]
                dist.all_gather_object(gathered, found)
                found = [f for part in gathered for f in part]
        sse_sum, kl_sum, count = (float(v) for v in sums.cpu())
        n = max(count, 1.0)
        metrics = {
            "count": int(count),
            "rec": sse_sum / n,
            "mse_per_pixel": sse_sum / n / (self.pixels or 1),
            "kl": kl_sum / n,
            "elbo": -(sse_sum + kl_sum) / n,
            "elbo_loss": (sse_sum + kl_sum) / n,
        }
        return EvalResult(metrics, worst_first(found, self.worst_k))


@torch.no_grad()
def validate(model: nn.Module, batches: Iterable[Any], rt: Runtime, *, impl: str, seed: int,
             worst_k: int = 0) -> EvalResult:
    """Mean SSE, MSE/pixel, KL and ELBO over ``batches`` (all ranks together under DDP): the per-epoch
    validation. ``batches`` yields images, or (images, keys) when ``worst_k`` > 0 (keys name the failures).
    """
    sums = ElboSums(model, rt, impl=impl, seed=seed, worst_k=worst_k)
    was_training = model.training
    model.eval()
    try:
        for batch in batches:
            x, keys = batch if isinstance(batch, (tuple, list)) else (batch, None)
            sums.add(x, keys)
    finally:
        model.train(was_training)
    return sums.result()
