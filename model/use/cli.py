"""``python -m model COMMAND``: summary, sample, reconstruct, interpolate, encode, attributes, edit, evaluate.

    python -m model summary                      # the default run's best.pt: its step, config, layers
    python -m model sample --n 64 --seed 1       # decoded prior samples, one grid
    python -m model reconstruct face.jpg 000217  # files or sample keys, above their reconstructions
    python -m model interpolate A B --gif        # a latent walk from A to B (strip + animation)
    python -m model encode --split test          # keys, mu, logvar (+ attributes) of a split, .npz
    python -m model attributes                   # one direction per CelebA attribute, beside the checkpoint
    python -m model edit 000217 --add Smiling=1.5 --add Eyeglasses=1
    python -m model evaluate --k 64 --fid       # PSNR, SSIM, IWAE bits/dim, active units, failure modes

Every command takes ``--run DIR`` (its ``checkpoints/best.pt``, or ``last.pt`` with ``--last``) or
``--checkpoint FILE``; without either, the default run of config.json. The parser lives here; the
commands live in commands_pictures.py, commands_latents.py and commands_evaluate.py.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable

from model.use import commands_evaluate, commands_latents, commands_pictures
from model.use.commands_pictures import RECONSTRUCT_N, RECONSTRUCT_N_MAX
from model.use.faces import AS_TRAINED, is_file_spec
from pipeline.errors import ConfigError, cli_entry
from pipeline.layout import SPLITS
from pipeline.limits import check_count, check_number
from pipeline.loader import BACKENDS

COMMANDS: dict[str, tuple[Callable, str]] = {
    "summary": (commands_pictures.summary, "the checkpoint's step and config, its layer table and parameter count"),
    "sample": (commands_pictures.sample, "a grid of faces decoded from the prior (same seed, same faces)"),
    "reconstruct": (commands_pictures.reconstruct, "faces above their reconstructions, with the MSE of each"),
    "interpolate": (commands_pictures.interpolate, "a latent walk from face A to face B: a strip (and a GIF)"),
    "encode": (commands_latents.encode, "keys, mu, logvar (and attributes) of every sample of a split, as .npz"),
    "attributes": (commands_latents.attributes, "one latent direction per CelebA attribute, saved beside the checkpoint"),
    "edit": (commands_latents.edit, "faces moved along attribute directions (--add NAME=AMOUNT or --sweep NAME)"),
    "evaluate": (commands_evaluate.evaluate, "PSNR, SSIM, IWAE bits/dim, active units, sharpness, regions, "
                 "attributes, diversity (evaluation.json/.png)"),
}


#: (command, option) → (flag, lowest or None where the command checks it with its own words, highest, why):
#: every count a command takes is bounded (pipeline/limits.py), and the refusal says the bound.
_SEED = ("--seed", -2 ** 62, 2 ** 62, "torch's seed range, with room for the offsets added per use")
_ENCODING = {"batch_size": ("--batch-size", 1, 4096, "images per encoder batch"),
             "max_samples": ("--max-samples", None, 100_000_000, "samples of a split"),
             "min_count": ("--min-count", None, 1_000_000, "faces on each side of an attribute")}
BOUNDS: dict[str, dict[str, tuple[str, int | None, int, str]]] = {
    "sample": {"n": ("--n", 1, 1024, "faces in one grid; for more, run again with another --seed"), "seed": _SEED},
    "reconstruct": {"n": ("--n", None, RECONSTRUCT_N_MAX, "faces in one picture"),
                    "faces": ("FACE", 0, RECONSTRUCT_N_MAX, "faces in one picture")},
    "interpolate": {"steps": ("--steps", None, 256, "frames in one strip")},
    "encode": _ENCODING,
    "attributes": _ENCODING,
    "edit": {**_ENCODING, "faces": ("FACE", 1, 64, "rows of one picture"),
             "steps": ("--steps", None, 64, "faces per sweep"),
             "add": ("--add", 0, 40, "edits per face; CelebA has 40 attributes"),
             "sweep": ("--sweep", 0, 40, "sweeps per face; CelebA has 40 attributes")},
    "evaluate": {"k": ("--k", None, 10_000, "importance samples per image"),
                 "worst": ("--worst", None, 64, "images per failure mode in one picture"),
                 "batch_size": ("--batch-size", None, 4096, "images per batch"),
                 "images": ("--images", None, 100_000_000, "images of a split"),
                 "iwae_images": ("--iwae-images", None, 100_000_000, "images of a split"),
                 "samples": ("--samples", None, 100_000_000, "images of a split"), "seed": _SEED},
}
#: Real-valued options: (flag, lowest, highest, why).
REAL_BOUNDS = {"temperature": ("--temperature", 0, 100, "the prior's std is 1"),
               "span": ("--span", 0, 100, "amounts of a direction; 1 is the whole average difference")}


def check_bounds(command: str, args: argparse.Namespace) -> None:
    """ConfigError naming the option and its bounds for a count (or repeated option) out of them."""
    for dest, (flag, low, high, why) in BOUNDS.get(command, {}).items():
        value = getattr(args, dest, None)
        if value is None:
            continue
        if isinstance(value, list):
            if len(value) > high or len(value) < (low or 0):
                raise ConfigError(f"{len(value):,} {flag} given: {flag} takes {low or 0}..{high} ({why})")
            continue
        if low is None:
            if value > high:
                raise ConfigError(f"{flag} must be at most {high:,} ({why}), got {value:,}")
        else:
            check_count(flag, value, low, high, why)
    for dest, (flag, low, high, why) in REAL_BOUNDS.items():
        if getattr(args, dest, None) is not None:
            check_number(flag, getattr(args, dest), low, high, why)


class _Parser(argparse.ArgumentParser):
    """Argument errors as one ConfigError line (exit code 2 through cli_entry), not a usage block."""

    def error(self, message: str):  # type: ignore[override]
        raise ConfigError(f"{self.prog}: {message}")


def _crop(text: str) -> int | None:
    if text.lower() == "none":
        return None
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive number of pixels or 'none', got {text!r}")
    return int(text)


def _parents() -> dict[str, argparse.ArgumentParser]:
    """Option groups shared by several commands."""
    ckpt = _Parser(add_help=False)
    g = ckpt.add_argument_group("checkpoint")
    which = g.add_mutually_exclusive_group()
    which.add_argument("--run", metavar="DIR", help="run directory (default: config.json's out_dir/name)")
    which.add_argument("--checkpoint", metavar="FILE", help="a checkpoint file instead of a run directory")
    g.add_argument("--last", action="store_true", help="the run's last.pt instead of best.pt")
    g.add_argument("--device", default=None, choices=("cpu", "cuda"), help="default: cuda when available")
    g.add_argument("--trust-checkpoint", action="store_true",
                   help="unpickle the whole file (only for files you trust; default: weights-only loading)")

    out = _Parser(add_help=False)
    out.add_argument("--out", metavar="PATH", help="output file (default: RUN/inference/NAME; a folder: NAME in it)")

    directions_out = _Parser(add_help=False)  # attributes: its file lives beside the checkpoint, not in inference/
    directions_out.add_argument("--out", metavar="PATH", help="output file (default: attributes.pt beside the "
                                "checkpoint, RUN/checkpoints/attributes.pt, where edit looks for it; a folder: "
                                "attributes.pt in it)")

    each = _Parser(add_help=False)
    each.add_argument("--each", metavar="DIR", help="also one PNG per image, at the model's resolution")

    data = _Parser(add_help=False)
    g = data.add_argument_group("data")
    g.add_argument("--data", metavar="SHARDS", type=Path, help="preshard output folder (default: the checkpoint's)")
    g.add_argument("--split", choices=SPLITS, default="test", help="split of the sample keys / samples (%(default)s)")
    g.add_argument("--backend", default="auto", choices=BACKENDS, help="loader backend (%(default)s)")

    encoding = _Parser(add_help=False)
    g = encoding.add_argument_group("encoding a split")
    g.add_argument("--batch-size", type=int, default=256, help="images per encoder batch (%(default)s)")
    g.add_argument("--max-samples", type=int, metavar="N", help="encode only the first N samples of the split")

    faces = _Parser(add_help=False)
    faces.add_argument("--crop", type=_crop, default=AS_TRAINED, metavar="PX|none",
                       help="centre square cropped from a file before resizing (default: the checkpoint's crop, "
                            "148 for CelebA's aligned 178×218)")
    return {"ckpt": ckpt, "out": out, "directions_out": directions_out, "each": each, "data": data,
            "encoding": encoding, "faces": faces}


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog=program_name(), description=f"Use a trained checkpoint: {', '.join(COMMANDS)}.",
                epilog="examples:\n" + __doc__.split("\n\n")[1],
                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    cmd: dict[str, argparse.ArgumentParser] = {}
    uses = {"summary": ("ckpt",), "sample": ("ckpt", "out", "each"), "reconstruct": ("ckpt", "out", "each", "data", "faces"),
            "interpolate": ("ckpt", "out", "data", "faces"), "encode": ("ckpt", "out", "data", "encoding"),
            "attributes": ("ckpt", "directions_out", "data", "encoding"),
            "edit": ("ckpt", "out", "each", "data", "encoding", "faces"),
            "evaluate": ("ckpt", "data")}
    for name, (_, help_text) in COMMANDS.items():
        par = _parents()  # fresh per command: parents share their actions, and attributes changes a default
        cmd[name] = sub.add_parser(name, help=help_text, description=help_text, parents=[par[u] for u in uses[name]])

    cmd["sample"].add_argument("--n", type=int, default=64, help="how many faces, 1..1024 (64)")
    cmd["sample"].add_argument("--temperature", type=float, default=1.0, help="std of the prior's samples (1.0)")
    cmd["sample"].add_argument("--seed", type=int, default=0, help="the same seed gives the same faces (0)")

    cmd["reconstruct"].add_argument("faces", nargs="*", metavar="FACE", help="image files or sample keys of --split")
    cmd["reconstruct"].add_argument("--n", type=int, help="instead of FACEs: the first N samples of --split "
                                    f"(without FACEs: {RECONSTRUCT_N})")

    cmd["interpolate"].add_argument("faces", nargs=2, metavar="FACE", help="A and B: image files or sample keys")
    cmd["interpolate"].add_argument("--steps", type=int, default=10, help="decoded codes from A to B (10)")
    cmd["interpolate"].add_argument("--mode", choices=("slerp", "linear"), default="slerp",
                                    help="spherical (default) or straight-line walk between the codes")
    cmd["interpolate"].add_argument("--gif", action="store_true", help="also an animated GIF beside the strip")

    for name in ("attributes", "edit"):
        cmd[name].add_argument("--min-count", type=int, default=20,
                               help="faces needed with and without an attribute for its direction (%(default)s)")
    cmd["attributes"].set_defaults(split="train")
    commands_evaluate.add_arguments(cmd["evaluate"])

    e = cmd["edit"]
    e.add_argument("faces", nargs="+", metavar="FACE", help="image files or sample keys of --split")
    e.add_argument("--add", action="append", metavar="NAME=AMOUNT", help="move along an attribute (repeatable)")
    e.add_argument("--sweep", action="append", metavar="NAME", help="a row from -span to +span (repeatable)")
    e.add_argument("--span", type=float, default=2.0, help="largest amount of a sweep (2)")
    e.add_argument("--steps", type=int, default=9, help="faces per sweep (9)")
    e.add_argument("--directions", metavar="FILE", help="attribute directions (default: attributes.pt beside the "
                                                        "checkpoint, computed from the train split when missing)")
    return p


def program_name() -> str:
    """The name usage lines show: ``vae-model`` when started as the console script, else ``python -m model``."""
    started_as = Path(sys.argv[0]).stem if sys.argv and sys.argv[0] else ""
    return "vae-model" if started_as == "vae-model" else "python -m model"


def default_run() -> Path:
    """The run directory train.py writes without --out: config.json's out_dir/name."""
    from model.training.config import read_config_file

    cfg = read_config_file()
    return Path(cfg["out_dir"]) / cfg["name"]


@cli_entry
def main(argv: list[str] | None = None) -> int:
    from rich.console import Console

    from model.use.loading import checkpoint_path, load_trained

    args = build_parser().parse_args(argv)
    if args.command is None:
        raise ConfigError(f"name a command: {', '.join(COMMANDS)} ({program_name()} -h for help)")
    check_bounds(args.command, args)  # before the checkpoint is read: a typo costs nothing
    console = Console(highlight=False)
    path = checkpoint_path(args.run, args.checkpoint, args.last, default_run() if args.run is None else Path())
    trained = load_trained(path, args.device, trust=args.trust_checkpoint)
    trained.inputs = tuple(Path(f) for f in [*(getattr(args, "faces", None) or []), getattr(args, "directions", None)]
                           if f is not None and is_file_spec(f))
    console.print(f"[bold]model:[/] {trained.describe()}")
    return COMMANDS[args.command][0](args, trained, console)
