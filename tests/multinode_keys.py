"""The worker of tests/test_multinode.py, one per rank under torchrun: which samples does this rank read?

    torchrun ... tests/multinode_keys.py SHARDS OUT [TRAIN_ARG ...]

Joins the job's process group the way train.py does (``model.training.runtime.init_distributed``),
reads one shuffled epoch of the train and val splits with keys through ``pipeline.make_loader``
(webdataset, the same with the decoded-image cache serving epoch 1, and, when it imports, DALI on CPU;
last batch kept), and writes what it read to
``OUT/rank{R}.json`` together with what torchrun told it (its node's rank, its local rank). Then,
when TRAIN_ARGs follow, it runs the real train.py in this same process with them (train.py reuses
the process group already joined), so one two-agent launch checks both; its exit code is the
worker's.
"""
from __future__ import annotations

import json
import os
import runpy
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script by torchrun: make the project importable

SPLITS = ("train", "val")
BATCH = 7  # not a divisor of any part: the short last batch must be read too


def read_keys(shards: str) -> dict[str, dict[str, list[str]]]:
    from pipeline.loader import dali_import_error, make_loader

    # name → (backend, threads, cache); "+cache" reads epoch 1, served by the decoded-image cache
    readers = {"webdataset": ("webdataset", 0, "none"),  # decode in this process: no worker start-up
               "webdataset+cache": ("webdataset", 0, "host")}
    if dali_import_error() is None:
        readers["dali-cpu"] = ("dali-cpu", 1, "none")
    out: dict[str, dict[str, list[str]]] = {}
    for name, (backend, threads, cache) in readers.items():
        out[name] = {}
        for split in SPLITS:
            loader = make_loader(shards, split, BATCH, device="cpu", backend=backend, with_keys=True, drop_last=False,
                                 shuffle=True, size=16, num_threads=threads, cache=cache)
            try:
                if cache != "none":
                    for _ in loader:  # epoch 0 fills it
                        pass
                out[name][split] = [key for _, keys in loader for key in keys]
            finally:
                loader.close()
    return out


def main() -> int:
    shards, out, train_args = sys.argv[1], Path(sys.argv[2]), sys.argv[3:]
    import torch

    from model.training.runtime import init_distributed

    torch.set_num_threads(1)
    rank, local_rank, world_size = init_distributed()
    record = {"rank": rank, "world_size": world_size, "local_rank": local_rank,
              "node_rank": int(os.environ.get("GROUP_RANK", "-1")), "keys": read_keys(shards)}
    (out / f"rank{rank}.json").write_text(json.dumps(record))
    if not train_args:
        from model.training.runtime import shutdown_distributed

        shutdown_distributed()
        return 0
    sys.argv = [str(ROOT / "train.py"), *train_args]
    runpy.run_path(str(ROOT / "train.py"), run_name="__main__")  # ends with SystemExit(its exit code)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
