"""bench/gpu_session.sh: the GPU measurement in one bounded command, checked on a CPU.

Its --dry-run runs every part at toy size, so the script cannot rot between the rare runs on a GPU;
the budget's skipping, the carried-wheel install, the train part's per-epoch readings, the preset's
place in the train-step grid and the time-sized data set are checked on their own.

GPU_STACK_PYTHON (set by .ci/run to the side environment with the GPU machine's torch 2.11,
triton 3.6 and torchvision 0.26) makes the dry runs use that interpreter instead of this one.
"""
from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from bench.gpu_step_grid import preset_first
from bench.gpu_readings import EpochWatcher, NvmlSampler, train_report
from bench.train_step import Variant

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "gpu_session.sh"
QUICK_PARTS = ["kernel_tests", "graph_breaks", "loss", "train_step", "train", "profile", "decode"]


def _session(*args: str, env: dict[str, str] | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PY": os.environ.get("GPU_STACK_PYTHON", sys.executable), **(env or {})}
    env.pop("TRITON_INTERPRET", None)  # the session sets it where a part needs it, as on a GPU machine it would not
    return subprocess.run(["bash", str(SCRIPT), *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.slow
def test_quick_dry_run_runs_every_part_and_writes_its_json(tmp_path):
    out = tmp_path / "out"
    done = _session("quick", "--dry-run", "--out", str(out), "--data", str(tmp_path / "data"))
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-3000:]
    session = json.loads((out / "session.json").read_text())
    assert [p["part"] for p in session["parts"]] == QUICK_PARTS
    assert {p["part"]: p["status"] for p in session["parts"]} == dict.fromkeys(QUICK_PARTS, "ok")
    assert session["elapsed_s"] < 120  # the bound for the dry run on a CPU
    docs = {name: json.loads((out / f"{name}.json").read_text()) for name in QUICK_PARTS}
    for name, doc in docs.items():
        assert doc["session"]["status"] == "ok" and (out / f"{name}.log").stat().st_size > 0, name
    assert docs["kernel_tests"]["results"]["passed"] > 0 and docs["kernel_tests"]["results"]["failed"] == 0
    assert set(docs["graph_breaks"]["results"]["graph_breaks"]) == {"torch", "triton"}
    assert {r["batch"] for r in docs["loss"]["results"]["rows"]} == {8}
    step = docs["train_step"]["results"]
    assert step["complete"] and {r["amp"] for r in step["rows"]} >= {"off"}
    epochs = docs["train"]["results"]["epochs"]
    assert [e["epoch"] for e in epochs] == [1, 2, 3] and all(e["images_per_s"] > 0 for e in epochs)
    assert docs["train"]["results"]["checkpoint_seconds"] is not None
    assert docs["profile"]["results"]["steps"] == 3 and (out / "trace.json.gz").stat().st_size > 0
    # the output folder keeps the run's small files, not its checkpoints
    assert (out / "train_run" / "summary.json").is_file() and not list(out.rglob("*.pt"))
    assert any(r["images_per_s"] > 0 for r in docs["decode"]["results"]["rows"])
    data = json.loads((out / "data.json").read_text())["results"]
    assert data["images"] == 160 and list((tmp_path / "data").rglob("*.pt"))


@pytest.mark.slow
def test_dali_dry_run_sweeps_and_measures_input_efficiency(tmp_path):
    pytest.importorskip("nvidia.dali")
    out = tmp_path / "out"
    done = _session("dali", "--dry-run", "--out", str(out))
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-3000:]
    decode = json.loads((out / "dali_decode.json").read_text())["results"]
    assert decode and json.loads((out / "dali_input.json").read_text())["results"]["backend"].startswith("dali")


def test_a_part_that_would_overrun_the_budget_is_skipped_with_a_line(tmp_path):
    out = tmp_path / "out"
    done = _session("quick", "--dry-run", "--budget", "3", "--out", str(out), timeout=120)
    assert done.returncode == 1, done.stdout + done.stderr  # nothing measured
    for name in QUICK_PARTS:
        line = f"{name}: skipped: needs ≥"
        assert line in done.stdout, (name, done.stdout)
        doc = json.loads((out / f"{name}.json").read_text())
        assert doc["session"]["status"] == "skipped" and "of the 3 s budget left" in doc["session"]["reason"]


def test_usage_and_bad_budget(tmp_path, capsys):
    from bench.gpu_session import main

    usage = _session(timeout=60)
    assert usage.returncode == 2 and "gpu_session.sh quick" in usage.stderr
    # the driver in-process: the script hands its arguments over as the tests above and below show
    assert main(["quick", "--dry-run", "--budget", "-1", "--out", str(tmp_path)]) == 2
    assert "--budget must be > 0" in capsys.readouterr().err and not list(tmp_path.iterdir())


def _wheel(folder: Path, name: str, version: str, files: dict[str, str]) -> Path:
    """A minimal valid pure-Python wheel (RECORD with hashes), as pip download would bring one."""
    dist = f"{name}-{version}.dist-info"
    files = {**files, f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
             f"{dist}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}

    def digest(text: str) -> str:
        return base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()

    record = "".join(f"{path},sha256={digest(text)},{len(text.encode())}\n" for path, text in files.items())
    whl = folder / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(whl, "w") as zf:
        for path, text in {**files, f"{dist}/RECORD": record + f"{dist}/RECORD,,\n"}.items():
            zf.writestr(path, text)
    return whl


def test_missing_webdataset_is_installed_from_the_carried_wheels_outside_the_machines_python(tmp_path):
    # webdataset "missing" as on the GPU machine: a stand-in earlier on the path refuses to import
    shadow = tmp_path / "shadow" / "webdataset"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('not on this machine')\n")
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    _wheel(wheels, "webdataset", "9.9.9", {"webdataset/__init__.py": "__version__ = 'carried'\n"})
    env = {"PYTHONPATH": str(tmp_path / "shadow"), "GPU_SESSION_WHEELS": str(wheels)}
    # the install (and the script's own check that webdataset then imports) comes before the driver, which a bad
    # --budget then ends before its environment probe (3 s of imports that the budget test above already makes)
    done = _session("quick", "--dry-run", "--budget", "-1", "--out", str(tmp_path / "out"), env=env, timeout=120)
    assert "installed from" in done.stdout and "webdataset-9.9.9" in done.stdout, done.stdout + done.stderr
    assert done.returncode == 2 and "--budget must be > 0" in done.stderr, done.stderr
    assert (wheels / "site" / "webdataset" / "__init__.py").is_file()  # beside the wheels, not in site-packages
    # no wheel for it: one line saying how to stage them
    (wheels / "webdataset-9.9.9-py3-none-any.whl").unlink()
    done = _session("quick", "--dry-run", "--out", str(tmp_path / "out"), env=env, timeout=60)
    assert done.returncode == 2 and "bench/stage_wheels.sh quick" in done.stderr


def test_preset_runs_first_and_eager_fp32_second():
    preset = Variant("reduce-overhead", "bf16", "triton", 256)
    eager = Variant("eager", "off", "torch", 256)
    grid = [Variant("eager", "bf16", "torch", 256), eager, Variant("default", "off", "torch", 64), preset]

    def variants(device, quick, batch_sizes):
        return grid, [{"variant": preset.label, "reason": "not in this grid"}]

    keep, skipped = preset_first(variants, preset, eager)(None, False, None)
    assert keep[:2] == [preset, eager] and sorted(map(str, keep[2:])) == sorted(map(str, [grid[0], grid[2]]))
    assert skipped == []
    # a preset the grid lacks (it lists CUDA-graph modes only on CUDA) is added, not lost
    keep, _ = preset_first(lambda *a: ([eager], []), preset, eager)(None, True, None)
    assert keep == [preset, eager]
    # the dry run's preset is eager fp32 itself: one row, and nothing else with only_these
    keep, _ = preset_first(variants, eager, eager, only_these=True)(None, True, None)
    assert keep == [eager]


def test_train_report_rebuilds_per_epoch_rates_and_reads_nvml_per_epoch(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"batch_size": 16}))
    records = [{"kind": "train", "epoch": 1, "step": 10, "images_per_s": 100.0},   # 160 images, 1.6 s
               {"kind": "train", "epoch": 1, "step": 12, "images_per_s": 50.0},    # 32 images, 0.64 s
               {"kind": "val", "epoch": 1, "step": 12},
               {"kind": "train", "epoch": 2, "step": 24, "images_per_s": 400.0}]   # 192 images, 0.48 s
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (run / "summary.json").write_text(json.dumps({"images_per_s": 150.0, "checkpoint_seconds": 0.25}))
    sampler = NvmlSampler()
    sampler.samples = [(1.0, 10.0), (2.0, 30.0), (5.0, 90.0), (6.0, 100.0)]
    report = train_report(run, {1: (1.0, 2.0), 2: (5.0, 6.0)}, sampler, cache="device")
    e1, e2 = report["epochs"]
    assert e1["images"] == 192 and e1["seconds"] == pytest.approx(2.24)
    assert e1["images_per_s"] == pytest.approx(192 / 2.24) and e2["images_per_s"] == pytest.approx(400.0)
    assert (e1["nvml_busy_pct"], e2["nvml_busy_pct"]) == (20.0, 95.0)
    assert (e1["reads"], e2["reads"]) == ("decode + fill", "cache")
    assert report["checkpoint_seconds"] == 0.25
    assert train_report(run, {}, sampler, cache="none")["epochs"][1]["reads"] == "decode"


def test_epoch_watcher_windows_run_from_the_previous_validation_to_the_last_train_record(tmp_path):
    import time

    path = tmp_path / "metrics.jsonl"

    def add(*records):
        with open(path, "a") as fh:
            fh.writelines(json.dumps(r) + "\n" for r in records)
        time.sleep(0.1)

    with EpochWatcher(path, interval=0.02) as w:
        time.sleep(0.05)
        add({"kind": "train", "epoch": 1, "step": 1})
        add({"kind": "train", "epoch": 1, "step": 2})
        add({"kind": "val", "epoch": 1, "step": 2})
        add({"kind": "train", "epoch": 2, "step": 4})  # a short epoch: one train record
        add({"kind": "val", "epoch": 2, "step": 4})
    windows = w.windows()
    assert sorted(windows) == [1, 2]
    assert windows[1] == (w.train[1][0], w.train[1][1]) and windows[2] == (w.val[1], w.train[2][1])
    assert all(b - a >= 0.05 for a, b in windows.values())


def test_data_set_is_sized_by_drawing_time_and_reused(tmp_path):
    from bench.gpu_data import build

    doc = build(tmp_path, 2.5, max_images=60, workers=1, json_path=tmp_path / "data.json")["results"]
    assert 3 <= doc["images"] <= 60 and doc["images"] == doc["images_drawn"]
    assert sum(doc["split_images"].values()) == doc["images"] and doc["generation_s"] > 0
    assert not (tmp_path / "calibration").exists()
    again = build(tmp_path, 2.5, workers=1)["results"]
    assert again["reused"] and again["images"] == doc["images"]


def test_decode_bench_reads_the_shards_jpegs_and_says_what_it_skipped(shards_dir, tmp_path):
    from bench.gpu_decode import run, torchvision_error

    doc = run(shards_dir, max_images=32, batch_sizes=(16,), repeats=1, device="cpu",
              json_path=tmp_path / "decode.json", print_results=False)
    r = doc["results"]
    assert r["images"] == 32 and 1000 < r["mean_jpeg_bytes"] < 50_000
    names = [row["name"] for row in r["rows"]]
    assert "PIL + draft, 1 thread" in names
    reasons = " ".join(s["reason"] for s in r["skipped"])
    if torchvision_error() is None:
        assert "torchvision cpu, 1 thread" in names and r["image_hw"] == [218, 178] and "no CUDA" in reasons
    else:
        assert "torchvision unusable" in reasons
    assert json.loads((tmp_path / "decode.json").read_text())["benchmark"] == "gpu_decode"
