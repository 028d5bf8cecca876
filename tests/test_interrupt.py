"""Stops outside train.py: every CLI's one line for Ctrl-C, SIGTERM and a full disk (``cli_entry``), and
the data commands' promise that an interrupted run never looks complete and the same command resumes it.

The synthetic generator gets a real Ctrl-C (SIGINT to its whole process group, workers included, as a
terminal sends it); preshard is interrupted in-process after its third shard, which is deterministic
where a signal would race a run that takes a second.
"""
from __future__ import annotations

import errno
import json
import os
import shlex
import signal
import subprocess
import sys
import time

import pytest

from pipeline.errors import cli_entry
from tests.test_train_stop import default_sigint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_cli_entry_one_line_for_sigterm_ctrl_c_and_a_full_disk(tmp_path, capsys):
    before = signal.getsignal(signal.SIGTERM)

    @cli_entry(resumable=True)
    def terminated() -> int:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(30)  # the handler raises out of the sleep
        return 0

    assert terminated() == 143
    err = capsys.readouterr().err
    assert err.startswith("stopped by SIGTERM: nothing half-done looks finished; run the same command to continue: ")
    assert err.count("\n") == 1 and signal.getsignal(signal.SIGTERM) is before  # handler restored

    @cli_entry
    def interrupted() -> int:
        raise KeyboardInterrupt

    assert interrupted() == 130
    assert capsys.readouterr().err == "stopped by Ctrl-C (SIGINT)\n"

    @cli_entry
    def disk_full() -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp_path / "big.bin"))

    assert disk_full() == 2
    err = " ".join(capsys.readouterr().err.split())
    assert err.startswith(f"error: disk full while writing {tmp_path / 'big.bin'}: ") and " MB free on " in err

    @cli_entry
    def other_os_error() -> int:
        raise PermissionError(errno.EACCES, "Permission denied", str(tmp_path / "theirs"))

    assert other_os_error() == 2  # any OSError on a path: one line naming it and what to do (#27)
    assert capsys.readouterr().err == (f"error: {tmp_path / 'theirs'}: Permission denied (EACCES); choose a path you "
                                       "may use, or change its permissions\n")


@pytest.mark.slow
def test_synthetic_generator_ctrl_c_then_the_same_command_resumes(tmp_path):
    from pipeline.synthetic import write_synthetic_celeba

    out, n = tmp_path / "tree", 400
    cmd = [sys.executable, "-m", "pipeline.synthetic", "--out", str(out), "--n", str(n), "--workers", "2"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, preexec_fn=default_sigint)
    images = out / "img_align_celeba"
    deadline = time.monotonic() + 120
    while len(list(images.glob("*.jpg")) if images.is_dir() else []) < 40:
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read() if proc.poll() else "timeout"
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGINT)
    err = proc.communicate(timeout=60)[1]
    assert proc.returncode == 130 and "Traceback" not in err, err
    assert err.count("\n") == 1 and "run the same command to continue: " in err
    assert not (out / "list_eval_partition.txt").exists()  # does not look complete
    assert json.loads((out / ".synthetic.json").read_text())["complete"] is False  # nor says it is
    assert not list(images.glob(".*.tmp"))
    kept = {p.name: p.stat().st_mtime_ns for p in images.glob("*.jpg")}
    assert 40 <= len(kept) < n

    again = shlex.split(err.split("continue: ", 1)[1])
    assert again == cmd
    done = subprocess.run(again, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert {p.name: p.stat().st_mtime_ns for p in images.glob("*.jpg") if p.name in kept} == kept  # not redrawn
    assert sorted(os.listdir(out)) == [".synthetic.json", "img_align_celeba", "list_attr_celeba.txt",
                                       "list_eval_partition.txt"]
    assert json.loads((out / ".synthetic.json").read_text())["complete"] is True
    whole = write_synthetic_celeba(tmp_path / "whole", n, workers=2)
    for name in ("list_eval_partition.txt", "list_attr_celeba.txt"):
        assert (out / name).read_bytes() == (whole / name).read_bytes()
    for i in range(1, n + 1):
        name = f"img_align_celeba/{i:06d}.jpg"
        assert (out / name).read_bytes() == (whole / name).read_bytes(), name


def test_preshard_interrupted_then_the_same_command_resumes(celeba_tree, shards_dir, tmp_path, capsys, monkeypatch):
    """preshard stopped right after its third shard is logged: no manifest.json (nothing looks complete),
    and the same command keeps those shards and ends with the shards of an uninterrupted run."""
    import pipeline.preshard.run as run
    from pipeline.preshard import main
    from tests.conftest import SHARD_SAMPLES

    real, logged = run.append_state, []

    def interrupted_after_three(out, record):
        real(out, record)
        logged.append(record)
        if len(logged) == 3:
            raise KeyboardInterrupt

    monkeypatch.setattr(run, "append_state", interrupted_after_three)
    out = tmp_path / "shards"
    argv = ["--celeba", str(celeba_tree), "--out", str(out), "--max-samples", str(SHARD_SAMPLES), "--workers", "1"]
    assert main(argv) == 130
    err = capsys.readouterr().err
    assert "run the same command to continue" in err and err.count("\n") == 1
    assert not (out / "manifest.json").exists() and (out / ".preshard-state.jsonl").exists()
    assert not [p for p in out.rglob(".*") if p.name != ".preshard-state.jsonl"]  # no temporary shard left

    monkeypatch.setattr(run, "append_state", real)
    assert main(argv) == 0
    assert "3 finished shard(s) kept" in " ".join(capsys.readouterr().out.split())
    resumed = json.loads((out / "manifest.json").read_text())
    reference = json.loads((shards_dir / "manifest.json").read_text())
    assert resumed["splits"] == reference["splits"] and resumed["fingerprint"] == reference["fingerprint"]
