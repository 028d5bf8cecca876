"""``python -m model.summary``: the layer table and the exact parameter count of the configured VAE.

Reads config.json (or ``--config``) plus the same ``--key value`` overrides as train.py, so the
table always describes the network that training would build. ``python -m model summary`` prints
the same table for the network of a trained checkpoint.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass

import torch
from rich.console import Console
from torch import nn

from model.vae import ConvVAE, VAEConfig, count_parameters


@dataclass
class LayerRow:
    name: str
    kind: str
    output_shape: tuple[int, ...]
    params: int


def layer_rows(model: ConvVAE) -> list[LayerRow]:
    """One row per leaf module, in execution order, with its output shape for one image of the configured size."""
    rows: list[LayerRow] = []
    hooks = []
    names = {m: n for n, m in model.named_modules()}

    def record(mod: nn.Module, _inp, out) -> None:
        shape = tuple(out.shape[1:]) if isinstance(out, torch.Tensor) else ()
        rows.append(LayerRow(names[mod], type(mod).__name__, shape,
                             sum(p.numel() for p in mod.parameters(recurse=False))))

    for mod in model.modules():
        if not list(mod.children()):
            hooks.append(mod.register_forward_hook(record))
    try:
        model.eval()
        with torch.no_grad():
            x = torch.zeros(1, model.cfg.in_channels, model.cfg.image_size, model.cfg.image_size,
                            device=next(model.parameters()).device)
            mu, logvar = model.encode(x)
            model.decode_logits(mu)
    finally:
        for h in hooks:
            h.remove()
    return rows


def parameter_groups(model: ConvVAE) -> dict[str, int]:
    """Parameters per part of the network, to explain where the total comes from."""
    groups = {
        "encoder convs + BatchNorm": model.encoder,
        "mu + logvar heads": nn.ModuleList([model.fc_mu, model.fc_logvar]),
        "decoder linear": model.fc_dec,
        "decoder transposed convs + BatchNorm": model.decoder,
    }
    return {name: count_parameters(m) for name, m in groups.items()}


def print_summary(model: ConvVAE, console: Console | None = None) -> int:
    """Print the table and the breakdown; return the exact trainable parameter count."""
    from rich.table import Table

    table = Table(title=f"ConvVAE {model.cfg.to_dict()}")
    for col, just in (("layer", "left"), ("type", "left"), ("output", "right"), ("params", "right")):
        table.add_column(col, justify=just)
    for row in layer_rows(model):
        table.add_row(row.name, row.kind, "×".join(map(str, row.output_shape)), f"{row.params:,}")
    total = count_parameters(model)
    table.add_section()
    for name, n in parameter_groups(model).items():
        table.add_row(name, "", "", f"{n:,}")
    table.add_row("[bold]total trainable[/]", "", "", f"[bold]{total:,}[/]")
    console = console or Console()
    console.print(table)
    buffers = sum(b.numel() for b in model.buffers())
    console.print(f"parameters: {total:,} trainable (+ {buffers:,} BatchNorm buffer values)")
    return total


def main(argv: list[str] | None = None) -> int:
    from model.training.config import load_config

    parser = argparse.ArgumentParser(prog="python -m model.summary", description=__doc__.splitlines()[0])
    cfg = load_config(argv, parser=parser)
    print_summary(ConvVAE(VAEConfig.from_dict(cfg)))
    return 0


if __name__ == "__main__":
    from pipeline.errors import cli_entry

    raise SystemExit(cli_entry(main)())
