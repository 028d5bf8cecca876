"""``summary``, ``sample``, ``reconstruct`` and ``interpolate``: what a checkpoint is and what it draws.

Each command takes the parsed arguments and the loaded :class:`~model.use.loading.Trained`, checks
the rest of its input, computes, writes its files whole and prints what it wrote.
"""
from __future__ import annotations

import argparse
import math

import torch
from rich.console import Console
from rich.table import Table

from model.use import latent
from model.use.faces import first_samples, named_faces
from model.use.loading import Trained
from model.evaluation.outputs import check_folder, print_written, write_atomic, write_each, write_gif
from model.evaluation.pictures import chunked, plot_table
from pipeline.errors import ConfigError

#: Faces per row of a reconstruction table (inputs, then their reconstructions below).
PAIRS_PER_ROW = 8
#: ``reconstruct`` without faces: the first this many samples of ``--split``.
RECONSTRUCT_N = 16
#: The most faces one reconstruction picture shows (``--n`` or FACEs).
RECONSTRUCT_N_MAX = 256


def summary(args: argparse.Namespace, trained: Trained, console: Console) -> int:
    """The checkpoint's training state and config, then the layer table and parameter count."""
    from model.summary import print_summary

    info = Table(title=f"checkpoint {trained.path}", show_header=False)
    info.add_column("key", style="bold")
    info.add_column("value")
    elbo = trained.best_val_elbo
    for key, value in (("step", f"{trained.step:,}"), ("epoch", trained.epoch),
                       ("best val ELBO", "—" if elbo is None else f"{elbo:,.2f}"),
                       ("weights fingerprint", trained.fingerprint),
                       *((k, trained.config.get(k)) for k in ("data", "beta", "lr", "batch_size", "epochs", "seed"))):
        info.add_row(key, str(value))
    console.print(info)
    print_summary(trained.model, console)
    console.print("summary writes no files")
    return 0


def sample(args: argparse.Namespace, trained: Trained, console: Console) -> int:
    """A grid of decoded prior samples (and one PNG per sample with ``--each``)."""
    from model.training.observe import plot_samples

    if not args.temperature > 0:
        raise ConfigError(f"--temperature must be > 0, got {args.temperature}")
    out = trained.output(args.out, "samples.png")
    check_folder(args.each, "--each")
    z = latent.sample_latents(args.n, trained.model.cfg.latent_dim, temperature=args.temperature, seed=args.seed)
    images = latent.decode(trained.model, z)
    title = f"{args.n} samples, z ~ N(0, {args.temperature:g}²·I), seed {args.seed} ({trained.path.name}, step {trained.step:,})"
    written = [(write_atomic(out, lambda tmp: plot_samples(images, tmp, title=title)), "grid of samples")]
    if args.each:
        paths = write_each(images, args.each, [f"sample-{i:04d}" for i in range(args.n)])
        written.append((args.each, f"{len(paths)} PNGs of {images.shape[-1]}×{images.shape[-2]}"))
    print_written(console, written)
    return 0


def reconstruct(args: argparse.Namespace, trained: Trained, console: Console) -> int:
    """Faces (files, keys, or the first ``--n`` of a split) above their reconstructions, with the MSE of each."""
    if args.faces and args.n is not None:
        raise ConfigError("give either faces (files or keys) or --n, not both")
    if not args.faces and args.n is None:
        args.n = RECONSTRUCT_N
    if args.n is not None and not 1 <= args.n <= RECONSTRUCT_N_MAX:
        raise ConfigError(f"--n must be in 1..{RECONSTRUCT_N_MAX}, got {args.n}")
    out = trained.output(args.out, "reconstructions.png")
    check_folder(args.each, "--each")
    faces = named_faces(args, trained, console) if args.faces else first_samples(
        args.data or trained.default_shards(), args.split, args.n, device=trained.device, backend=args.backend,
        size=trained.model.cfg.image_size, crop=trained.crop)
    mu, _ = latent.encode(trained.model, faces.images)
    recon = latent.decode(trained.model, mu)
    mse = latent.mse_per_image(recon, faces.images).tolist()

    rows, cell_labels, row_labels = [], [], []
    for idx in chunked(range(len(faces.labels)), PAIRS_PER_ROW):
        rows += [[faces.images[i] for i in idx], [recon[i] for i in idx]]
        cell_labels += [[f"{faces.labels[i]}\nMSE {mse[i]:.4f}" for i in idx], []]
        row_labels += ["input", "reconstruction"]
    title = f"inputs and their reconstructions through μ ({trained.path.name}, step {trained.step:,})"
    written = [(plot_table(rows, out, title=title, cell_labels=cell_labels, row_labels=row_labels),
                f"{len(mse)} inputs above their reconstructions")]
    if args.each:
        write_each(recon, args.each, [f"{label}-recon" for label in faces.labels])
        written.append((args.each, f"{len(mse)} reconstructions, one PNG each (LABEL-recon.png)"))

    console.print("[bold]reconstruction error[/] per face: mean squared error over its pixels in [0, 1], PSNR = −10·log10 MSE")
    table = Table()
    table.add_column("face")
    table.add_column("MSE", justify="right")
    table.add_column("PSNR dB", justify="right")
    for label, err in zip(faces.labels, mse):
        table.add_row(label, f"{err:.5f}", f"{-10 * math.log10(max(err, 1e-12)):.2f}")
    table.add_section()
    table.add_row("mean", f"{sum(mse) / len(mse):.5f}", "")
    console.print(table)
    print_written(console, written)
    return 0


def interpolate(args: argparse.Namespace, trained: Trained, console: Console) -> int:
    """A strip from face A to face B through the latent space (and an animated GIF with ``--gif``)."""
    if args.steps < 2:
        raise ConfigError(f"--steps must be >= 2, got {args.steps}")
    out = trained.output(args.out, "interpolation.png")
    faces = named_faces(args, trained, console)
    mu, _ = latent.encode(trained.model, faces.images)
    codes = latent.walk(mu[0], mu[1], args.steps, args.mode)
    frames = latent.decode(trained.model, codes)
    ts = torch.linspace(0, 1, args.steps).tolist()
    a, b = faces.labels
    row = [faces.images[0], *frames, faces.images[1]]
    labels = [f"{a}\n(input)", *(f"t={t:.2f}" for t in ts), f"{b}\n(input)"]
    title = (f"{args.mode} walk {a} → {b} between their μ, {args.steps} steps, angle "
             f"{latent.angle_degrees(mu[0], mu[1]):.0f}° ({trained.path.name}, step {trained.step:,})")
    written = [(plot_table([row], out, title=title, cell_labels=[labels]), f"strip of {args.steps} decoded codes")]
    if args.gif:
        gif = out.with_suffix(".gif")
        written.append((write_gif(frames, gif), f"animation of the {args.steps} frames, forward and back"))
    print_written(console, written)
    return 0

