"""Session fixtures: a small generated data set in shards, and one real 2-rank training run.

Built once per test session, also when pytest-xdist runs the suite in several worker processes
(`make test` uses 2): helpers.built_once.
"""
import json
import os
import subprocess
import sys
from types import SimpleNamespace

# One OpenMP thread per process, for this process and every one it starts: the suite runs two
# workers on two cores, each starting training ranks, and idle OpenMP threads spin while they wait.
# Runs are compared only with runs made under the same setting.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest
from helpers import ROOT, TRAIN_GENRES, TWO_RANK_ARGS, built_once

from preprocess.make_shards import make_shards
from preprocess.synth import generate


@pytest.fixture(scope="session")
def train_shards(tmp_path_factory):
    """4 genres x 16 tracks of 6 s: small enough to train in seconds, big enough to learn."""
    with built_once(tmp_path_factory, "train_data") as (base, done):
        if not done:
            generate(str(base / "src"), per_class=16, seconds=6.0, seed=1, genres=TRAIN_GENRES, progress=False)
            m = make_shards(str(base / "src"), str(base / "shards"), val=0.2, test=0.2, seed=0, workers=1,
                            min_shards=2, progress=False)
            (base / "done.json").write_text(json.dumps(m))
        return str(base / "shards"), str(base / "src"), json.loads((base / "done.json").read_text())


@pytest.fixture(scope="session")
def trained_run(train_shards, tmp_path_factory):
    """One real 2-rank training run, shared by the training and prediction tests: a one-process
    `torchrun -- train.py --nproc 2`, so train.py starts its 2 ranks itself through torch's launcher
    (plain `torchrun --nproc-per-node 2` runs in test_faults, test_train_resume and test_remote_training).
    Returns (run folder, the run's returncode, stdout and stderr)."""
    shards, src, _ = train_shards
    with built_once(tmp_path_factory, "run") as (base, done):
        run_dir = str(base / "r")
        if not done:
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--",
                   os.path.join(ROOT, "train.py"), "--nproc", "2", "--shards", shards, "--run-dir", run_dir,
                   "--epochs", "8", "--batch-size", "4", "--crops-per-track", "1", "--clip-seconds", "2", "--amp",
                   "--lr", "2e-3", "--model", "resnet", *TWO_RANK_ARGS]
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
            assert p.returncode == 0, p.stderr[-3000:]
            (base / "done.json").write_text(json.dumps({"returncode": p.returncode, "stdout": p.stdout,
                                                        "stderr": p.stderr}))
        return run_dir, SimpleNamespace(**json.loads((base / "done.json").read_text()))
