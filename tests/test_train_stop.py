"""Runs that survive: Ctrl-C and SIGTERM, kill -9 at random moments, a full disk, a second trainer.

Real signals go to real train.py processes (tests/train_with_faults.py: train.py plus faults that an
environment variable switches on, e.g. a step that sleeps so that a signal lands in it). Every
interrupted run is resumed and compared with an uninterrupted one: the same metrics.jsonl records
and the same weights, bit for bit (CPU). The settings are tests/test_train.py's SMALL ones on the
shared 240-face shards: 12 steps per epoch, 2 epochs, a checkpoint every 4 steps.
"""
from __future__ import annotations

import errno
import json
import os
import random
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from model.training.checkpoint import load_checkpoint
from tests.test_train import ROOT, SMALL, _main, read_jsonl, run_train

FAULTS = ROOT / "tests" / "train_with_faults.py"
INTERVAL = 4
SETTINGS = ["--epochs", 2, "--checkpoint_interval", INTERVAL, *SMALL]


@pytest.fixture(scope="module")
def reference(shards_dir, tmp_path_factory) -> Path:
    """The uninterrupted run every interrupted one must end up equal to."""
    out = tmp_path_factory.mktemp("stop") / "reference"
    run_train("--data", shards_dir, "--out", out, *SETTINGS)
    return out


class Run:
    """A train.py process (through train_with_faults.py) with its output in files, and its fault marker."""

    def __init__(self, tmp: Path, argv: list, **faults: object) -> None:
        self.marker = tmp / f"marker-{time.monotonic_ns()}"
        self.stderr_path = self.marker.with_suffix(".err")
        env = {**os.environ, "COLUMNS": "200", "FAULT_MARKER": str(self.marker)}
        env.update({name: str(value) for name, value in faults.items()})
        cmd = argv if argv and str(argv[0]) == sys.executable else [sys.executable, str(FAULTS), *argv]
        with open(self.marker.with_suffix(".out"), "w") as out, open(self.stderr_path, "w") as err:
            self.proc = subprocess.Popen([str(a) for a in cmd], cwd=ROOT, env=env, stdout=out, stderr=err,
                                         preexec_fn=default_sigint)

    def wait_for(self, path: Path, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while not path.exists():
            assert self.proc.poll() is None, f"exited {self.proc.returncode} before {path.name}:\n{self.stderr}"
            assert time.monotonic() < deadline, f"{path} did not appear within {timeout} s"
            time.sleep(0.05)

    def wait_for_lock(self, run_dir: Path, timeout: float = 120) -> None:
        """Until this process holds ``run_dir``'s lock (a killed run's stale lock file may be there before)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                if json.loads((run_dir / ".lock").read_text())["pid"] == self.proc.pid:
                    return
            except (OSError, ValueError, KeyError):
                pass
            assert self.proc.poll() is None, f"exited {self.proc.returncode} before taking the lock:\n{self.stderr}"
            assert time.monotonic() < deadline, f"no lock within {timeout} s"
            time.sleep(0.05)

    def finish(self, timeout: float = 120) -> int:
        return self.proc.wait(timeout)

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text()


def default_sigint() -> None:
    """In a child: Ctrl-C's default action, even where pytest runs as a shell's background job (which
    ignores SIGINT, and children inherit that)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def curve(run: Path) -> list[tuple]:
    return [(r["kind"], r["step"], r["epoch"], r.get("loss"), r["rec"], r["kl"])
            for r in read_jsonl(run / "metrics.jsonl")]


def assert_same_run(run: Path, reference: Path) -> None:
    assert curve(run) == curve(reference)  # every record once, none missing, same values
    a = torch.load(run / "checkpoints/last.pt", weights_only=False)["model"]
    b = torch.load(reference / "checkpoints/last.pt", weights_only=False)["model"]
    assert all(torch.equal(a[k], b[k]) for k in b)
    assert not list(run.rglob("*.tmp")) and not (run / ".lock").exists()


def stop_line(stderr: str, signum: int, step: int) -> list[str]:
    """The resume command of the one line a stopped run prints."""
    name = "Ctrl-C (SIGINT)" if signum == signal.SIGINT else "SIGTERM"
    lines = [line for line in stderr.splitlines() if line.startswith(f"stopped by {name} at step {step}:")]
    assert len(lines) == 1, stderr
    return shlex.split(lines[0].split("resume with: ", 1)[1])


@pytest.mark.slow
def test_sigint_and_sigterm_stop_at_the_step_and_the_printed_command_resumes_exactly(reference, shards_dir, tmp_path,
                                                                                   capsys):
    out = tmp_path / "run"
    first = Run(tmp_path, ["--data", shards_dir, "--out", out, *SETTINGS], FAULT_SLOW_STEP="5:4")
    first.wait_for(first.marker)  # in step 5
    # Meanwhile a second trainer on the same run directory is refused, naming the live one.
    rc, err = _main(capsys, "--out", out, "--resume")
    assert rc == 2 and f"is in use by pid {first.proc.pid} on host {socket.gethostname()}" in err, err
    first.proc.send_signal(signal.SIGINT)
    assert first.finish(timeout=30) == 130
    resume = stop_line(first.stderr, signal.SIGINT, 5)
    assert resume[-3:] == ["--out", str(out), "--resume"]
    ck = load_checkpoint(out / "checkpoints/last.pt")
    assert (ck["step"], ck["epoch"], ck["batch_in_epoch"]) == (5, 0, 5)

    # SIGTERM in the last step of epoch 1: last.pt at that step at once, the epoch's validation left to the resume.
    second = Run(tmp_path, resume, FAULT_SLOW_STEP="7:3")  # its 7th step is step 12
    second.wait_for(second.marker)
    second.proc.send_signal(signal.SIGTERM)
    assert second.finish(timeout=30) == 143
    resume = stop_line(second.stderr, signal.SIGTERM, 12)
    ck = load_checkpoint(out / "checkpoints/last.pt")
    assert (ck["step"], ck["epoch"], ck["batch_in_epoch"]) == (12, 0, 12)
    assert not [r for r in read_jsonl(out / "metrics.jsonl") if r["kind"] == "val"]
    assert not (out / "checkpoints/best.pt").exists()

    assert Run(tmp_path, resume).finish() == 0
    assert_same_run(out, reference)


def test_a_signal_after_the_loops_last_look_still_stops_before_the_test(shards_dir, tmp_path, capsys, monkeypatch):
    """SIGTERM arriving just after the last check of the flag (here: at --stop_at_step's step) is not swallowed:
    the run ends with the stop line and 143 instead of going on to the test evaluation and pictures."""
    import train
    from model.training.signals import StopSignals

    class LateSignal(StopSignals):
        fired = False

        def should_stop(self, step: int, *, force: bool = False) -> bool:
            answer = super().should_stop(step, force=force)
            if step == 2 and not self.fired:  # the loop's look after step 2, its last
                self.fired = True
                os.kill(os.getpid(), signal.SIGTERM)  # handled before this returns: the answer is already False
            return answer

    monkeypatch.setattr(train, "StopSignals", LateSignal)
    out = tmp_path / "run"
    rc, err = _main(capsys, "--data", shards_dir, "--out", out, "--stop_at_step", 2, *SETTINGS)
    assert rc == 143 and "stopped by SIGTERM at step 2:" in err, err
    assert load_checkpoint(out / "checkpoints/last.pt")["step"] == 2
    assert not (out / "summary.json").exists() and "test" not in {r["kind"] for r in read_jsonl(out / "metrics.jsonl")}


@pytest.mark.slow  # trains in-process until its validation
def test_a_signal_during_validation_cuts_it_short(shards_dir, tmp_path, capsys, monkeypatch):
    """SIGTERM after the first validation batch: the validation stops there, last.pt is written at the epoch's last
    step with the epoch unfinished (the resumed run validates, as after a stop in that step), no val record."""
    import train

    real = train.validate

    def validate(model, batches, *args, **kwargs):
        def signalled():
            for i, batch in enumerate(batches):
                if i == 1:
                    os.kill(os.getpid(), signal.SIGTERM)
                yield batch
        return real(model, signalled(), *args, **kwargs)

    monkeypatch.setattr(train, "validate", validate)
    out = tmp_path / "run"
    rc, err = _main(capsys, "--data", shards_dir, "--out", out, *SETTINGS, "--eval_batch_size", 8)
    assert rc == 143 and "stopped by SIGTERM at step 12:" in err, err
    ck = load_checkpoint(out / "checkpoints/last.pt")
    assert (ck["step"], ck["epoch"], ck["batch_in_epoch"]) == (12, 0, 12)
    assert "val" not in {r["kind"] for r in read_jsonl(out / "metrics.jsonl")}
    assert not (out / "checkpoints/best.pt").exists()


@pytest.mark.slow
def test_a_second_ctrl_c_quits_at_once_without_saving(shards_dir, tmp_path):
    out = tmp_path / "run"
    run = Run(tmp_path, ["--data", shards_dir, "--out", out, *SETTINGS], FAULT_SLOW_STEP="6:120")
    run.wait_for(run.marker)
    run.proc.send_signal(signal.SIGINT)
    time.sleep(0.5)  # a second press, not the same one
    t0 = time.monotonic()
    run.proc.send_signal(signal.SIGINT)
    assert run.finish(timeout=60) == 130
    assert time.monotonic() - t0 < 15  # the step it was in sleeps for two minutes
    assert "without saving" in run.stderr and "(step 4) is intact" in run.stderr
    assert load_checkpoint(out / "checkpoints/last.pt")["step"] == 4
    assert not list(out.rglob("*.tmp")) and not (out / ".lock").exists()


@pytest.mark.slow
def test_kill_9_at_random_moments_then_resume(reference, shards_dir, tmp_path):
    """Killed at a random moment of training, in the middle of writing a checkpoint, and at a random
    moment later on (training, validation, the test or the pictures): each time the checkpoint loads,
    at most one checkpoint interval is lost, and the run finally equals the uninterrupted one."""
    seed = int(os.environ.get("KILL_SEED", "0"))  # other moments: KILL_SEED=N; a failure names its seed
    rng = random.Random(seed)
    why = f"(KILL_SEED={seed})"
    out = tmp_path / "run"
    ckpt = out / "checkpoints" / "last.pt"

    def kill(run: Run) -> None:
        if run.proc.poll() is None:
            run.proc.send_signal(signal.SIGKILL)
        run.finish()
        ck = load_checkpoint(ckpt)  # complete and readable, whatever the moment
        records = read_jsonl(out / "metrics.jsonl", torn_tail_ok=True)  # a kill may tear the line being appended
        logged = max((r["step"] for r in records if r["kind"] == "train"), default=0)
        assert logged - ck["step"] <= INTERVAL, why

    # 1. a random moment once training has checkpointed (each step slowed down to spread them out)
    run = Run(tmp_path, ["--data", shards_dir, "--out", out, *SETTINGS], FAULT_STEP_SECONDS=0.1)
    run.wait_for(ckpt)
    time.sleep(rng.uniform(0, 1.5))
    kill(run)

    # 2. half-way through writing a checkpoint (the lock the killed run left is taken over)
    done = load_checkpoint(ckpt)["step"]
    target = rng.choice([s for s in range(INTERVAL, 25, INTERVAL) if s > done])
    run = Run(tmp_path, ["--out", out, "--resume"], FAULT_SLOW_SAVE=f"{target}:60")
    run.wait_for(run.marker)
    kill(run)
    assert "took over the lock of pid" in run.stderr, run.stderr
    assert list(ckpt.parent.glob(".*.tmp")), why  # the half-written file, beside the intact checkpoint
    assert load_checkpoint(ckpt)["step"] < target, why

    # 3. a random moment of the rest of the run
    run = Run(tmp_path, ["--out", out, "--resume"], FAULT_STEP_SECONDS=0.1)
    run.wait_for_lock(out)
    time.sleep(rng.uniform(0.5, 5))  # the resumed run needs a few seconds more
    kill(run)

    assert Run(tmp_path, ["--out", out, "--resume"]).finish() == 0, why
    assert_same_run(out, reference)


@pytest.mark.slow
@pytest.mark.parametrize("victim,failing_write,kept_step", [
    ("checkpoints/last.pt", 2, INTERVAL),  # the second checkpoint (step 8) fails
    ("metrics.jsonl", 6, 2 * INTERVAL),  # the record of step 10 fails (the first write empties the file)
    ("samples.png", 1, 12),  # a picture, after the last checkpoint
])
def test_a_full_disk_keeps_the_last_checkpoint_and_names_the_file(shards_dir, tmp_path, capsys, monkeypatch, victim,
                                                                  failing_write, kept_step):
    from model.training import checkpoint as disk_full

    real_write, writes = disk_full._write, []
    out = tmp_path / "run"

    def full_disk(fh, data, target: Path) -> None:
        if target == out / victim:
            writes.append(target)
            if len(writes) == failing_write:
                real_write(fh, memoryview(data)[: len(data) // 2], target)  # what fitted, then the disk is full
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_write(fh, data, target)

    monkeypatch.setattr(disk_full, "_write", full_disk)
    rc, err = _main(capsys, "--data", shards_dir, "--out", out, "--epochs", 1, "--checkpoint_interval", INTERVAL,
                    *SMALL)
    notices, err = err[:err.find("error: ")], err[err.find("error: "):]
    assert notices == "" or notices.startswith("notice: decoded images are kept"), notices  # the cache's, if any
    assert rc == 2 and err.startswith(f"error: disk full while writing {out / victim}: "), err
    assert " MB free on " in err and "No space left on device" in err and f"(step {kept_step}) is intact" in err
    assert "resume with:" in err and err.count("error:") == 1
    assert load_checkpoint(out / "checkpoints/last.pt")["step"] == kept_step
    assert not list(out.rglob("*.tmp"))
    assert read_jsonl(out / "metrics.jsonl")  # every line parses: none is torn

    monkeypatch.setattr(disk_full, "_write", real_write)  # space freed
    rc, err = _main(capsys, "--out", out, "--resume")
    assert rc == 0, err
    records = read_jsonl(out / "metrics.jsonl")
    expected = [("train", s) for s in range(2, 13, 2)] + [("val", 12), ("test", 12)]
    assert [(r["kind"], r["step"]) for r in records] == expected
    assert (out / "samples.png").is_file() and not (out / ".lock").exists()


def test_run_lock_refuses_a_live_holder_and_takes_over_a_dead_ones(tmp_path):
    from model.training.checkpoint import RunLock
    from pipeline.errors import ConfigError

    with RunLock(tmp_path / "run"):
        with pytest.raises(ConfigError, match=f"in use by pid {os.getpid()} on host {socket.gethostname()}"):
            RunLock(tmp_path / "run").__enter__()
    assert not (tmp_path / "run").exists()  # made for the lock, nothing written in it: removed again

    run = tmp_path / "kept"
    run.mkdir()
    dead = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True, check=True).stdout)
    (run / ".lock").write_text(json.dumps({"host": socket.gethostname(), "pid": dead, "started": "earlier"}))
    with RunLock(run) as lock:
        assert len(lock.notices) == 1 and f"took over the lock of pid {dead}" in lock.notices[0]
        assert json.loads((run / ".lock").read_text())["pid"] == os.getpid()
    assert run.is_dir() and not (run / ".lock").exists()


def test_a_lock_of_another_host_is_refused_unless_broken(tmp_path, capsys):
    """flock succeeds, but the lock file names another host, whose locks this one may not see (NFS nolock,
    Lustre localflock): refused, naming that run, until train.py --break-lock."""
    from model.training.checkpoint import RunLock
    from pipeline.errors import ConfigError

    run = tmp_path / "run"
    run.mkdir()
    foreign = json.dumps({"host": "node-17", "pid": 4242, "started": "2024-05-01T10:00:00+00:00", "command": "x"})
    (run / ".lock").write_text(foreign)
    with pytest.raises(ConfigError, match=r"locked by pid 4242 on host node-17 "
                                          r"\(since 2024-05-01T10:00:00\+00:00: x\), another host.*--break-lock"):
        RunLock(run).__enter__()
    assert (run / ".lock").read_text() == foreign  # untouched
    rc, err = _main(capsys, "--out", run, "--resume")
    assert rc == 2 and err.count("error:") == 1 and "on host node-17" in err and "--break-lock" in err, err
    rc, err = _main(capsys, "--out", run, "--resume", "--break-lock")  # taken over; then no checkpoint to resume
    assert "broke the lock of pid 4242 on host node-17" in err and "no checkpoint to resume from" in err, err
    assert not (run / ".lock").exists()


def test_a_filesystem_without_locks_falls_back_to_the_pid(tmp_path, monkeypatch):
    import errno as errno_
    import fcntl

    from model.training import checkpoint as run_lock
    from pipeline.errors import ConfigError

    def no_locks(fd, op):
        raise OSError(errno_.ENOLCK, os.strerror(errno_.ENOLCK))

    monkeypatch.setattr(fcntl, "flock", no_locks)  # as pipeline/lock.py, which takes the run lock, calls it
    run = tmp_path / "run"
    with run_lock.RunLock(run) as lock:
        assert lock.notices == [f"notice: {run / '.lock'}: this filesystem has no file locks (flock: ENOLCK); "
                                "judging a previous lock by the host and pid it names"]
        live = os.getppid()  # this host, alive
        (run / ".lock").write_text(json.dumps({"host": socket.gethostname(), "pid": live, "started": "now"}))
        with pytest.raises(ConfigError, match=f"in use by pid {live} on host .*rerun with --break-lock"):
            run_lock.RunLock(run).__enter__()
        with run_lock.RunLock(run, break_lock=True) as broken:
            assert f"broke the lock of pid {live}" in broken.notices[-1]
    def bad_fd(fd, op):
        raise OSError(errno_.EBADF, "Bad file")

    monkeypatch.setattr(fcntl, "flock", bad_fd)
    with pytest.raises(OSError, match="Bad file"):  # any other flock failure is not taken for "no locks"
        run_lock.RunLock(tmp_path / "other").__enter__()
