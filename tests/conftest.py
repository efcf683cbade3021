"""Session fixtures: a small generated data set in shards, and one real 2-rank training run."""
import os
import sys

import pytest
from helpers import ROOT, TRAIN_GENRES, TWO_RANK_ARGS

from preprocess.make_shards import make_shards
from preprocess.synth import generate


@pytest.fixture(scope="session")
def train_shards(tmp_path_factory):
    """4 genres x 16 tracks of 6 s: small enough to train in seconds, big enough to learn."""
    base = tmp_path_factory.mktemp("train_data")
    generate(str(base / "src"), per_class=16, seconds=6.0, seed=1, genres=TRAIN_GENRES, progress=False)
    m = make_shards(str(base / "src"), str(base / "shards"), val=0.2, test=0.2, seed=0, workers=2,
                    min_shards=2, progress=False)
    return str(base / "shards"), str(base / "src"), m


@pytest.fixture(scope="session")
def trained_run(train_shards, tmp_path_factory):
    """One real 2-rank torchrun training run, shared by the training and prediction tests."""
    import subprocess
    shards, src, _ = train_shards
    run_dir = str(tmp_path_factory.mktemp("run") / "r")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           os.path.join(ROOT, "train.py"),
           "--shards", shards, "--run-dir", run_dir, "--epochs", "8", "--batch-size", "4", "--crops-per-track", "1",
           "--clip-seconds", "2", "--amp", "--lr", "2e-3", "--model", "resnet", *TWO_RANK_ARGS]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert p.returncode == 0, p.stderr[-3000:]
    return run_dir, p
