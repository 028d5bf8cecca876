"""Evaluate a model on a split and write evaluation.json, evaluation.png and failure_modes.png.

Used by ``python -m model evaluate`` (settings.FULL) and at the end of every training run
(settings.LIGHT). All ranks read their share of the split and take part in the gathering; rank 0
draws the prior samples, computes the summary and writes the files.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import torch

from model.evaluation.collect import collect
from model.evaluation.figures import plot_evaluation, plot_failure_modes
from model.evaluation.settings import EvalSettings
from model.evaluation.summary import summarize
from model.metrics.fid import PROTOCOL, fid_between, write_png_folder
from model.training.checkpoint import write_text
from pipeline.parallel import ProgressBar

#: Attributes that are something worn, not the face itself: the "accessory" failure mode.
ACCESSORIES = ("Wearing_Hat", "Eyeglasses", "Wearing_Earrings", "Wearing_Necklace", "Wearing_Necktie")
FILES = ("evaluation.json", "evaluation.png", "failure_modes.png")


def evaluate_model(model: torch.nn.Module, batches: Iterable, rt: Any, *, shards: Path, split: str,
                   settings: EvalSettings, out_dir: Path, total: int, console: Any = None,
                   source: dict[str, Any] | None = None,
                   also: Sequence[Callable[[torch.Tensor, list[str]], None]] = ()) -> dict[str, Any] | None:
    """Evaluate ``model`` on ``batches`` ((images, keys) of this rank's share of ``split``); ``total``:
    images of the whole split; ``also``: other readers of the same pass (see :func:`collect`). Returns
    evaluation.json's content on rank 0, None on the others."""
    from pipeline.shards import read_attributes

    t0 = time.perf_counter()
    attrs = read_attributes(shards, split, required=False)
    accessory_keys = frozenset()
    if attrs is not None:
        cols = [attrs.names.index(a) for a in ACCESSORIES if a in attrs.names]
        accessory_keys = frozenset(k for k, m in zip(attrs.keys, attrs.masks) if any(m >> c & 1 for c in cols))
    shown = rt.is_main and console is not None and not getattr(console, "quiet", False)
    with ProgressBar(shown, f"evaluating {split}", settings.images or total) as bar:
        c = collect(model, batches, rt, settings, accessory_keys=accessory_keys, progress=bar.advance, also=also)
    if not rt.is_main:
        return None

    samples = _prior_samples(model, rt, settings) if settings.samples else None
    table = None
    if attrs is not None:
        table = (list(attrs.names), torch.from_numpy(attrs.table(c.keys)))
    note = None if attrs is not None else f"the shards in {shards} carry no attributes (no list_attr_celeba.txt at preshard)"
    ev: dict[str, Any] = {"split": split, **(source or {})}
    ev.update(summarize(c, settings, samples=samples, attributes=table, attributes_note=note))
    ev.update(_fid(c.kept_inputs, samples, out_dir, rt.device, settings))
    ev["settings"] = settings.to_dict()
    out_dir.mkdir(parents=True, exist_ok=True)
    plot_evaluation(ev, out_dir / "evaluation.png")
    plot_failure_modes(c.worst, out_dir / "failure_modes.png")
    # The whole cost, figures included (what the ≤ 10 % budget of a run's evaluation counts); writing the
    # JSON itself, the one step after the clock stops, takes milliseconds.
    ev["seconds"] = round(time.perf_counter() - t0, 2)
    write_text(out_dir / "evaluation.json", json.dumps(_finite(ev), indent=2) + "\n")
    return ev


@torch.no_grad()
def _prior_samples(model: torch.nn.Module, rt: Any, settings: EvalSettings) -> torch.Tensor:
    """decode(z), z ~ N(0, I), with a generator of the evaluation's own (same seed, same faces)."""
    gen = torch.Generator(device=rt.device).manual_seed(settings.seed + 2)
    z = torch.randn(settings.samples, model.cfg.latent_dim, generator=gen, device=rt.device)
    was_training = model.training
    model.eval()
    try:
        with rt.autocast():
            return torch.cat([model.decode(z[i:i + settings.batch_size]).float().cpu()
                              for i in range(0, len(z), settings.batch_size)])
    finally:
        model.train(was_training)


def _fid(test: torch.Tensor, samples: torch.Tensor | None, out_dir: Path, device: torch.device,
         settings: EvalSettings) -> dict[str, Any]:
    if not settings.fid:
        return {"fid": None, "fid_note": "not asked for (python -m model evaluate --fid)"}
    n = min(len(test), 0 if samples is None else len(samples))
    if n < 2:
        return {"fid": None, "fid_note": "FID needs --samples of at least 2"}
    real = write_png_folder(test[:n], out_dir / "fid" / "test")
    fake = write_png_folder(samples[:n], out_dir / "fid" / "samples")
    protocol = PROTOCOL.format(n=n, size=test.shape[-1])
    score, reason = fid_between(real, fake, device)  # (None, why) without pytorch-fid or its weights
    return {"fid": score, "fid_note": reason or "computed", "fid_protocol": protocol, "fid_folders": [str(real), str(fake)]}


def _finite(obj: Any) -> Any:
    """JSON has no NaN/inf: such values are written as null."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj

