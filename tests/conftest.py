"""Shared fixtures: a small generated CelebA-layout tree and its shards.

Triton runs in interpreter mode on machines without CUDA; the variable must be set
before triton is first imported, hence here, at collection time.
"""
from __future__ import annotations

import os
import random
import shutil

import numpy as np
import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
# train.py's CPU "auto" follows a timed probe of the step (model/training/runtime.py): runs that tests compare must
# not depend on this machine's speed at that moment, so they take the CPU-flag rule; tests/test_probe.py unsets it.
os.environ.setdefault("VAE_NO_PROBE", "1")
# The tests' own torch work runs on one thread (subprocesses keep torch's default): their tensors are small, and on a
# busy 2-core machine (another job, CI's GPU-stack check beside the suite) a second thread's spinning made the same
# steps many times slower (bench/RESULTS.md, the fast tier). Tests that want more threads set them and put them back.
torch.set_num_threads(1)

# Small enough to build in seconds, big enough that every split has several shards' worth
# when shards hold at most SHARD_SAMPLES samples.
TREE_IMAGES = 240
SHARD_SAMPLES = 64


@pytest.fixture(autouse=True)
def fixed_seeds():
    """Whatever a test draws from the global generators (random, numpy, torch), it draws the same numbers
    on every run, alone or in the suite. Tests that draw on purpose seed their own generator."""
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def celeba_tree(tmp_path_factory):
    """A CelebA-layout folder (img_align_celeba/, list_eval_partition.txt, list_attr_celeba.txt)."""
    from pipeline.synthetic import write_synthetic_celeba

    return write_synthetic_celeba(tmp_path_factory.mktemp("celeba"), n=TREE_IMAGES, seed=0)


@pytest.fixture(scope="session")
def shards_dir(celeba_tree, tmp_path_factory):
    """preshard's output for ``celeba_tree``: {train,val,test}/*.tar + .idx and manifest.json."""
    from pipeline.preshard import preshard

    out = tmp_path_factory.mktemp("shards")
    preshard(celeba_tree, out, max_samples_per_shard=SHARD_SAMPLES, progress=False)
    return out


@pytest.fixture
def shards_copy(shards_dir, tmp_path):
    """A private copy of ``shards_dir`` that a test may damage."""
    dst = tmp_path / "shards"
    shutil.copytree(shards_dir, dst)
    return dst
