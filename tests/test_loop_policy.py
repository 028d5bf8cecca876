"""The training loop's two lists of decisions, checked without training: when last.pt is written and the loop
stops (CheckpointPolicy: time or steps, a signal, stop_at_step, the end), and where a record goes (LogSinks).
The runs in test_train.py / test_train_stop.py check the same behaviour end to end (slow tier)."""
from __future__ import annotations

import json
import signal

from rich.console import Console

from model.training.config import read_config_file, validate
from model.training.observe import EpochProgress, LogSinks, MetricsLog, TensorBoardLog
from model.training.step import Cadence, CheckpointPolicy

STEPS_PER_EPOCH = 4


class Flag:
    """StopSignals as the policy sees it: ``received`` is set by a test instead of a signal handler."""

    def __init__(self):
        self.received = self.agreed = None
        self.looks: list[tuple[int, bool]] = []

    def should_stop(self, step: int, *, force: bool = False) -> bool:
        self.looks.append((step, force))
        self.agreed = self.received
        return self.agreed is not None


def policy(**over) -> tuple[CheckpointPolicy, Flag]:
    cfg = validate({**read_config_file(), "checkpoint_every_s": 0, "checkpoint_interval": 0, "epochs": 2,
                    "log_interval": 1, **over})
    flag = Flag()
    return CheckpointPolicy(cfg, Cadence(cfg, 0), flag), flag


def run_epoch(p: CheckpointPolicy, epoch: int, *, logged: bool = False) -> list[tuple[int, str | None]]:
    """The answers of one epoch's steps, as the loop asks: after every step until a stop."""
    answers = []
    for i in range(STEPS_PER_EPOCH):
        step = epoch * STEPS_PER_EPOCH + i + 1
        answers.append((step, p.after_step(step, logged=logged, last_batch=i + 1 == STEPS_PER_EPOCH)))
        if answers[-1][1] == p.STOP:
            break
    return answers


def test_steps_interval_saves_at_once_except_in_an_epochs_last_step_which_waits_for_its_end():
    p, flag = policy(checkpoint_interval=2)
    assert run_epoch(p, 0) == [(1, None), (2, "save"), (3, None), (4, None)]  # 4 is due: after validation
    assert p.pending and p.at_epoch_end(4, 1) == "save" and not p.pending
    assert run_epoch(p, 1) == [(5, None), (6, "save"), (7, None), (8, None)]
    assert p.at_epoch_end(8, 2) == "save" and not p.stopped_early  # the end of the last epoch
    assert [s for s, _ in flag.looks] == [1, 2, 3, 4, 4, 5, 6, 7, 8, 8]  # every step, and every epoch's end


def test_nothing_due_means_no_write_until_the_end():
    p, _ = policy()
    assert all(a is None for _, a in run_epoch(p, 0)) and p.at_epoch_end(4, 1) is None
    assert all(a is None for _, a in run_epoch(p, 1)) and p.at_epoch_end(8, 2) == "save"


def test_time_falls_due_at_a_log_point_and_a_write_restarts_the_count():
    p, _ = policy(checkpoint_every_s=5.0)
    p.cadence.logged(1, 3.0)
    assert p.after_step(1, logged=True, last_batch=False) is None
    p.cadence.logged(2, 3.0)  # 6 s since the start
    assert p.after_step(2, logged=False, last_batch=False) is None  # time is read at log points only
    assert p.after_step(2, logged=True, last_batch=False) == "save"
    assert p.cadence.since_checkpoint == 0.0


def test_a_signal_saves_the_step_it_lands_in_even_an_epochs_last_one_and_stops():
    for at in (2, STEPS_PER_EPOCH):
        p, flag = policy()
        answers = []
        for i in range(STEPS_PER_EPOCH):
            if i + 1 == at:
                flag.received = signal.SIGTERM
            answers.append(p.after_step(i + 1, logged=False, last_batch=i + 1 == STEPS_PER_EPOCH))
            if answers[-1] == p.STOP:
                break
        assert answers[-1] == "stop" and len(answers) == at  # last.pt before any validation
        assert p.stopped_early and p.signalled(at) == signal.SIGTERM


def test_stop_at_step_stops_at_once_mid_epoch_and_after_validation_at_an_epochs_end():
    p, _ = policy(stop_at_step=3)
    assert run_epoch(p, 0) == [(1, None), (2, None), (3, "stop")] and p.stopped_early
    p, _ = policy(stop_at_step=4)
    assert run_epoch(p, 0)[-1] == (4, None)  # the epoch's last step: its validation comes first
    assert p.at_epoch_end(4, 1) == "stop" and p.stopped_early  # epoch 1 of 2
    p, _ = policy(stop_at_step=8)
    run_epoch(p, 0), p.at_epoch_end(4, 1), run_epoch(p, 1)
    assert p.at_epoch_end(8, 2) == "stop" and not p.stopped_early  # it is the end anyway


def test_a_signal_during_validation_or_after_the_loops_last_look():
    p, flag = policy()
    run_epoch(p, 0)
    flag.received = signal.SIGINT
    assert p.validation_cut(4) == "stop" and p.signalled(4) == signal.SIGINT
    p, flag = policy()
    run_epoch(p, 0), p.at_epoch_end(4, 1), run_epoch(p, 1), p.at_epoch_end(8, 2)
    assert p.signalled(8) is None
    flag.received = signal.SIGTERM  # after the loop's last look: the second one sees it
    assert p.signalled(8) == signal.SIGTERM


def test_a_record_goes_once_to_every_sink_each_in_its_own_form(tmp_path):
    log = MetricsLog(tmp_path / "metrics.jsonl")
    seen = []

    class Curves(TensorBoardLog):
        def scalars(self, step, values, prefix):
            seen.append((step, prefix, dict(values)))

    sinks = LogSinks(log, Curves(tmp_path, enabled=False))
    record = {"kind": "train", "step": 3, "epoch": 1, "loss": 2.0, "rec": 1.5, "kl": 0.5, "images_per_s": 10.0}
    bar = EpochProgress(Console(quiet=True), 0, 1, 4)
    with sinks.showing(bar):
        assert sinks.sinks[-1] is bar
        sinks.write(record, gpu_util=40.0)
    assert bar not in sinks.sinks  # the bar is a sink for its epoch only
    assert "SSE 1.5" in bar.progress.tasks[0].fields["stats"]
    sinks.write({"kind": "val", "step": 4, "epoch": 1, "elbo": -3.0})
    assert [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()] == \
        [record, {"kind": "val", "step": 4, "epoch": 1, "elbo": -3.0}]  # no machine readings in the file
    assert seen == [(3, "train", {**record, "gpu_util": 40.0}), (4, "val", {"kind": "val", "step": 4, "epoch": 1,
                                                                           "elbo": -3.0})]
