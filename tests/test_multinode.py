"""Two machines, simulated: two torchrun agents ("nodes") on the loopback interface, one process each.

One launch of ``tests/multinode_keys.py`` under two agents that meet through a c10d rendezvous
(as on a cluster, only with 127.0.0.1 for the hosts): each rank records the keys it reads in one
shuffled epoch (webdataset and DALI-on-CPU loaders, train and val splits, last batch kept), then
runs the real train.py in the same process. The test checks that the two ranks come from
different agents, that their keys are disjoint and together exactly the split, and that the run
completed with both agents exiting 0 and rank 0's files in the run directory.
"""
from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import torch

from tests.test_train import ROOT, SMALL, read_jsonl, steps_per_epoch
from tests.test_train_ddp import _free_port

WORKER = ROOT / "tests" / "multinode_keys.py"
NODES = 2
TIMEOUT = 120  # seconds for the whole launch, which takes ~20 s on 2 idle cores, ~40 s on 2 shared ones
FAILURE_GRACE = 20  # seconds the other agent gets to end by itself once one has failed
BATCH = 32  # per rank: 192 train samples / 2 ranks / 32 = 3 steps, one epoch

pytestmark = pytest.mark.slow


def _skip_without_distributed() -> None:
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available in this torch build")


def _launch_two_nodes(args: list[str], logs: Path, timeout: float = TIMEOUT) -> list[int | str]:
    """Start one torchrun agent per node and wait for both: their exit codes. Whatever happens (a launch
    past ``timeout``, one agent failing and the other not ending within FAILURE_GRACE, an error here),
    both agents' process groups are killed before this returns."""
    port, run_id = _free_port(), f"multinode-{uuid.uuid4().hex[:8]}"
    env = {**os.environ, "COLUMNS": "120", "OMP_NUM_THREADS": "1"}
    agents: list[subprocess.Popen] = []
    try:
        for node in range(NODES):
            cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", str(NODES), "--nproc-per-node", "1",
                   "--node-rank", str(node), "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}",
                   "--rdzv-id", run_id, "--local-addr", "127.0.0.1", "--max-restarts", "0",
                   str(WORKER), *map(str, args)]
            with open(logs / f"node{node}.out", "w") as out, open(logs / f"node{node}.err", "w") as err:
                agents.append(subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=err,
                                               start_new_session=True))
        deadline = time.monotonic() + timeout
        while any(a.poll() is None for a in agents) and time.monotonic() < deadline:
            if any(a.poll() for a in agents):  # one failed: the other gets a short grace, not the full timeout
                deadline = min(deadline, time.monotonic() + FAILURE_GRACE)
            time.sleep(0.1)
        return [a.poll() if a.poll() is not None else "still running (killed)" for a in agents]
    finally:
        for agent in agents:
            _kill_group(agent)


def _kill_group(agent: subprocess.Popen) -> None:
    """End whatever is left of an agent's process group (the agent and its workers): SIGTERM to a running
    agent, 5 s to stop its workers, then SIGKILL to the whole group (a no-op once all have exited)."""
    if agent.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(agent.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            agent.wait(timeout=5)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(agent.pid, signal.SIGKILL)
    agent.wait()


def _tails(logs: Path) -> str:
    """The end of each agent's stderr (the worker's error line sits above torchrun's ~2 KB report) and stdout."""
    return "\n".join(f"--- node {n} {kind} (tail) ---\n{(logs / f'node{n}.{kind}').read_text()[-chars:]}"
                     for n in range(NODES) for kind, chars in (("err", 4000), ("out", 1500)))


def _split_keys(shards: Path, split: str) -> tuple[list[str], list[set[str]]]:
    """Every key of a split, from its shards' index files (not through a loader), and each rank's
    contiguous part of epoch 0's shuffled tar order (seed 0) as pipeline/epoch.py defines it."""
    from pipeline.epoch import epoch_shard_order, rank_bounds
    from pipeline.shards import part_samples, read_split

    s = read_split(shards, split)
    order = epoch_shard_order(s, seed=0, epoch=0, shuffle=True)
    parts = [{x.key for x in part_samples(order, *rank_bounds(s.count, NODES, r))} for r in range(NODES)]
    return [x.key for x in part_samples(s.shards, 0, s.count)], parts


def test_two_agents_read_disjoint_parts_and_train(shards_dir, tmp_path):
    _skip_without_distributed()
    run, logs = tmp_path / "run", tmp_path / "logs"
    logs.mkdir()
    # The final evaluation and pictures run whatever the length of training: made as small as the keys allow.
    train_args = ["--data", shards_dir, "--out", run, "--epochs", 1, *SMALL, "--batch_size", BATCH,
                  "--log_interval", 1, "--eval_iwae_k", 2, "--eval_iwae_images", 8, "--eval_samples", 8,
                  "--n_samples", 4, "--n_reconstructions", 2, "--n_interpolation", 2, "--n_failures", 1]
    codes = _launch_two_nodes([shards_dir, tmp_path, *train_args], logs)
    assert codes == [0] * NODES, f"agents' exit codes {codes}\n{_tails(logs)}"

    # (b) two nodes, one rank each; disjoint parts that cover every split, with every backend
    records = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(NODES)]
    assert [(r["rank"], r["world_size"], r["local_rank"]) for r in records] == [(0, 2, 0), (1, 2, 0)]
    assert sorted(r["node_rank"] for r in records) == [0, 1]  # each rank from its own agent
    backends = records[0]["keys"].keys()
    assert {"webdataset", "webdataset+cache"} <= set(backends)
    for split in ("train", "val"):
        every, parts = _split_keys(shards_dir, split)
        for backend in backends:
            a, b = (r["keys"][backend][split] for r in records)
            where = f"{backend}/{split}"
            assert len(a) == len(set(a)) and len(b) == len(set(b)), f"{where}: a rank read a sample twice"
            assert not set(a) & set(b), f"{where}: both ranks read {sorted(set(a) & set(b))[:5]}"
            assert sorted(a + b) == sorted(every), f"{where}: the ranks' union is not the split"
            assert [set(a), set(b)] == parts, f"{where}: a rank read outside its contiguous part"

    # (a) the train.py run: rank 0 wrote the run directory, one record per step for the whole job
    spe = steps_per_epoch(shards_dir, BATCH, world=NODES)
    records = read_jsonl(run / "metrics.jsonl")
    assert [r["step"] for r in records if r["kind"] == "train"] == list(range(1, spe + 1))
    assert [r["kind"] for r in records if r["kind"] != "train"] == ["val", "test"]
    for name in ("checkpoints/last.pt", "checkpoints/best.pt", "summary.json", "evaluation.json"):
        assert (run / name).is_file(), name
    assert torch.load(run / "checkpoints/last.pt", weights_only=False)["step"] == spe
    summary = json.loads((run / "summary.json").read_text())
    assert summary["world_size"] == NODES and summary["steps"] == spe
    out = "".join((logs / f"node{n}.out").read_text() for n in range(NODES))
    assert out.count("done:") == 1, _tails(logs)  # rank 0 alone prints
