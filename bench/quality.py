"""What each of the seed's next steps does to blur, backgrounds and the average face.

    python -m bench.quality [--shards DIR] [--epochs 3] [--only baseline,ssim,...] [--out DIR] [--json OUT]

Trains the default model with the same data, seed and step budget once per variant — the seed's
loss, + VGG feature matching, + SSIM, + MS-SSIM, the σ-VAE's learned σ, cyclical KL annealing, free
bits — each a real ``train.py`` run that ends with the evaluation (model/evaluation), and puts the
evaluations side by side: MSE/pixel, PSNR, SSIM, sharpness ratio, active units, diversity ratio, IWAE
bits/dim, images/s, wall time. ``quality.png`` shows the same test faces reconstructed and the same
prior samples decoded by every variant. Without torchvision's VGG16 weights file the perceptual
variant runs on a randomly initialised VGG (``perceptual_weights: "random"``) and the table says so:
random conv features still match local structure, but they are not the perceptual features of a
trained network. Without ``--shards`` the default run's synthetic set is used (or generated).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from bench.common import print_table, save_json
from pipeline.errors import DataError, cli_entry
from pipeline.limits import check_count

ROOT = Path(__file__).resolve().parent.parent
#: name → (config overrides, what it is). Weights put each added term at a sizeable share of the SSE
#: at the start (the step-0 magnitudes they were sized by: bench/RESULTS.md, "Quality: what each option
#: does"). The VGG stops at relu2_2: on a CPU its two passes per step already cost several times the
#: VAE's own step (same section).
PERCEPTUAL_LAYERS = "relu1_2,relu2_2"
#: perceptual_weight with random VGG weights (sized by the measurement above) and with torchvision's
#: (NOT measured: these machines have no weights file; an unchecked starting point, set it with
#: --perceptual-weight after looking at the logged "perceptual" term of a first run).
PERCEPTUAL_WEIGHT = {"random": 5000.0, "pretrained": 50.0}
VARIANTS: dict[str, tuple[dict[str, Any], str]] = {
    "baseline": ({}, "SSE + β·KL, linear warm-up (the seed)"),
    "perceptual": ({"perceptual_weight": None, "perceptual_layers": PERCEPTUAL_LAYERS},
                   "+ w · VGG16 feature matching (relu1_2, relu2_2)"),
    "ssim": ({"ssim_weight": 1000.0, "ssim_scales": 1}, "+ 1000 · (1 − SSIM)"),
    "ms_ssim": ({"ssim_weight": 1000.0, "ssim_scales": 3}, "+ 1000 · (1 − MS-SSIM), 3 scales"),
    "learned_sigma": ({"recon": "gaussian_learned_sigma"}, "Gaussian NLL with one learned σ (σ-VAE)"),
    "cyclical_kl": ({"kl_schedule": "cyclical", "kl_cycles": 4, "kl_ratio": 0.5}, "cyclical β, 4 cycles, ratio 0.5"),
    "free_bits": ({"free_bits": 0.25}, "free bits, λ = 0.25 nats per dimension"),
}
COLUMNS = ("variant", "MSE/px", "PSNR", "SSIM", "sharpness", "active", "diversity", "bits/dim", "img/s", "wall s")


def train_variant(name: str, shards: Path, out: Path, epochs: int, extra: list[str], weights: str,
                  perceptual_weight: float | None = None) -> dict[str, Any]:
    """One train.py run; its evaluation.json and summary.json, with the settings used."""
    overrides, what = VARIANTS[name]
    if "perceptual_weight" in overrides:
        w = perceptual_weight or PERCEPTUAL_WEIGHT["random" if weights == "random" else "pretrained"]
        overrides = {**overrides, "perceptual_weight": w, "perceptual_weights": weights}
        what = what.replace("w ·", f"{w:g} ·")
    args = [a for k, v in overrides.items() for a in (f"--{k}", str(v))]
    # --overwrite: a rerun of the bench replaces its own earlier run of the variant (train.py refuses a used folder).
    cmd = [sys.executable, str(ROOT / "train.py"), "--data", str(shards), "--out", str(out / name), "--overwrite",
           "--epochs", str(epochs), "--seed", "0", *args, *extra]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        tail = (proc.stderr.strip() or proc.stdout.strip()).splitlines()[-1:] or ["(no output)"]
        raise DataError(f"bench.quality: variant {name} failed (exit {proc.returncode}): {tail[0]}")
    ev = json.loads((out / name / "evaluation.json").read_text())
    summary = json.loads((out / name / "summary.json").read_text())
    return {"variant": name, "what": what, "overrides": overrides, "wall_s": wall,
            "images_per_s": summary["images_per_s"], "evaluation": ev, "test": summary["test"]}


def table_rows(results: list[dict[str, Any]]) -> list[list[Any]]:
    rows = []
    for r in results:
        ev = r["evaluation"]
        rows.append([r["variant"], ev["mse_per_pixel"], ev["psnr_db"], ev["ssim"], ev["sharpness_ratio"],
                     f"{ev['active_units']}/{ev['latent_dim']}", ev["diversity_ratio"], ev["bits_per_dim"],
                     r["images_per_s"], r["wall_s"]])
    return rows


@torch.no_grad()
def comparison_picture(results: list[dict[str, Any]], out: Path, shards: Path, n: int = 8) -> Path:
    """quality.png: the first ``n`` test faces, then per variant their reconstructions and ``n`` prior
    samples from the same z."""
    from model.use.faces import first_samples
    from model.use.loading import load_trained
    from model.evaluation.pictures import plot_table

    rows, labels = [], []
    z = None
    for r in results:
        ckpt = out / r["variant"] / "checkpoints"
        trained = load_trained(ckpt / "best.pt" if (ckpt / "best.pt").is_file() else ckpt / "last.pt", "cpu")
        model = trained.model
        if z is None:
            faces = first_samples(shards, "test", n, device=torch.device("cpu"), backend="auto",
                                  size=model.cfg.image_size, crop=trained.crop)
            rows.append(list(faces.images) + [None] + [None] * n)
            labels.append("test faces")
            z = torch.randn(n, model.cfg.latent_dim, generator=torch.Generator().manual_seed(0))
        rows.append(list(model.reconstruct(faces.images)) + [None] + list(model.decode(z)))
        labels.append(r["variant"])
    return plot_table(rows, out / "quality.png", row_labels=labels,
                      title=f"reconstructions of the same {n} test faces (left) and samples from the same z (right)")


def run(shards: Path, out: Path, *, variants: list[str], epochs: int, extra: list[str] | None = None,
        weights: str | None = None, perceptual_weight: float | None = None) -> list[dict[str, Any]]:
    from model.losses.perceptual import find_weights
    from pipeline.errors import ConfigError

    if weights is None:
        try:
            weights = str(find_weights("vgg16", None))
        except ConfigError:
            weights = "random"
    results = []
    for name in variants:
        print(f"bench.quality: training {name} …", flush=True)
        results.append(train_variant(name, shards, out, epochs, list(extra or []), weights, perceptual_weight))
        if name == "perceptual" and weights == "random":  # the table says what ran
            results[-1]["what"] += " — RANDOM VGG weights (no vgg16-397923af.pth found)"
    print_table(f"quality per variant ({epochs} epochs each, same data and seed)", COLUMNS, table_rows(results),
                caption="; ".join(f"{r['variant']}: {r['what']}" for r in results))
    comparison_picture(results, out, shards)
    return results


@cli_entry
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.quality", description=__doc__.split("\n\n")[0])
    p.add_argument("--shards", type=Path, help="preshard output (default: the default run's synthetic shards)")
    p.add_argument("--out", type=Path, default=Path("bench_out/quality"), help="run directories (%(default)s)")
    p.add_argument("--epochs", type=int, default=3, help="epochs per variant (%(default)s)")
    p.add_argument("--only", help=f"comma-separated variants (default: all of {', '.join(VARIANTS)})")
    p.add_argument("--weights", help="torchvision's vgg16-397923af.pth (default: torch.hub's cache, else random)")
    p.add_argument("--perceptual-weight", type=float, help="weight of the perceptual variant's term (default: "
                   f"{PERCEPTUAL_WEIGHT['random']:g} with random VGG weights, {PERCEPTUAL_WEIGHT['pretrained']:g} with a file)")
    p.add_argument("--json", type=Path, help="write the results here")
    args, extra = p.parse_known_args(argv)  # anything else goes to every train.py run, e.g. --stop_at_step 50
    check_count("--epochs", args.epochs, 1, 100_000, "train.py's own bound")
    variants = args.only.split(",") if args.only else list(VARIANTS)
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise DataError(f"unknown variant(s) {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")
    shards = args.shards
    if shards is None:
        from model.training.config import read_config_file
        from model.training.data import synthetic_shards

        cfg = read_config_file()
        shards = synthetic_shards(Path(cfg["synthetic_dir"]), Path(cfg["synthetic_shards"]), cfg["synthetic_images"])
    results = run(shards, args.out, variants=variants, epochs=args.epochs, extra=extra, weights=args.weights,
                  perceptual_weight=args.perceptual_weight)
    save_json(args.json or args.out / "quality.json", "quality", results,
              {"epochs": args.epochs, "variants": variants, "extra": extra, "shards": str(shards)})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
