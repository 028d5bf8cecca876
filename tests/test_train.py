"""train.py end to end on the shared shards: artifacts, exact resume, bad input, divergence.

Runs use a narrow network and small batches so the whole file stays within its time budget on
two CPU cores; ``--loss_impl torch`` keeps Triton's CPU interpreter (slow) out of the loop.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
SMALL = ["--channels", "16,32,64,128", "--latent_dim", "32", "--loss_impl", "torch", "--compile", "false",
         "--batch_size", "16", "--eval_batch_size", "64", "--log_interval", "2", "--kl_warmup_steps", "10",
         "--warmup_steps", "3", "--n_samples", "16", "--num_threads", "1",
         # fp32 everywhere: "auto" trains in bf16 on AVX512-BF16/AMX CPUs and fp32 elsewhere (VAE_NO_PROBE=1), so the
         # runs these settings compare (resume, stop, kill -9, DDP, multi-node) would check different things per CPU
         "--amp", "off"]
# On CUDA the exact-resume comparison needs deterministic kernels (cuBLAS workspace, no cuDNN autotuning).
SMALL += ["--deterministic", "true"] if torch.cuda.is_available() else []
ARTIFACTS = ("config.json", "metrics.jsonl", "training_log.png", "reconstructions.png", "samples.png",
             "interpolation.png", "failures.png", "summary.json", "checkpoints/last.pt", "checkpoints/best.pt",
             "evaluation.json", "evaluation.png", "failure_modes.png")


def run_train(*args: str, check: bool = True, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "120"}
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), *map(str, args)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)
    if check:
        assert proc.returncode == 0, f"train.py failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def read_jsonl(path: Path, torn_tail_ok: bool = False) -> list[dict]:
    """Every line parsed; with ``torn_tail_ok`` a last line that kill -9 cut mid-append is left out, as the
    trainer's own reader leaves it out on --resume."""
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    if torn_tail_ok and lines:
        try:
            json.loads(lines[-1])
        except json.JSONDecodeError:
            lines.pop()
    return [json.loads(line) for line in lines]


def steps_per_epoch(shards: Path, batch: int, world: int = 1) -> int:
    count = json.loads((shards / "manifest.json").read_text())["splits"]["train"]["count"]
    return (count // world) // batch


@pytest.fixture(scope="module")
def full_run(shards_dir, tmp_path_factory) -> Path:
    """An uninterrupted 2-epoch run, checkpointing every 5 steps."""
    out = tmp_path_factory.mktemp("runs") / "full"
    run_train("--data", shards_dir, "--out", out, "--epochs", 2, "--checkpoint_interval", 5, *SMALL)
    return out


@pytest.mark.slow
def test_short_run_writes_every_artifact(full_run, shards_dir):
    for name in ARTIFACTS:
        path = full_run / name
        assert path.is_file() and path.stat().st_size > 0, name
    from PIL import Image

    for name in ARTIFACTS:
        if name.endswith(".png"):
            with Image.open(full_run / name) as img:
                assert img.width > 200 and img.height > 100, name

    cfg = json.loads((full_run / "config.json").read_text())
    assert cfg["epochs"] == 2 and cfg["latent_dim"] == 32 and cfg["data"] == str(shards_dir)

    records = read_jsonl(full_run / "metrics.jsonl")
    spe = steps_per_epoch(shards_dir, 16)
    train = [r for r in records if r["kind"] == "train"]
    assert [r["step"] for r in train] == sorted({*range(2, 2 * spe + 1, 2), spe, 2 * spe})
    assert [r["epoch"] for r in records if r["kind"] == "val"] == [1, 2]
    assert [r["kind"] for r in records].count("test") == 1
    assert train[0]["beta"] < train[-1]["beta"] == 1.0  # KL annealing
    assert train[-1]["rec"] < train[0]["rec"]  # it learns

    summary = json.loads((full_run / "summary.json").read_text())
    test = summary["test"]
    assert test["count"] == json.loads((shards_dir / "manifest.json").read_text())["splits"]["test"]["count"]
    assert test["elbo"] == pytest.approx(-(test["rec"] + test["kl"]))
    assert test["mse_per_pixel"] == pytest.approx(test["rec"] / (3 * 64 * 64))
    assert summary["steps"] == 2 * spe and summary["parameters"] > 0 and summary["images_per_s"] > 0
    assert summary["wall_time_s"] > 0
    # checkpoints written in the background: the loop's wait is counted, at least the final write happened
    assert 0 <= summary["checkpoint_seconds"] < summary["wall_time_s"] and summary["checkpoint_writes"] >= 1
    ev = json.loads((full_run / "evaluation.json").read_text())  # the light evaluation every run ends with
    assert ev["count"] == test["count"] and ev["step"] == summary["steps"] and ev["iwae_k"] == 16
    assert ev["nll_iwae"] <= ev["nll_elbo"] and 0 < ev["ssim"] < 1 and 0 <= ev["active_units"] <= 32
    assert summary["evaluation"]["psnr_db"] == ev["psnr_db"] and "kl_per_dim" not in summary["evaluation"]

    last = torch.load(full_run / "checkpoints/last.pt", weights_only=False)
    best = torch.load(full_run / "checkpoints/best.pt", weights_only=False)
    assert (last["step"], last["epoch"], last["batch_in_epoch"]) == (2 * spe, 2, 0)
    vals = [r["elbo"] for r in records if r["kind"] == "val"]
    assert best["best_val_elbo"] == pytest.approx(max(vals))
    assert set(last["rng"]) >= {"python", "numpy", "torch"} and last["optimizer"]["state"]


@pytest.mark.slow
def test_resume_continues_exactly(full_run, shards_dir, tmp_path):
    """Interrupted mid-epoch, resumed, interrupted at an epoch end, resumed, interrupted mid-epoch again (in an epoch
    the decoded-image cache serves, which a new process must fill first), resumed: same curve and weights."""
    out = tmp_path / "resumed"
    spe = steps_per_epoch(shards_dir, 16)
    common = ["--data", shards_dir, "--out", out, *SMALL]
    run_train(*common, "--epochs", 2, "--checkpoint_interval", 5, "--stop_at_step", 3)
    assert torch.load(out / "checkpoints/last.pt", weights_only=False)["batch_in_epoch"] == 3
    run_train("--out", out, "--resume", "--stop_at_step", spe)  # the rest of the config comes from the checkpoint
    ck = torch.load(out / "checkpoints/last.pt", weights_only=False)
    assert (ck["epoch"], ck["batch_in_epoch"]) == (1, 0)
    run_train("--out", out, "--resume", "--stop_at_step", spe + 2)
    ck = torch.load(out / "checkpoints/last.pt", weights_only=False)
    assert (ck["epoch"], ck["batch_in_epoch"]) == (1, 2) and ck["config"]["cache"] == "auto"
    run_train("--out", out, "--resume", "--stop_at_step", "null")

    def curve(run: Path) -> list[tuple]:
        return [(r["kind"], r["step"], r.get("loss"), r["rec"], r["kl"]) for r in read_jsonl(run / "metrics.jsonl")]

    assert curve(out) == curve(full_run)
    a = torch.load(out / "checkpoints/last.pt", weights_only=False)["model"]
    b = torch.load(full_run / "checkpoints/last.pt", weights_only=False)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_one_train_step_lowers_the_loss_on_a_fixed_batch(shards_dir):
    from kernels import vae_loss
    from model.training.runtime import resolve_runtime
    from model.training.config import read_config_file, validate
    from model.losses.objective import make_loss_fn
    from model.training.step import TrainStep
    from model.vae import ConvVAE, VAEConfig
    from pipeline import make_loader

    torch.manual_seed(0)
    loader = make_loader(shards_dir, "val", 16, device="cpu", num_threads=1)
    x = next(iter(loader))
    loader.close()
    model = ConvVAE(VAEConfig(channels=(16, 32, 64, 128), latent_dim=32))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    rt = resolve_runtime(validate({**read_config_file(), "amp": "off"}))
    beta = torch.tensor(1.0)

    def loss_now() -> float:
        torch.manual_seed(123)  # the same eps both times
        with torch.no_grad():
            out = model(x)
            return vae_loss(out.logits, x, out.kl, beta, logits=True, impl="torch").loss.item()

    before = loss_now()
    step = TrainStep(model, make_loss_fn("torch", False), opt, rt.grad_scaler(), device=rt.device, autocast=rt.autocast,
                     grad_clip=1.0, params=list(model.parameters()), lr_table=[1e-3], beta_table=[1.0])
    parts = step(x)
    after = loss_now()
    assert parts.loss.ndim == 0 and torch.isfinite(parts.loss)
    assert after < before * 0.99, (before, after)


# ---------------------------------------------------------------- bad input: one line, exit 2
def _main(capsys, *argv) -> tuple[int, str]:
    import train

    rc = train.main([str(a) for a in argv])
    err = capsys.readouterr().err
    return rc, " ".join(err.split())


@pytest.mark.parametrize("make_dir,expect", [(False, "does not exist"), (True, "is empty")])
def test_missing_or_empty_data_dir(tmp_path, capsys, make_dir, expect):
    data = tmp_path / "shards"
    if make_dir:
        data.mkdir()
    rc, err = _main(capsys, "--data", data, "--out", tmp_path / "run", *SMALL)
    assert rc == 2 and err.startswith("error:") and expect in err and str(data) in err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("argv,expect", [
    (["--beta", "-1"], "'beta' must be >= 0"),
    (["--loss_impl", "cuda-magic"], "'loss_impl': 'cuda-magic' is not one of"),
    (["--bogus_key", "1"], "unknown config key 'bogus_key'"),
    (["--epochs", "two"], "'epochs': 'two' is not a valid int"),
    (["--hw_decoder_load", "2"], "'hw_decoder_load' must be in [0, 1]"),
    (["--amp", "fp16", "--data", "."], "fp16"),
    (["--perceptual_weight", "-0.5"], "'perceptual_weight' must be >= 0"),
    (["--kl_schedule", "cyclic"], "'kl_schedule': 'cyclic' is not one of linear, cyclical, constant (did you mean "
                                  "'cyclical'?)"),
    (["--ssim_weight", "inf"], "config key 'ssim_weight' must be a finite number, got inf"),
    (["--free_bits", "nan"], "config key 'free_bits' must be a finite number, got nan"),
    (["--perceptual_layers", "relu2_3"], "unknown vgg16 layer 'relu2_3' (did you mean 'relu2_2'?"),  # weight 0 too
    (["--ssim_scales", "4"], "ssim_scales 4 needs larger images"),
    (["--eval_samples", "1"], "'eval_samples' must be 0 (none) or >= 2"),
    (["--perceptual_weight", "1", "--perceptual_weights", "no/such/vgg16-397923af.pth"],
     "perceptual_weights: no/such/vgg16-397923af.pth does not exist (expected torchvision's ImageNet vgg16 weights, "
     "published at https://download.pytorch.org/models/vgg16-397923af.pth)"),
])
def test_bad_config_values(tmp_path, capsys, argv, expect):
    if "--amp" in argv and torch.cuda.is_available():
        pytest.skip("fp16 is valid on CUDA")
    rc, err = _main(capsys, "--out", tmp_path / "run", *argv)
    assert rc == 2 and err.startswith("error:") and expect in err, err
    assert not (tmp_path / "run" / "config.json").exists()  # refused before any run directory work


def test_help_groups_every_key_with_its_limit_and_default():
    from model.losses.structural import max_scales
    from model.training.config import GROUPS, SCHEMA, build_parser, load_config, read_config_file

    text = " ".join(build_parser(prog="train.py").format_help().split())
    defaults = read_config_file()
    assert all(title in text for title in GROUPS.values())
    for key, spec in SCHEMA.items():
        assert spec.group in GROUPS, key
        value = defaults[key]
        shown = ("null" if value is None else str(value).lower() if isinstance(value, bool)
                 else ",".join(map(str, value)) if isinstance(value, list) else str(value))
        assert f"--{key} " in text and f"(config.json: {shown})" in text and spec.must in text, key
        assert f"--{key.replace('_', '-')} " not in text or "_" not in key, key  # one listing per key
    assert " V " not in text  # every value has a placeholder that says what it is
    assert f"64×64 allows {max_scales(64)}, 128×128 {max_scales(128)}, 176×176 and up {max_scales(176)}" in text
    assert load_config(["--out-dir", "elsewhere"])["out_dir"] == "elsewhere"  # the unlisted spelling still works


def test_none_is_null_except_where_it_is_a_choice():
    from model.training.config import load_config
    from pipeline.errors import ConfigError

    assert load_config(["--cache", "none"])["cache"] == "none"  # the cache choice, not null
    assert load_config(["--crop", "none"])["crop"] is None and load_config(["--crop", "null"])["crop"] is None
    with pytest.raises(ConfigError, match="may not be null"):
        load_config(["--cache", "null"])


def test_bad_config_file(tmp_path, capsys):
    bad = tmp_path / "c.json"
    bad.write_text("{not json")
    rc, err = _main(capsys, "--config", bad)
    assert rc == 2 and "not valid JSON" in err


@pytest.mark.slow
def test_resume_with_another_model_config_is_refused(full_run, capsys):
    rc, err = _main(capsys, "--out", full_run, "--resume", "--latent_dim", "64")
    assert rc == 2 and "another model config" in err and "latent_dim" in err


def test_resume_without_checkpoint(tmp_path, capsys):
    rc, err = _main(capsys, "--out", tmp_path / "nothing", "--resume")
    assert rc == 2 and "no checkpoint to resume from" in err


@pytest.mark.slow
def test_nan_loss_stops_with_step_and_keeps_last_good_checkpoint(shards_dir, tmp_path):
    out = tmp_path / "diverged"
    proc = run_train("--data", shards_dir, "--out", out, *SMALL, "--lr", "1e30", "--warmup_steps", "0",
                     "--grad_clip", "0", "--log_interval", "1", "--checkpoint_interval", "1", "--amp", "off",
                     check=False)
    err = " ".join(proc.stderr.split())
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "error: loss became NaN/inf at step" in err and "Traceback" not in proc.stderr
    ck = torch.load(out / "checkpoints/last.pt", weights_only=False)
    bad_step = int(err.split("at step ")[1].split()[0])
    assert ck["step"] <= bad_step
    assert all(torch.isfinite(v).all() for v in ck["model"].values() if v.is_floating_point())


@pytest.mark.slow
def test_compiled_step_matches_eager(monkeypatch):
    """torch.compile of the model and of the eager loss: same first-step loss and update as eager."""
    import contextlib

    from model.losses.objective import make_loss_fn

    from model.training.step import TrainStep
    from model.vae import ConvVAE, VAEConfig

    import torch._inductor.config as inductor_config

    cfg = VAEConfig(image_size=16, channels=(8, 16), latent_dim=8)
    # Inductor draws its own (equally valid) random numbers; use eager's so eps is the same.
    monkeypatch.setattr(inductor_config, "fallback_random", True)
    x = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    results = []
    for compiled in (False, True):
        torch.manual_seed(0)
        model = ConvVAE(cfg)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        scaler = torch.amp.GradScaler("cpu", enabled=False)
        # a changing β (and lr) must not need a recompile: both come from the step's device tables
        step_fn = TrainStep(model, make_loss_fn("torch", False), opt, scaler, device=torch.device("cpu"),
                            autocast=contextlib.nullcontext, grad_clip=1.0, params=list(model.parameters()),
                            lr_table=[1e-3, 5e-4], beta_table=[0.0, 0.5], compile_mode="default" if compiled else None)
        losses = []
        for step in range(2):
            torch.manual_seed(step)
            losses.append(step_fn(x).loss.item())
        results.append((losses, torch.cat([p.detach().flatten() for p in model.parameters()])))
    (eager_losses, eager_params), (comp_losses, comp_params) = results
    assert comp_losses == pytest.approx(eager_losses, rel=1e-4)
    torch.testing.assert_close(comp_params, eager_params, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("mode,expected", [("default", None), ("reduce-overhead", "reduce-overhead"),
                                           ("max-autotune", "max-autotune")])
def test_compile_mode_reaches_torch_compile(monkeypatch, mode, expected):
    """config's compile_mode is the mode train.py's step (and the bench harness) compile with."""
    import contextlib

    from model.training.config import read_config_file, validate
    from model.training.runtime import resolve_runtime
    from model.losses.objective import make_loss_fn
    from model.training.step import TrainStep

    seen = []
    monkeypatch.setattr(torch, "compile", lambda fn, mode=None: seen.append(mode) or fn)
    rt = resolve_runtime(validate({**read_config_file(), "compile": "true", "compile_mode": mode}), device="cpu")
    assert rt.compile and rt.compile_mode == mode
    net = torch.nn.Linear(2, 2)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3, fused=True)
    TrainStep(net, make_loss_fn("torch", False), opt, rt.grad_scaler(), device=rt.device,
              autocast=contextlib.nullcontext, grad_clip=1.0, params=list(net.parameters()), lr_table=[1e-3],
              beta_table=[1.0], compile_mode=rt.step_compile_mode, compile_update=True)
    assert seen == [expected, expected]  # the forward + loss, and the update
