"""The network as a run uses it: built from config, placed on the device in the run's memory format,
wrapped in DDP as the runtime says. train.py and the train-step benchmark both
build it here, so what the benchmark measures is what training runs.
"""
from __future__ import annotations

import torch
from torch import nn

from model.training.runtime import Runtime
from model.vae import ConvVAE, VAEConfig


def build_model(vae_cfg: VAEConfig, rt: Runtime, loss_impl: str) -> tuple[ConvVAE, nn.Module]:
    """(raw, model): ``raw`` is the ConvVAE itself (checkpoints, evaluation, pictures); ``model`` is
    what the training step calls (``raw``, under DDP when distributed). The step compiles it together
    with the loss (:class:`model.training.train_step.TrainStep`)."""
    raw = ConvVAE(vae_cfg, loss_impl=loss_impl)
    if rt.sync_batchnorm:
        raw = nn.SyncBatchNorm.convert_sync_batchnorm(raw)
    raw = raw.to(rt.device, memory_format=torch.channels_last if rt.channels_last else torch.contiguous_format)
    model: nn.Module = raw
    if rt.distributed:
        from torch.nn.parallel import DistributedDataParallel as DDP

        model = DDP(raw, device_ids=[rt.local_rank] if rt.device.type == "cuda" else None)
    return raw, model
