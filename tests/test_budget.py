"""train_seconds: a time budget turned into steps before training (model/training/runtime.py, "budget").

The arithmetic is pure and checked against its formula; which setting decides a run's length is checked
with a fake timer (no training); one real timing of the default-shaped step on the CPU checks that the
timer measures what the budget divides by."""
from __future__ import annotations

import math

import pytest
import torch

from model.training.config import load_config
from model.training.runtime import (CLOSING_FIXED_S, CLOSING_PASSES, LOOP_OVERHEAD, REPLAN_MAX, Runtime, StepTiming,
                                    budget_steps, replanned_steps, resolve_length, time_step)
from model.training.step import schedules_agree
from pipeline.errors import ConfigError

TIMING = StepTiming(step_s=0.1, warmup_s=2.0, forward_s=0.001, metrics_s=0.002)
COUNTS = {"train": 4821, "val": 588, "test": 591}


def test_budget_divides_what_is_left_by_the_step_and_its_share_of_validation():
    b = budget_steps(120, TIMING, steps_per_epoch=75, val_images=588, test_images=591, extra_eval_images=2560)
    closing = (CLOSING_PASSES * 591 + 2560) * 0.001 + 591 * 0.002 + CLOSING_FIXED_S
    per_step = 0.1 * LOOP_OVERHEAD + 588 * 0.001 / 75
    assert b.closing_s == pytest.approx(closing) and b.validation_s == pytest.approx(0.588)
    assert b.steps == math.floor((120 - 2.0 - closing) / per_step)
    # what the steps cost, with validation and the closing evaluation, fits the budget; one more step would not
    spent = lambda n: 2.0 + n * per_step + closing  # noqa: E731
    assert spent(b.steps) <= 120 < spent(b.steps + 1)
    assert "budget 120 s" in b.describe() and f"{b.steps:,} steps ({b.steps / 75:.2f} epochs of 75)" in b.describe()


def test_a_budget_smaller_than_its_overheads_still_trains_one_step():
    assert budget_steps(1, TIMING, steps_per_epoch=75, val_images=588, test_images=591,
                        extra_eval_images=100_000).steps == 1


# ---------------------------------------------------------------- the re-plan: the loop's own pace
PLAN = budget_steps(120, TIMING, steps_per_epoch=75, val_images=588, test_images=591, extra_eval_images=2560)


def _replan(pace: float, keeps=lambda total: True, at: int | None = None) -> tuple[int, int, float]:
    """(new steps, step, seconds spent) for a loop that ran ``pace`` s/step (validation included) until ``at``."""
    at = PLAN.steps // 4 if at is None else at
    spent = TIMING.warmup_s + at * pace  # the warm-up the plan counted, then the loop
    return (replanned_steps(PLAN, current=PLAN.steps, step=at, loop_s=at * pace, loop_steps=at, spent_s=spent,
                            keeps=keeps), at, spent)


def test_a_slower_loop_than_timed_trains_fewer_steps_and_still_fits_the_budget():
    planned_pace = TIMING.step_s * LOOP_OVERHEAD + PLAN.validation_s / 75
    steps, at, spent = _replan(1.3 * planned_pace)
    left = 120 - spent - PLAN.closing_s
    assert steps == at + math.floor(left / (1.3 * planned_pace)) < PLAN.steps
    assert spent + (steps - at) * 1.3 * planned_pace + PLAN.closing_s <= 120  # the budget holds at that pace
    assert _replan(planned_pace)[0] == pytest.approx(PLAN.steps, abs=2)  # the plan's own pace: the plan


def test_a_faster_loop_trains_more_steps_up_to_the_tables_room():
    planned_pace = TIMING.step_s * LOOP_OVERHEAD + PLAN.validation_s / 75
    assert PLAN.steps < _replan(0.8 * planned_pace)[0] < REPLAN_MAX * PLAN.steps
    assert _replan(0.01 * planned_pace)[0] == math.floor(REPLAN_MAX * PLAN.steps)
    assert _replan(1000.0)[0] == PLAN.steps // 4 + 1  # the budget already gone: one more step, never fewer


def test_a_replan_never_changes_a_schedule_value_a_step_already_had():
    wsd = load_config(["--lr_schedule", "wsd", "--lr_decay_ratio", "0.3", "--warmup_steps", "20"])
    at = 600
    keeps = lambda total: schedules_agree(wsd, total, PLAN.steps, at)  # noqa: E731
    steps, _, _ = _replan(0.6, keeps, at=at)  # far too slow: a total whose decay would have begun before step 600
    assert keeps(steps) and not keeps(steps - 1)  # the shortest run whose decay is still ahead
    assert (steps - 20) * 0.7 >= at - 20 - 1  # wsd: the stable phase reaches past the check
    cosine = load_config(["--lr_schedule", "cosine"])
    keeps = lambda total: schedules_agree(cosine, total, PLAN.steps, at)  # noqa: E731
    assert _replan(0.6, keeps, at=at)[0] == PLAN.steps and _replan(0.01, keeps, at=at)[0] == PLAN.steps
    cyclical = load_config(["--lr_schedule", "constant", "--kl_schedule", "cyclical"])
    assert not schedules_agree(cyclical, PLAN.steps - 100, PLAN.steps, at)  # its cycles follow the length
    constant = load_config(["--lr_schedule", "constant", "--kl_schedule", "linear"])
    assert schedules_agree(constant, at + 1, PLAN.steps, at) and not schedules_agree(constant, at, PLAN.steps, at)


def _cfg(*args: str) -> dict:
    return load_config(["--train_seconds", "60", *args])


def _resolve(cfg: dict, *, explicit=(), resuming=False, timing=TIMING):
    calls = []

    def timer(c, rt, impl):
        calls.append(c)
        return timing

    rt = Runtime(torch.device("cpu"), 0, 0, 1, "off", False, False, False)
    out, budget, note = resolve_length(cfg, rt, "torch", steps_per_epoch=75, counts=COUNTS, explicit=set(explicit),
                               resuming=resuming, timer=timer)
    assert (budget is not None) == bool(calls)
    return out, note, calls


def test_the_budget_decides_steps_and_epochs_and_says_so():
    cfg, note, calls = _resolve(_cfg())
    assert len(calls) == 1
    assert cfg["steps"] > 0 and cfg["epochs"] == math.ceil(cfg["steps"] / 75)
    assert note.startswith("budget 60 s") and f"{cfg['steps']:,} steps" in note
    # the resolved config reproduces the run: with steps set, nothing is timed again
    again, note2, calls2 = _resolve(cfg)
    assert again["steps"] == cfg["steps"] and again["epochs"] == cfg["epochs"] and not calls2 and note2 == ""


@pytest.mark.parametrize("explicit, resuming", [({"epochs"}, False), (set(), True)])
def test_explicit_epochs_or_a_resume_win_over_the_budget(explicit, resuming):
    cfg, note, calls = _resolve(_cfg("--epochs", "3"), explicit=explicit, resuming=resuming)
    assert not calls and cfg["steps"] == 3 * 75 and cfg["epochs"] == 3
    assert ("not used: epochs 3 given" in note) == (not resuming)


def test_steps_cut_the_last_epoch_and_win_over_epochs_and_budget():
    cfg, note, calls = _resolve(_cfg("--steps", "100", "--epochs", "9"), explicit={"steps", "epochs"})
    assert not calls and cfg["steps"] == 100 and cfg["epochs"] == 2 and note == ""


def test_without_a_budget_epochs_decide():
    cfg, note, calls = _resolve(load_config(["--train_seconds", "null", "--epochs", "4"]))
    assert not calls and cfg["steps"] == 300 and note == ""


@pytest.mark.parametrize("value", ["0", "-5", "1e9", "inf"])
def test_bad_budgets_are_refused(value):
    with pytest.raises(ConfigError, match="train_seconds"):
        load_config(["--train_seconds", value])


def test_the_timer_measures_the_runs_step_without_touching_the_runs_random_streams():
    cfg = load_config(["--channels", "8,16", "--latent_dim", "8", "--batch_size", "8", "--eval_batch_size", "16",
                       "--loss_impl", "torch"])
    rt = Runtime(torch.device("cpu"), 0, 0, 1, "off", False, False, False)
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    t = time_step(cfg, rt, "torch", steps=2)
    assert torch.equal(torch.rand(3), expected)
    assert t.step_s > 0 and t.forward_s > 0 and t.metrics_s > 0 and t.warmup_s >= 0  # how fast: a benchmark's question


# ---------------------------------------------------------------- train.py end to end (the shared 240 faces)
def _records(path):
    import json

    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _train(capsys, *argv):
    import train

    from tests.test_train import SMALL

    rc = train.main([str(a) for a in [*SMALL, "--n_reconstructions", 2, "--n_failures", 2,
                                      "--eval_iwae_images", 4, "--eval_samples", 4, *argv]])
    out = capsys.readouterr()
    return rc, out.out + out.err


def test_steps_end_the_last_epoch_early_and_the_schedules_end_with_them(shards_dir, tmp_path, capsys):
    import json

    out = tmp_path / "run"
    rc, _ = _train(capsys, "--data", shards_dir, "--out", out, "--steps", 15, "--log_interval", 1)
    assert rc == 0
    cfg = json.loads((out / "config.json").read_text())
    spe = cfg["steps"] - 3  # 12 steps per epoch at batch 16 on this train split
    assert cfg["steps"] == 15 and cfg["epochs"] == 2 and spe == 12
    records = _records(out / "metrics.jsonl")
    train_steps = [r["step"] for r in records if r["kind"] == "train"]
    assert train_steps == list(range(1, 16))
    assert [r["step"] for r in records if r["kind"] == "val"] == [12, 15]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 15 and not summary["stopped_early"] and summary["budget"] is None
    # the schedule spans the 15 steps, not 2 × 12
    from model.training.step import lr_at

    last = [r for r in records if r["kind"] == "train"][-1]
    shape = dict(lr=cfg["lr"], warmup_steps=cfg["warmup_steps"], schedule=cfg["lr_schedule"],
                 min_lr_ratio=cfg["min_lr_ratio"], decay_ratio=cfg["lr_decay_ratio"])
    assert last["lr"] == pytest.approx(lr_at(14, total_steps=15, **shape))
    assert last["lr"] != pytest.approx(lr_at(14, total_steps=24, **shape))


@pytest.mark.slow
def test_a_budgeted_run_says_its_length_and_records_it(shards_dir, tmp_path, capsys):
    import json

    out = tmp_path / "run"
    rc, text = _train(capsys, "--data", shards_dir, "--out", out, "--train_seconds", 12)
    assert rc == 0
    cfg = json.loads((out / "config.json").read_text())
    assert "length: budget 12 s" in " ".join(text.split()) and f"{cfg['steps']:,} steps" in " ".join(text.split())
    assert cfg["train_seconds"] == 12 and cfg["steps"] >= 1 and cfg["epochs"] == math.ceil(cfg["steps"] / 12)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == cfg["steps"] and summary["budget"]["steps"] == cfg["steps"]
    assert summary["budget"]["train_seconds"] == 12 and summary["budget"]["spent_s"] > 0


@pytest.mark.slow
def test_a_budgeted_run_slower_than_timed_is_replanned_to_fit(shards_dir, tmp_path, capsys, monkeypatch):
    """The loop runs slower than the timed step (each step sleeps): at the check the run is shortened, the
    schedules end at the new length, and config.json and summary.json record it for a resume."""
    import json
    import time as clock

    import train

    class SlowStep(train.TrainStep):
        def __call__(self, x):
            clock.sleep(0.05)
            return super().__call__(x)

    monkeypatch.setattr(train, "TrainStep", SlowStep)
    out = tmp_path / "run"
    rc, text = _train(capsys, "--data", shards_dir, "--out", out, "--train_seconds", 12)
    assert rc == 0, text
    cfg = json.loads((out / "config.json").read_text())
    budget = json.loads((out / "summary.json").read_text())["budget"]
    assert budget["steps"] == cfg["steps"] < budget["planned_steps"] and len(budget["checks"]) >= 1
    first, *_ = budget["checks"]
    assert first[1] == budget["planned_steps"] and budget["checks"][-1][2] == cfg["steps"]
    assert f"{first[1]:,} → {first[2]:,} steps" in " ".join(text.split())
    assert cfg["epochs"] == math.ceil(cfg["steps"] / 12)
    train_records = [r for r in _records(out / "metrics.jsonl") if r["kind"] == "train"]
    assert train_records[-1]["step"] == cfg["steps"]
    from model.training.step import lr_at

    shape = dict(lr=cfg["lr"], warmup_steps=cfg["warmup_steps"], schedule=cfg["lr_schedule"],
                 min_lr_ratio=cfg["min_lr_ratio"], decay_ratio=cfg["lr_decay_ratio"])
    assert train_records[-1]["lr"] == pytest.approx(lr_at(cfg["steps"] - 1, total_steps=cfg["steps"], **shape))
