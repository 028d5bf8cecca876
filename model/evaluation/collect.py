"""One pass over a split: per-image quality numbers, latent statistics, IWAE weights, worst examples.

Per image, through the posterior mean (x̂ = sigmoid(decode(μ))): MSE, PSNR, SSIM, high-frequency
energy of input and reconstruction, MSE inside and outside the face ellipse; through one sampled z
(the trainer's loss with β = 1): SSE and KL. Latent statistics are running sums. The first
``iwae_images`` images also get K importance-sampled log-weights. Everything stays on the device
until the end of a batch's work; the per-image numbers go to the CPU once per batch, in one copy, and
the worst images of each failure mode are kept on the device (``WorstK``) and copied once, at the end.
Other readers of the split can share the pass (``also``): a training run's test metrics and pictures do.
Under DDP each rank reads its own share of the split and the results are gathered at the end.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

import torch

from model.evaluation.settings import EvalSettings
from model.losses.kl import kl_per_dim
from model.metrics import (LatentStats, face_ellipse_mask, high_frequency_energy, iwae_log_weights, mse_per_image,
                           psnr, region_mse, ssim)
from model.metrics.latent import LatentResult
from model.training.validate import Failure, WorstK, worst_first

#: Failure modes shown in failure_modes.png: name → what its score is (largest first).
MODES = {
    "overall": "highest MSE/pixel",
    "accessory": "highest MSE/pixel among faces with an accessory attribute",
    "blur": "lowest sharpness (high-frequency energy kept)",
    "background": "highest MSE/pixel outside the face ellipse",
}
PER_IMAGE = ("mse", "psnr", "ssim", "hf_input", "hf_recon", "mse_face", "mse_outside", "sse_sampled", "kl")


@dataclass
class Collected:
    keys: list[str]
    per_image: dict[str, torch.Tensor]  # PER_IMAGE name → [N] float64, CPU, in ``keys`` order
    latent: LatentResult
    mean_face: torch.Tensor  # 3×H×W, CPU
    kept_inputs: torch.Tensor  # the first ``samples`` images and their reconstructions (CPU)
    kept_recons: torch.Tensor
    iwae_log_w: torch.Tensor  # [n, K] float64, CPU
    worst: dict[str, list[Failure]]  # mode → images, worst first
    pixels: int


@torch.no_grad()
def collect(model: torch.nn.Module, batches: Iterable[tuple[torch.Tensor, list[str]]], rt: Any, settings: EvalSettings,
            *, accessory_keys: frozenset[str] = frozenset(), progress: Callable[[int], None] | None = None,
            also: Sequence[Callable[[torch.Tensor, list[str]], None]] = ()) -> Collected:
    """Run the model over ``batches`` ((images, keys) of this rank's share) and gather all ranks' results.

    ``rt`` gives ``device``, ``rank``, ``world_size``, ``distributed`` and ``autocast()``. ``also``: what
    else reads this pass, each called with every batch as the loader gave it (the model in eval mode, no
    gradients); with any, the pass reads the whole share even where ``settings.images`` looks at fewer.
    """
    was_training = model.training
    model.eval()
    dev = rt.device
    gen = torch.Generator(device=dev).manual_seed(settings.seed + 7919 * rt.rank)
    share = lambda n: (n + rt.world_size - 1 - rt.rank) // rt.world_size if n else 0  # noqa: E731  this rank's part
    limit, iwae_left, keep_left = share(settings.images) or None, share(settings.iwae_images), share(settings.samples)
    latent = LatentStats(model.cfg.latent_dim, dev)
    worst = {mode: WorstK(settings.worst) for mode in MODES}
    columns: dict[str, list[torch.Tensor]] = {name: [] for name in PER_IMAGE}
    keys_seen: list[str] = []
    kept_x, kept_r, log_ws = [], [], []
    face_sum, mask = None, None
    try:
        for x, keys in batches:
            for see in also:
                see(x, keys)
            if limit is not None:
                x, keys = x[:limit - len(keys_seen)], keys[:limit - len(keys_seen)]
            if not len(keys):
                if also:
                    continue
                break
            x = x.float()
            with rt.autocast():
                mu, logvar = model.encode(x)
            mu, logvar = mu.float(), logvar.float()
            with rt.autocast():
                recon = model.decode(mu)  # fp32 [0, 1]
                eps = torch.randn(mu.shape, generator=gen, device=dev)
                sampled = model.decode(mu + torch.exp(0.5 * logvar) * eps)
            if mask is None:
                mask = face_ellipse_mask(*x.shape[-2:], device=dev)
                face_sum = torch.zeros_like(x[0], dtype=torch.float64)
            inside, outside = region_mse(recon, x, mask)
            row = {
                "mse": mse_per_image(recon, x), "psnr": psnr(recon, x), "ssim": ssim(recon, x),
                "hf_input": high_frequency_energy(x), "hf_recon": high_frequency_energy(recon),
                "mse_face": inside, "mse_outside": outside,
                "sse_sampled": (sampled - x).pow(2).flatten(1).sum(1),
                "kl": kl_per_dim(mu, logvar).sum(1),
            }
            cpu = torch.stack([row[n].double() for n in PER_IMAGE]).cpu()  # one copy per batch
            for name, values in zip(PER_IMAGE, cpu):
                columns[name].append(values)
            latent.update(mu, logvar)
            face_sum += x.double().sum(0)
            sharp = row["hf_recon"] / row["hf_input"].clamp_min(1e-12)
            accessory = torch.tensor([k in accessory_keys for k in keys], device=dev)
            worst["overall"].push(row["mse"], row["mse"], keys, x, recon)
            worst["accessory"].push(row["mse"].masked_fill(~accessory, float("nan")), row["mse"], keys, x, recon)
            worst["blur"].push(-sharp, sharp, keys, x, recon)
            worst["background"].push(outside, outside, keys, x, recon)
            if keep_left:
                kept_x.append(x[:keep_left].cpu())
                kept_r.append(recon[:keep_left].cpu())
                keep_left -= len(kept_x[-1])
            if iwae_left:
                n = min(iwae_left, x.shape[0])

                def decode(z: torch.Tensor) -> torch.Tensor:
                    with rt.autocast():
                        return model.decode(z.float())

                log_ws.append(iwae_log_weights(x[:n], mu[:n], logvar[:n], decode, settings.iwae_k, generator=gen,
                                               log_sigma=settings.decoder_log_sigma).cpu())
                iwae_left -= n
            keys_seen += list(keys)
            if progress is not None:
                progress(len(keys))
    finally:
        model.train(was_training)
    if face_sum is None:
        raise ValueError("the evaluation got no images (an empty split share?)")

    per_image = {name: torch.cat(columns[name]) for name in PER_IMAGE}
    empty = torch.zeros(0, *face_sum.shape)
    part = {"keys": keys_seen, "per_image": per_image, "worst": {m: w.result() for m, w in worst.items()},
            "log_w": _cat(log_ws, (0, settings.iwae_k)),
            "kept_x": _cat(kept_x, empty.shape), "kept_r": _cat(kept_r, empty.shape)}
    face_sum = face_sum.cpu()
    if rt.distributed:
        part, face_sum = _gather(part, face_sum, latent)
    n = len(part["keys"])
    return Collected(part["keys"], part["per_image"], latent.result(), (face_sum / n).float(),
                     part["kept_x"][:settings.samples], part["kept_r"][:settings.samples], part["log_w"],
                     {m: worst_first(h, settings.worst) for m, h in part["worst"].items()}, face_sum.numel())


def _cat(parts: list[torch.Tensor], empty_shape: tuple) -> torch.Tensor:
    return torch.cat(parts) if parts else torch.zeros(empty_shape, dtype=torch.float64)


def _gather(part: dict, face_sum: torch.Tensor, latent: LatentStats) -> tuple[dict, torch.Tensor]:
    """Every rank's part, joined in rank order (all ranks take part; all get the result)."""
    import torch.distributed as dist

    world = dist.get_world_size()
    dist.all_reduce(latent.state)
    parts: list[Any] = [None] * world
    dist.all_gather_object(parts, {**part, "face_sum": face_sum})
    joined = {
        "keys": [k for p in parts for k in p["keys"]],
        "per_image": {name: torch.cat([p["per_image"][name] for p in parts]) for name in PER_IMAGE},
        "worst": {m: [e for p in parts for e in p["worst"][m]] for m in MODES},
        "log_w": torch.cat([p["log_w"] for p in parts]),
        "kept_x": torch.cat([p["kept_x"] for p in parts]),
        "kept_r": torch.cat([p["kept_r"] for p in parts]),
    }
    return joined, sum(p["face_sum"] for p in parts)
