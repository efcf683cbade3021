"""Fault injection on CPU with gloo and 2 ranks: killed and hung ranks, damaged checkpoints, NaN."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from conftest import ROOT, TWO_RANK_ARGS

TRAIN = os.path.join(ROOT, "train.py")


def common(shards: str, run_dir: str, epochs: int = 3, batch: int = 4) -> list[str]:
    return ["--shards", shards, "--run-dir", run_dir, "--epochs", str(epochs), "--batch-size", str(batch),
            "--crops-per-track", "1", "--clip-seconds", "2", "--ckpt-every", "3", "--seed", "3", "--model", "resnet",
            *TWO_RANK_ARGS]


def wait_for_mid_epoch_checkpoint(run_dir: str, proc: subprocess.Popen, min_epoch: int, timeout: float = 240) -> dict:
    """Poll last.pt until it was written inside an epoch >= min_epoch; returns its position."""
    import torch
    path, seen, t = os.path.join(run_dir, "last.pt"), None, time.time()
    while True:
        assert proc.poll() is None, "training ended before the fault could be injected"
        assert time.time() - t < timeout, "no mid-epoch checkpoint appeared"
        try:
            mtime = os.stat(path).st_mtime_ns
            if mtime != seen:
                seen = mtime
                st = torch.load(path, weights_only=True, map_location="cpu")
                if st["epoch"] >= min_epoch and 0 < st["step"] < st["steps"]:
                    return {"epoch": st["epoch"], "step": st["step"]}
        except (OSError, RuntimeError, EOFError):
            pass  # being replaced right now
        time.sleep(0.02)


def torchrun(*args: str, max_restarts: int = 0) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--max-restarts",
            str(max_restarts), "--monitor-interval", "0.5", TRAIN, *args]


def rank_pids(root_pid: int) -> dict[int, int]:
    """{rank: pid} of the training processes below a torchrun process (read from /proc)."""
    found = {}
    for d in filter(str.isdigit, os.listdir("/proc")):
        try:
            env = open(f"/proc/{d}/environ", "rb").read().split(b"\0")
            cmd = open(f"/proc/{d}/cmdline", "rb").read()
        except OSError:
            continue
        if b"train.py" in cmd and _has_ancestor(int(d), root_pid):
            for kv in env:
                if kv.startswith(b"RANK="):
                    found[int(kv[5:])] = int(d)
    return found


def _has_ancestor(pid: int, ancestor: int) -> bool:
    for _ in range(6):
        try:
            pid = int(open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[1])
        except OSError:
            return False
        if pid == ancestor:
            return True
    return False


def wait_for(path: str, proc: subprocess.Popen, timeout: float = 240) -> None:
    t = time.time()
    while not os.path.exists(path):
        assert proc.poll() is None, "training ended before the fault could be injected"
        assert time.time() - t < timeout, f"{path} never appeared"
        time.sleep(0.1)


def history(run_dir: str) -> list[dict]:
    return json.load(open(os.path.join(run_dir, "metrics.json")))["history"]


def test_killed_rank_restarts_and_resumes_mid_epoch(train_shards, tmp_path):
    shards = train_shards[0]
    ref = subprocess.run(torchrun(*common(shards, str(tmp_path / "ref"), batch=2)), capture_output=True, text=True,
                         cwd=ROOT, timeout=600)
    assert ref.returncode == 0, ref.stderr[-2000:]

    run_dir = str(tmp_path / "faulty")
    proc = subprocess.Popen(torchrun(*common(shards, run_dir, batch=2), max_restarts=1), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        pos = wait_for_mid_epoch_checkpoint(run_dir, proc, min_epoch=2)
        pids = rank_pids(proc.pid)
        assert 1 in pids, f"rank processes not found: {pids}"
        os.kill(pids[1], signal.SIGKILL)
        out, err = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err[-3000:]
    resumed = [ln for ln in out.splitlines() if ln.startswith("resumed from")]
    assert len(resumed) == 1 and f"at epoch {pos['epoch']} step " in resumed[0]
    assert not resumed[0].endswith(" step 0")  # mid-epoch, from its data position
    a, b = history(str(tmp_path / "ref")), history(run_dir)
    assert [h["epoch"] for h in b] == [1, 2, 3]
    # the same batches in the same order from the same weights, optimizer, schedule and RNG: the
    # faulted run's results equal the uninterrupted run's
    keys = ("train_loss", "train_acc", "val_loss", "val_track_acc")
    for x, y in zip(a, b):
        assert [round(x[k], 6) for k in keys] == [round(y[k], 6) for k in keys]


def test_damaged_last_checkpoint_falls_back_to_previous(train_shards, tmp_path):
    shards = train_shards[0]
    run_dir = str(tmp_path / "r")
    p = subprocess.run([sys.executable, TRAIN, *common(shards, run_dir, epochs=1)], capture_output=True, text=True, cwd=ROOT)
    assert p.returncode == 0, p.stderr[-2000:]
    last = os.path.join(run_dir, "last.pt")
    with open(last, "r+b") as f:
        f.truncate(1000)
    p = subprocess.run([sys.executable, TRAIN, *common(shards, run_dir, epochs=2), "--resume"], capture_output=True,
                       text=True, cwd=ROOT)
    assert p.returncode == 0, p.stderr[-2000:]
    assert f"warning: skipping {last}: unreadable or truncated checkpoint" in p.stderr
    assert f"resumed from {os.path.join(run_dir, 'prev.pt')} at epoch 1 step 9" in p.stdout
    assert [h["epoch"] for h in history(run_dir)] == [1, 2]


def test_hung_rank_does_not_hang_the_job(train_shards, tmp_path):
    """SIGSTOP one rank: the others' collectives time out (PT_PG_TIMEOUT_S) and the job ends."""
    run_dir = str(tmp_path / "r")
    env = {**os.environ, "PT_PG_TIMEOUT_S": "6"}
    proc = subprocess.Popen(torchrun(*common(train_shards[0], run_dir)), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env)
    pids = {}
    try:
        wait_for_mid_epoch_checkpoint(run_dir, proc, min_epoch=1)
        pids = rank_pids(proc.pid)
        os.kill(pids[1], signal.SIGSTOP)
        t = time.time()
        proc.communicate(timeout=150)
        assert proc.returncode != 0
        assert time.time() - t < 150
    finally:
        for pid in pids.values():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if proc.poll() is None:
            proc.kill()


def test_persistent_nan_stops_with_step_and_keys(train_shards, tmp_path):
    p = subprocess.run([sys.executable, TRAIN, *common(train_shards[0], str(tmp_path / "r")), "--nproc", "2",
                        "--lr", "1e30", "--warmup-epochs", "0"], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert p.returncode == 1
    lines = [ln for ln in p.stderr.replace("\r", "\n").splitlines() if "train: error: non-finite loss" in ln]
    assert len(lines) == 1 and "epoch 1 step" in lines[0] and "batch:" in lines[0]
    assert "Traceback" not in p.stderr
