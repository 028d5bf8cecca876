"""model.evaluation and ``python -m model evaluate``: the pass, the numbers, the files, bad input.

A narrow untrained network keeps this fast; what is checked does not need a trained one: the
numbers the evaluation reports equal the metric functions applied to the same images outside the
evaluation, a network built to ignore half its latents shows them inactive, and every count the
user asks for is honoured or refused in one line.
"""
from __future__ import annotations

import json
import math
import time
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from model.evaluation import FULL, EvalSettings, evaluate_model
from model.metrics import mse_per_image, psnr, ssim
from model.training.validate import WorstK
from model.training.runtime import Runtime
from model.use.cli import main as model_main
from model.vae import ConvVAE, VAEConfig
from pipeline.errors import ConfigError
from pipeline.loader import make_loader
from pipeline.shards import read_attributes, read_split

CFG = VAEConfig(channels=(8, 16, 32, 64), latent_dim=8)
RT = Runtime(torch.device("cpu"), 0, 0, 1, amp="off", channels_last=False, compile=False, sync_batchnorm=False)
SMALL = replace(FULL, iwae_k=8, iwae_images=12, samples=16, worst=3, batch_size=16)


@pytest.fixture(scope="module")
def model() -> ConvVAE:
    torch.manual_seed(0)
    net = ConvVAE(CFG).eval()
    with torch.no_grad():  # BatchNorm statistics of a few batches, so outputs differ between images
        net.train()
        for _ in range(3):
            net(torch.rand(16, 3, 64, 64))
    return net.eval()


def evaluate(model, shards: Path, out: Path, settings: EvalSettings = SMALL, split: str = "test"):
    total = read_split(shards, split).count
    loader = make_loader(shards, split, settings.batch_size, device="cpu", backend="webdataset", shuffle=False,
                         drop_last=False, with_keys=True, num_threads=1)
    try:
        return evaluate_model(model, loader, RT, shards=shards, split=split, settings=settings.check(total),
                              out_dir=out, total=total)
    finally:
        loader.close()


def test_numbers_are_the_metrics_of_the_same_images(model, shards_dir, tmp_path):
    ev = evaluate(model, shards_dir, tmp_path)
    loader = make_loader(shards_dir, "test", 64, device="cpu", backend="webdataset", shuffle=False, with_keys=True,
                         num_threads=1)
    x = torch.cat([b for b, _ in loader])
    loader.close()
    recon = model.reconstruct(x)
    assert ev["count"] == len(x) == read_split(shards_dir, "test").count
    assert ev["mse_per_pixel"] == pytest.approx(float(mse_per_image(recon, x).mean()), rel=1e-5)
    assert ev["psnr_db"] == pytest.approx(float(psnr(recon, x).mean()), rel=1e-5)
    assert ev["ssim"] == pytest.approx(float(ssim(recon, x).mean()), rel=1e-4, abs=1e-5)
    # the IWAE bound from the same samples is never worse than their ELBO, and bits/dim follow from it
    assert ev["nll_iwae"] <= ev["nll_elbo"]
    d = 3 * 64 * 64
    assert ev["bits_per_dim"] == pytest.approx((ev["nll_iwae"] + d * math.log(256)) / (d * math.log(2)))
    assert ev["iwae_images"] == 12 and ev["iwae_k"] == 8 and ev["nll_iwae_by_k"]["8"] == pytest.approx(ev["nll_iwae"])
    assert ev["elbo"] == pytest.approx(-(ev["rec"] + ev["kl"]))
    assert len(ev["kl_per_dim"]) == CFG.latent_dim and ev["diversity_images"] == 16
    assert [r["kl"] for r in ev["kl_per_dim"]] == sorted((r["kl"] for r in ev["kl_per_dim"]), reverse=True)
    # attributes: one row per name in the manifest, counts adding up to the images evaluated
    names = read_attributes(shards_dir, "test").names
    assert sorted(r["attribute"] for r in ev["attributes"]) == sorted(names)
    assert all(r["count_with"] + r["count_without"] == ev["count"] for r in ev["attributes"])
    # the files, and a JSON that a strict reader accepts (no NaN)
    for name in ("evaluation.json", "evaluation.png", "failure_modes.png"):
        assert (tmp_path / name).stat().st_size > 1000, name
    on_disk = json.loads((tmp_path / "evaluation.json").read_text(), parse_constant=lambda c: pytest.fail(c))
    assert on_disk["count"] == ev["count"] and on_disk["settings"]["iwae_k"] == 8


@pytest.mark.slow
def test_latents_the_encoder_ignores_are_inactive(model, shards_dir, tmp_path):
    half = CFG.latent_dim // 2
    blind = ConvVAE(CFG)
    blind.load_state_dict(model.state_dict())
    with torch.no_grad():  # mu = 0 and logvar = 0 for the first half, whatever the image: the prior itself
        for head in (blind.fc_mu, blind.fc_logvar):
            head.weight[:half] = 0
            head.bias[:half] = 0
        blind.fc_mu.weight[half:] *= 200  # the other half clearly moves with the image
    ev = evaluate(blind.eval(), shards_dir, tmp_path, replace(SMALL, iwae_images=0, samples=0))
    dims = {r["dim"]: r for r in ev["kl_per_dim"]}
    assert ev["active_units"] == half
    assert all(not dims[d]["active"] and dims[d]["kl"] == pytest.approx(0, abs=1e-9) for d in range(half))
    assert all(dims[d]["active"] for d in range(half, CFG.latent_dim))
    assert ev["nll_iwae"] is None and ev["diversity_ratio"] is None


@pytest.mark.slow
def test_image_limit_and_shards_without_attributes(model, shards_dir, tmp_path, tmp_path_factory, monkeypatch):
    import model.evaluation.run as run

    def slow_figure(*args):  # the figures are part of what `seconds` counts
        time.sleep(0.6)
        return real(*args)

    real = run.plot_failure_modes
    monkeypatch.setattr(run, "plot_failure_modes", slow_figure)
    ev = evaluate(model, shards_dir, tmp_path, replace(SMALL, images=10, iwae_images=4, samples=6))
    assert ev["count"] == 10 and ev["iwae_images"] == 4 and ev["diversity_images"] == 6
    assert ev["seconds"] >= 0.6 and json.loads((tmp_path / "evaluation.json").read_text())["seconds"] == ev["seconds"]
    monkeypatch.undo()

    from pipeline.preshard import preshard
    from pipeline.synthetic import write_synthetic_celeba

    tree = write_synthetic_celeba(tmp_path_factory.mktemp("bare"), n=30, seed=5, workers=1)
    (tree / "list_attr_celeba.txt").unlink()
    bare = tmp_path_factory.mktemp("bare_shards")
    preshard(tree, bare, progress=False, workers=1)
    ev = evaluate(model, bare, tmp_path / "bare", replace(SMALL, iwae_images=2, samples=2))
    assert ev["attributes"] is None and "no attributes" in ev["attributes_note"]
    assert (tmp_path / "bare" / "evaluation.png").is_file()


@pytest.mark.parametrize("asked, explicit, expect", [
    ({"images": 500}, {"images"}, "500 images asked, but the split holds 40"),
    ({"iwae_images": 50}, {"iwae_images"}, "iwae-images 50 is more than the 40 images"),
    ({"images": 10, "samples": 11}, {"images", "samples"}, "samples 11 is more than the 10 images"),
    ({"iwae_k": 0}, set(), "iwae_k must be >= 1"),
    ({"samples": -1}, set(), "samples must be >= 0"),
    ({"images": 1}, {"images"}, "at least 2 images; --images 1 asked"),  # the user's count, not the split's
    ({"samples": 1}, {"samples"}, "--samples 1 is too few: the diversity ratio compares pairs"),
    ({"samples": 1}, set(), "samples 1 is too few"),  # never cut down to 1, and never silently to 0
])
def test_settings_refuse_what_the_split_cannot_give(asked, explicit, expect):
    with pytest.raises(ConfigError, match=expect):
        replace(FULL, **asked).check(40, explicit=frozenset(explicit))


def test_settings_left_at_default_are_cut_to_the_split():
    s = FULL.check(40)
    assert (s.images, s.iwae_images, s.samples) == (0, 40, 40)
    assert replace(FULL, images=10).check(40).iwae_images == 10
    with pytest.raises(ConfigError, match="at least 2 images; the split holds 1"):
        FULL.check(1)
    assert replace(FULL, samples=2).check(40).samples == 2 and replace(FULL, samples=0).check(40).samples == 0


@pytest.fixture(scope="module")
def checkpoint(model, shards_dir, tmp_path_factory) -> Path:
    from model.training.checkpoint import make_checkpoint

    opt = torch.optim.AdamW(model.parameters())
    cfg = {**CFG.to_dict(), "data": str(shards_dir), "seed": 0}
    path = tmp_path_factory.mktemp("eval_ckpt") / "run" / "checkpoints" / "best.pt"
    path.parent.mkdir(parents=True)
    torch.save(make_checkpoint(model=model, optimizer=opt, scaler=None, step=7, epoch=1, batch_in_epoch=0,
                               best_val_elbo=None, config=cfg), path)
    return path


def test_cli_writes_the_evaluation_and_prints_the_table(checkpoint, tmp_path, capsys):
    rc = model_main(["evaluate", "--checkpoint", str(checkpoint), "--k", "4", "--iwae-images", "6", "--samples", "8",
                     "--worst", "2", "--backend", "webdataset"])
    out = capsys.readouterr().out
    assert rc == 0
    folder = checkpoint.parent.parent / "evaluation"  # RUN/evaluation by default
    ev = json.loads((folder / "evaluation.json").read_text())
    assert ev["step"] == 7 and ev["checkpoint"] == str(checkpoint) and ev["iwae_k"] == 4
    assert ev["fid"] is None and "--fid" in ev["fid_note"]
    assert ev["likelihood"] == "Gaussian decoder, σ² = ½ (the SSE loss's)" and ev["settings"]["decoder_log_sigma"] is None
    assert "bits / dim" in out and "active units" in out and (folder / "failure_modes.png").is_file()


@pytest.mark.slow
def test_cli_scores_a_sigma_vae_under_its_learned_sigma(checkpoint, tmp_path):
    """A σ-VAE checkpoint keeps its learned σ (extra "objective"): its IWAE bound is taken under that σ."""
    ckpt = torch.load(checkpoint, weights_only=False)
    ckpt["objective"] = {"log_sigma": torch.tensor(math.log(0.2))}
    learned = tmp_path / "sigma" / "best.pt"
    learned.parent.mkdir()
    torch.save(ckpt, learned)
    docs = {}
    for name, path in (("fixed", checkpoint), ("learned", learned)):
        out = tmp_path / name
        assert model_main(["evaluate", "--checkpoint", str(path), "--k", "2", "--iwae-images", "4", "--samples",
                           "2", "--worst", "1", "--backend", "webdataset", "--out", str(out)]) == 0
        docs[name] = json.loads((out / "evaluation.json").read_text())
    fixed, ev = docs["fixed"], docs["learned"]
    assert ev["likelihood"] == "Gaussian decoder, learned σ = 0.2000"
    assert ev["settings"]["decoder_log_sigma"] == pytest.approx(math.log(0.2))
    # the same weights and images; only the likelihood the bound is taken under changed (its formula is checked
    # against torch.distributions in test_metrics_likelihood.py)
    assert ev["mse_per_pixel"] == pytest.approx(fixed["mse_per_pixel"]) and ev["nll_iwae"] != fixed["nll_iwae"]


@pytest.mark.parametrize("args, expect", [
    (["--images", "100000"], "100,000 images asked, but the split holds"),
    (["--k", "0"], "iwae_k must be >= 1"),
    (["--split", "nope"], "invalid choice: 'nope'"),
    (["--images", "1"], "evaluation needs at least 2 images; --images 1 asked"),
    (["--samples", "1"], "--samples 1 is too few"),
])
def test_cli_bad_input_is_one_line(checkpoint, tmp_path, capsys, args, expect):
    rc = model_main(["evaluate", "--checkpoint", str(checkpoint), "--out", str(tmp_path), *args])
    err = " ".join(capsys.readouterr().err.split())
    assert rc == 2 and expect in err and "Traceback" not in err
    assert not (tmp_path / "evaluation.json").exists()


def test_cli_refuses_a_checkpoint_of_another_model(checkpoint, tmp_path, capsys):
    ckpt = torch.load(checkpoint, weights_only=False)
    ckpt["config"]["latent_dim"] = 16  # the weights say 8
    other = tmp_path / "other.pt"
    torch.save(ckpt, other)
    rc = model_main(["evaluate", "--checkpoint", str(other), "--out", str(tmp_path)])
    err = " ".join(capsys.readouterr().err.split())
    assert rc == 2 and "different model" in err


# ---------------------------------------------------------------- worst K without host syncs
@contextmanager
def no_host_reads(monkeypatch):
    """Every way a tensor's values reach Python (each one a device sync on CUDA) raises inside the block."""
    def refuse(*args, **kwargs):
        raise AssertionError("a tensor was read on the host")

    with monkeypatch.context() as m:
        for name in ("item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__", "__index__"):
            m.setattr(torch.Tensor, name, refuse)
        yield


@pytest.mark.parametrize("k", [1, 6, 100])
def test_worst_k_is_a_sort_of_every_image_and_reads_nothing_per_batch(k, monkeypatch):
    gen = torch.Generator().manual_seed(k)
    sizes, worst, seen = (5, 16, 1, 9, 16, 3), WorstK(k), []
    for b, n in enumerate(sizes):
        scores = torch.randn(n, generator=gen)
        scores[::4] = float("nan") if b % 2 else float("inf")  # never enter
        values, x, recon = torch.rand(n, generator=gen), torch.rand(n, 3, 8, 8, generator=gen), torch.rand(n, 3, 8, 8)
        keys = [f"b{b}i{i}" for i in range(n)]
        with no_host_reads(monkeypatch):
            worst.push(scores, values, keys, x, recon)
        seen += [(float(scores[i]), keys[i], float(values[i]), x[i], recon[i]) for i in range(n)
                 if math.isfinite(float(scores[i]))]
    want = sorted(seen, key=lambda r: -r[0])[:k]
    got = worst.result()
    assert [f.key for f in got] == [r[1] for r in want] and len(got) == min(k, len(seen))
    assert [f.score for f in got] == pytest.approx([r[0] for r in want]) and [f.value for f in got] == pytest.approx(
        [r[2] for r in want])
    for f, r in zip(got, want):
        assert torch.equal(f.image, r[3]) and torch.equal(f.reconstruction, r[4]) and f.image.device.type == "cpu"
    assert WorstK(0).result() == [] and WorstK(3).result() == []


# ---------------------------------------------------------------- regions and attributes where the truth is known
class Lookup(torch.nn.Module):
    """A "VAE" that reconstructs each known image as the picture it was given for it: encode → the
    image's one-hot (a sharp posterior), decode → that one-hot times the stored pictures."""

    def __init__(self, inputs: torch.Tensor, recons: torch.Tensor):
        super().__init__()
        self.inputs, self.recons = inputs.flatten(1), recons
        self.cfg = VAEConfig(channels=(8,), latent_dim=len(inputs))

    def encode(self, x):
        idx = torch.cdist(x.flatten(1), self.inputs).argmin(1)
        mu = torch.nn.functional.one_hot(idx, len(self.inputs)).float()
        return mu, torch.full_like(mu, -30.0)

    def decode(self, z):
        return (z @ self.recons.flatten(1)).view(-1, *self.recons.shape[1:])


def test_regions_and_attributes_on_drawn_faces_with_hats():
    """Faces in the documented ellipse on a plain background; six wear a hat, a band across the top rows
    (outside the ellipse), and their reconstructions miss it (background there), all else is off by DELTA."""
    from model.evaluation.collect import collect
    from model.evaluation.summary import summarize
    from model.metrics import face_ellipse_mask

    n, size, band, delta, hat_error = 16, 32, 4, 0.01, 0.6 - 0.05
    mask = face_ellipse_mask(size, size)
    assert not mask[:band].any()  # the hat band lies wholly outside the face
    x = torch.full((n, 3, size, size), 0.6)  # background
    x[:, :, mask] = torch.linspace(0.3, 0.8, n)[:, None, None]  # a skin tone per face
    hats = list(range(6))
    x[hats, :, :band] = 0.05
    recon = x + delta
    recon[hats, :, :band] = 0.6  # the hat is not reconstructed: background instead
    keys = [f"{i:06d}" for i in range(n)]
    settings = replace(SMALL, iwae_images=0, samples=0, worst=3, batch_size=5)
    batches = [(x[i:i + 5], keys[i:i + 5]) for i in range(0, n, 5)]
    c = collect(Lookup(x, recon), batches, RT, settings, accessory_keys=frozenset(keys[i] for i in hats))

    names = ["Smiling", "Wearing_Hat", "Eyeglasses"]
    table = torch.zeros(n, 3, dtype=torch.bool)
    table[::2, 0] = True  # three hats among the eight: the same error either side
    table[hats, 1] = True
    table[6:12, 2] = True  # no hats among them: better than the rest
    ev = summarize(c, settings, samples=None, attributes=(names, table), attributes_note=None)

    pixels, outside = size * size, int((~mask).sum())
    hat_mse = (delta**2 * (pixels - band * size) + hat_error**2 * band * size) / pixels
    regions = ev["regions"]
    assert regions["face_mse_per_pixel"] == pytest.approx(delta**2, rel=1e-3)
    hat_outside = (delta**2 * (outside - band * size) + hat_error**2 * band * size) / outside
    assert regions["outside_mse_per_pixel"] == pytest.approx((6 * hat_outside + 10 * delta**2) / n, rel=1e-3)
    assert regions["outside_to_face"] == pytest.approx(regions["outside_mse_per_pixel"] / regions["face_mse_per_pixel"])
    assert regions["outside_to_face"] > 100

    rows = {r["attribute"]: r for r in ev["attributes"]}
    assert [r["attribute"] for r in ev["attributes"]] == ["Wearing_Hat", "Smiling", "Eyeglasses"]
    hat = rows["Wearing_Hat"]
    assert (hat["count_with"], hat["count_without"]) == (6, 10)
    assert hat["ratio"] == pytest.approx(hat_mse / delta**2, rel=1e-3)
    assert rows["Smiling"]["ratio"] == pytest.approx(1.0, rel=1e-6)
    assert rows["Eyeglasses"]["ratio"] == pytest.approx(delta**2 / ((6 * hat_mse + 4 * delta**2) / 10), rel=1e-3)
    # the failure modes that look at hats and backgrounds show hats only
    for mode in ("overall", "accessory", "background"):
        assert {f.key for f in c.worst[mode]} <= {keys[i] for i in hats}, mode


def test_a_runs_test_metrics_and_pictures_ride_along_the_evaluations_one_pass(model, shards_dir, tmp_path):
    """train.py's closing pass: what rides along (``also``) sees every batch of the split, also past the
    evaluation's image limit, and computes what a pass of its own would."""
    from model.training.observe import FirstImages
    from model.training.validate import ElboSums, validate

    def loader():
        return make_loader(shards_dir, "test", 16, device="cpu", backend="webdataset", shuffle=False,
                           drop_last=False, with_keys=True, num_threads=1)

    total = read_split(shards_dir, "test").count
    sums, faces, seen = ElboSums(model, RT, impl="torch", seed=1, worst_k=3), FirstImages(20), []
    with loader() as batches:
        ev = evaluate_model(model, batches, RT, shards=shards_dir, split="test", total=total, out_dir=tmp_path,
                            settings=replace(SMALL, images=10, iwae_images=4, samples=6).check(total),
                            also=(sums.add, faces, lambda x, keys: seen.extend(keys)))
    assert ev["count"] == 10 and len(seen) == total  # the evaluation looked at 10; the riders at all
    with loader() as batches:
        alone = validate(model, batches, RT, impl="torch", seed=1, worst_k=3)
    together = sums.result()
    assert together.metrics == alone.metrics and together.metrics["count"] == total
    assert [f.key for f in together.failures] == [f.key for f in alone.failures]
    assert faces.full and faces.keys == seen[:20] and faces.batch.shape == (20, 3, 64, 64)  # across two batches
    with loader() as batches:
        assert torch.equal(FirstImages(20).read(batches).batch, faces.batch)
