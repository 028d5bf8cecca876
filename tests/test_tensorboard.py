"""Optional TensorBoard events (model/training/observe.py, ``tensorboard: true``).

Events are read back with TensorBoard's own reader (EventAccumulator), so the tests check what
TensorBoard would show: tags, steps, values, the image's pixels, the HPARAMS plugin data.
"""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from model.training.observe import TensorBoardLog, flatten
from pipeline.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent


def read_events(run_dir: Path):
    from tensorboard.backend.event_processing import event_accumulator as ea

    acc = ea.EventAccumulator(str(run_dir / "tensorboard"), size_guidance={ea.SCALARS: 0, ea.IMAGES: 0, ea.TENSORS: 0})
    return acc.Reload()


def scalars(acc, tag: str) -> list[tuple[int, float]]:
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def decode(image_event) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(image_event.encoded_image_string)) as img:
        return np.asarray(img.convert("RGB"), dtype=np.float32) / 255


# ---------------------------------------------------------------- unit
def test_scalars_image_and_hparams_read_back(tmp_path):
    colours = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.5, 1.0], [0.25, 0.75, 0.0]])
    batch = colours[:, :, None, None].expand(3, 3, 4, 6).contiguous()  # three flat 4×6 images
    cfg = {"name": "t", "lr": 0.001, "epochs": 2, "flip": False, "channels": [16, 32], "data": None,
           "compile": "auto"}
    with TensorBoardLog(tmp_path, enabled=True) as tb:
        tb.scalars(2, {"loss": 10.5, "rec": 3, "skip_none": None, "skip_bool": True, "skip_text": "x",
                       "skip_nan": float("nan"), "skip_dict": {"a": 1.0}, "step": 2, "epoch": 1, "kind": "train"},
                   "train")
        tb.scalars(4, {"loss": 8.25, "rec": 2}, "train")
        tb.images(4, "grid", batch, nrow=2)
        tb.hparams(cfg, {"elbo": -123.5, "count": 7, "note": "text"})
    acc = read_events(tmp_path)
    tags = acc.Tags()
    assert sorted(tags["scalars"]) == ["hparam/count", "hparam/elbo", "train/loss", "train/rec"]
    assert scalars(acc, "train/loss") == [(2, 10.5), (4, 8.25)]
    assert scalars(acc, "train/rec") == [(2, 3.0), (4, 2.0)]
    assert scalars(acc, "hparam/elbo") == [(4, -123.5)]  # at the last step logged

    (event,) = acc.Images("grid")
    assert (event.step, event.width, event.height) == (4, 2 * (6 + 2) + 2, 2 * (4 + 2) + 2)
    img = decode(event)
    for i, colour in enumerate(colours):  # row-major, 2 px of white around each image
        r, c = divmod(i, 2)
        y, x = 2 + r * 6, 2 + c * 8
        np.testing.assert_allclose(img[y:y + 4, x:x + 6], np.broadcast_to(colour.numpy(), (4, 6, 3)), atol=1 / 255 + 1e-6)
    assert (img[0] == 1).all() and (img[8:, 10:] == 1).all()  # padding, and the empty 4th cell

    from tensorboard.plugins.hparams import plugin_data_pb2

    content = acc.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"]).session_start_info
    hp = start.hparams
    assert hp["lr"].number_value == pytest.approx(0.001) and hp["epochs"].number_value == 2
    assert hp["name"].string_value == "t" and hp["channels"].string_value == "[16, 32]"
    assert hp["compile"].string_value == "auto" and "data" not in hp  # None has no value to show
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    assert sorted(m.name.tag for m in experiment.metric_infos) == ["hparam/count", "hparam/elbo"]
    assert [p.name for p in (tmp_path / "tensorboard").iterdir() if p.is_dir()] == []  # no timestamped subfolder


def test_evaluation_flattens_nested_metrics(tmp_path):
    metrics = {"psnr": 21.5, "count": 12, "regions": {"inside": 0.25, "outside": {"left": 0.5}},
               "attributes": [1, 2], "note": "x", "missing": None, "flag": False}
    assert flatten(metrics) == {"psnr": 21.5, "count": 12.0, "regions/inside": 0.25, "regions/outside/left": 0.5}
    with TensorBoardLog(tmp_path, enabled=True) as tb:
        tb.evaluation(30, metrics)
    acc = read_events(tmp_path)
    assert sorted(acc.Tags()["scalars"]) == ["eval/count", "eval/psnr", "eval/regions/inside",
                                             "eval/regions/outside/left"]
    assert scalars(acc, "eval/regions/inside") == [(30, 0.25)]
    assert scalars(acc, "eval/regions/outside/left") == [(30, 0.5)]


def test_resume_purges_the_events_after_the_checkpoint(tmp_path):
    with TensorBoardLog(tmp_path, enabled=True) as tb:
        for step in range(1, 9):
            tb.scalars(step, {"loss": float(step)}, "train")
    with TensorBoardLog(tmp_path, enabled=True, purge_step=5 + 1) as tb:  # resumed from a checkpoint at step 5
        for step in range(6, 8):
            tb.scalars(step, {"loss": 100.0 + step}, "train")
    assert scalars(read_events(tmp_path), "train/loss") == [(1, 1.0), (2, 2.0), (3, 3.0), (4, 4.0), (5, 5.0),
                                                            (6, 106.0), (7, 107.0)]


def test_disabled_makes_nothing_and_imports_nothing(tmp_path):
    code = f"""
import sys, torch
from pathlib import Path
from model.training.observe import TensorBoardLog
with TensorBoardLog(Path({str(tmp_path)!r}), enabled=False) as tb:
    tb.scalars(1, {{"loss": 1.0}}, "train")
    tb.images(1, "x", torch.rand(2, 3, 8, 8))
    tb.evaluation(1, {{"a": 1.0}})
    tb.hparams({{"lr": 1.0}}, {{"elbo": 1.0}})
    assert list(tb.keep_first([1, 2])) == [1, 2]
    tb.pictures(1, None, seed=0, autocast=None)
print(sorted(m for m in sys.modules if m.split(".")[0] == "tensorboard" or m.startswith("torch.utils.tensorboard")))
"""
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
    assert list(tmp_path.iterdir()) == []


def test_missing_package_is_one_config_line(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails as if not installed
    with pytest.raises(ConfigError) as err:
        TensorBoardLog(tmp_path, enabled=True)
    assert str(err.value) == ("tensorboard: true needs the tensorboard package: pip install tensorboard "
                              "(or the project's [tensorboard] extra)")
    assert not (tmp_path / "tensorboard").exists()
    TensorBoardLog(tmp_path, enabled=False).close()  # off, the package is never asked for


# ---------------------------------------------------------------- config
@pytest.mark.parametrize("value", ["maybe", 2, [True], None, 0.5])
def test_config_key_must_be_a_bool(value):
    from model.training.config import read_config_file, validate

    base = read_config_file()
    assert base["tensorboard"] is False  # off by default
    assert validate({**base, "tensorboard": "true"})["tensorboard"] is True
    with pytest.raises(ConfigError, match="config key 'tensorboard'") as err:
        validate({**base, "tensorboard": value})
    assert "\n" not in str(err.value)


def test_train_refuses_a_non_bool_in_one_line(capsys, tmp_path):
    import train

    rc = train.main(["--tensorboard", "perhaps", "--out", str(tmp_path / "run")])
    err = " ".join(capsys.readouterr().err.split())
    assert rc == 2 and "config key 'tensorboard': 'perhaps' is not a valid bool" in err, err
    assert not (tmp_path / "run" / "tensorboard").exists()


# ---------------------------------------------------------------- end to end
SMALL = ["--channels", "16,32,64,128", "--latent_dim", "32", "--loss_impl", "torch", "--compile", "false",
         "--batch_size", "16", "--eval_batch_size", "64", "--log_interval", "2", "--kl_warmup_steps", "10",
         "--warmup_steps", "3", "--n_samples", "16", "--num_threads", "1", "--amp", "off"]  # fp32 on every CPU


def run_train(*args) -> None:
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), *map(str, args)], cwd=ROOT,
                          env={**os.environ, "COLUMNS": "120"}, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


@pytest.mark.slow
def test_train_writes_train_val_test_scalars_and_images(shards_dir, tmp_path):
    """A one-epoch run stopped at step 4 (just after a log) and resumed: TensorBoard shows what
    metrics.jsonl holds, each step once, the checkpoint's own step included."""
    out = tmp_path / "run"
    run_train("--data", shards_dir, "--out", out, "--epochs", 1, "--tensorboard", "true", "--stop_at_step", 4, *SMALL)
    run_train("--out", out, "--resume", "--stop_at_step", "null")
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["kind"] == "train"]
    (val,) = [r for r in records if r["kind"] == "val"]
    (test,) = [r for r in records if r["kind"] == "test"]
    acc = read_events(out)

    for key in ("loss", "rec", "kl", "beta", "lr", "images_per_s"):  # the same numbers as metrics.jsonl
        got = scalars(acc, f"train/{key}")
        assert [s for s, _ in got] == [r["step"] for r in train], key
        assert 4 in [s for s, _ in got]
        assert [v for _, v in got] == pytest.approx([r[key] for r in train], rel=1e-6), key
    assert "train/step" not in acc.Tags()["scalars"] and "train/mfu" not in acc.Tags()["scalars"]  # no MFU on CPU
    for key in ("elbo", "rec", "kl", "mse_per_pixel"):
        assert scalars(acc, f"val/{key}") == [(val["step"], pytest.approx(val[key], rel=1e-6))]
        # The run ended by stop_at_step was tested at step 4 (before the purge step): that point stays.
        for tag in (f"test/{key}", f"hparam/{key}"):
            assert [s for s, _ in scalars(acc, tag)] == [4, test["step"]], tag
            assert scalars(acc, tag)[-1][1] == pytest.approx(test[key], rel=1e-6), tag

    # the evaluation the run ends with: evaluation.json's numbers (nested ones flattened) at the test's step
    ev = json.loads((out / "evaluation.json").read_text())
    for key, want in (("psnr_db", ev["psnr_db"]), ("ssim", ev["ssim"]), ("bits_per_dim", ev["bits_per_dim"]),
                      ("active_units", ev["active_units"]), ("sharpness_ratio", ev["sharpness_ratio"]),
                      ("regions/outside_to_face", ev["regions"]["outside_to_face"])):
        got = scalars(acc, f"eval/{key}")
        assert got and got[-1] == (test["step"], pytest.approx(want, rel=1e-6)), key

    (recon,) = acc.Images("reconstructions")
    (samples,) = acc.Images("samples")
    assert recon.step == samples.step == val["step"]
    assert (recon.width, recon.height) == (8 * 66 + 2, 2 * 66 + 2)  # 8 val images over their reconstructions
    assert (samples.width, samples.height) == (8 * 66 + 2, 2 * 66 + 2)  # 16 samples
    grid = decode(recon)
    top, bottom = grid[2:66, 2:66], grid[68:132, 2:66]
    from pipeline import make_loader

    loader = make_loader(shards_dir, "val", 64, device="cpu", num_threads=1)
    first = next(iter(loader))[0].permute(1, 2, 0).numpy()
    loader.close()
    np.testing.assert_allclose(top, first, atol=1 / 255 + 1e-6)  # the first val image, as the loader gives it
    assert 0 < np.abs(bottom - top).mean() < 0.25  # a reconstruction: close to it, not a copy


def test_gpu_util_is_per_log_interval():
    """train/gpu_util is the mean of its own log interval's samples; the epoch table keeps the epoch's mean."""
    from rich.console import Console

    from model.training.observe import GpuUtilSampler
    from model.training.observe import EpochProgress

    sampler = GpuUtilSampler()  # not started: the samples are put in by hand, as the thread would
    progress = EpochProgress(Console(quiet=True), 0, 1, 10)
    progress._sampler = sampler
    assert progress.take_gpu_util() is None and progress.gpu_util is None
    sampler.samples += [10.0, 20.0]
    assert progress.take_gpu_util() == 15.0
    sampler.samples += [90.0]
    assert progress.take_gpu_util() == 90.0 and progress.take_gpu_util() is None  # nothing new since
    assert progress.gpu_util == pytest.approx(40.0)  # the epoch's mean is untouched by the taking
    sampler.reset()
    sampler.samples += [50.0]
    assert progress.take_gpu_util() == 50.0
