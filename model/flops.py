"""The model's FLOP count: the numerator of the MFU line (train.py, bench.train_step).

FLOPs are counted, not estimated: ``torch.utils.flop_counter.FlopCounterMode`` adds up the
convolution, transposed-convolution and linear work of one forward + backward. The denominator,
the device's measured matmul peak, is in :mod:`model.training.observe`.
"""
from __future__ import annotations

from typing import Callable

import torch


def count_step_flops(step: Callable[[], torch.Tensor]) -> int:
    """FLOPs of ``step()``, which must run one forward and the backward of its returned loss."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        loss = step()
        if loss is not None and loss.requires_grad:
            loss.backward()
    return int(counter.get_total_flops())


def vae_flops_per_image(vae_cfg) -> int:
    """Counted forward+backward FLOPs per image of ``ConvVAE(vae_cfg)`` with its loss.

    Counted on a fresh CPU model with the reference loss (FLOPs depend on shapes, not weights or
    device), inside ``fork_rng``: the caller's RNG stream does not move, so a run that shows the
    MFU line stays bit-identical to one that doesn't (resume equivalence depends on it)."""
    from kernels import vae_loss
    from model.vae import ConvVAE

    with torch.random.fork_rng(devices=[]):
        probe = ConvVAE(vae_cfg, loss_impl="torch")
        x = torch.rand(2, 3, vae_cfg.image_size, vae_cfg.image_size)

        def step():
            out = probe(x)
            return vae_loss(out.logits, x, out.kl, 1.0, logits=True, impl="torch").loss

        return count_step_flops(step) // 2
