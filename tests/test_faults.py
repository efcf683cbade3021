"""Fault injection on CPU with gloo and 2 ranks: hung ranks and NaN (a damaged
checkpoint: test_train_resume.py). (A rank
SIGKILLed mid-epoch, restarted by torchrun and resumed exactly: test_remote_training.py, where the
run streams from an object store and is compared with the same run on local shards.)

Faults strike at a known step (core/faults.py's named fault points), not by racing the clock, and
the runs use the tiny model so checkpoints cost next to nothing.
"""
import contextlib
import json
import os
import signal
import subprocess
import sys
import time

from helpers import ROOT, TWO_RANK_ARGS
from core.faults import fault_env

TRAIN = os.path.join(ROOT, "train.py")


def common(shards: str, run_dir: str, epochs: int = 3, batch: int = 4) -> list[str]:
    return ["--shards", shards, "--run-dir", run_dir, "--epochs", str(epochs), "--batch-size", str(batch),
            "--crops-per-track", "1", "--clip-seconds", "2", "--ckpt-every", "3", "--seed", "3", "--model", "tiny",
            *TWO_RANK_ARGS]


def torchrun(*args: str, max_restarts: int = 0) -> list[str]:
    # --standalone: a free rendezvous port per run, so parallel suites and leftovers never collide
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "--max-restarts",
            str(max_restarts), "--monitor-interval", "0.2", TRAIN, *args]


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


def state(pid: int) -> str:
    """The process's state letter (R, S, T stopped, Z exited), or X when it is gone."""
    try:
        return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "X"


def history(run_dir: str) -> list[dict]:
    return json.load(open(os.path.join(run_dir, "metrics.json")))["history"]


def test_hung_rank_does_not_hang_the_job(train_shards, tmp_path):
    """Rank 1 SIGSTOPs itself after step 4: rank 0's next collective times out (PT_PG_TIMEOUT_S) and
    it exits instead of waiting forever. The test ends as soon as rank 0 is gone (torchrun itself
    would then wait 30 s for the stopped rank to take its SIGTERM)."""
    env = {**os.environ, "PT_PG_TIMEOUT_S": "6", **fault_env("step", "1.4", rank=1, action="stop")}
    proc = subprocess.Popen(torchrun(*common(train_shards[0], str(tmp_path / "r"))), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, cwd=ROOT, env=env, start_new_session=True)
    try:
        t0 = time.time()
        pids = {}
        while len(pids) < 2 or state(pids[1]) != "T":  # rank 1 has stopped itself
            assert proc.poll() is None and time.time() - t0 < 240, f"rank 1 never stopped ({pids})"
            pids = rank_pids(proc.pid) if len(pids) < 2 else pids
            time.sleep(0.05)
        stopped = time.time()
        while state(pids[0]) not in ("Z", "X"):
            assert time.time() - stopped < 90, "rank 0 still waits for the stopped rank"
            time.sleep(0.05)
        assert time.time() - stopped >= 5  # it waited for the timeout, it did not crash at once
    finally:  # torchrun and, in sessions of their own, its ranks: the stopped one would outlive the test
        for pid in [*rank_pids(proc.pid).values(), *pids.values()]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    deadline = time.time() + 15  # SIGKILL is asynchronous: a dying rank still unmaps its memory
    while not all(state(pid) in ("Z", "X") for pid in pids.values()) and time.time() < deadline:
        time.sleep(0.05)
    assert all(state(pid) in ("Z", "X") for pid in pids.values()), {r: state(p) for r, p in pids.items()}


def test_persistent_nan_stops_with_step_and_keys(train_shards, tmp_path):
    """The loss is read from the device every --sync-every steps, yet the report names the first bad
    step and its batch exactly as a check after every step does."""
    reports = []
    for every in ("1", "7"):
        p = subprocess.run([sys.executable, TRAIN, *common(train_shards[0], str(tmp_path / every)), "--nproc", "2",
                            "--lr", "1e30", "--warmup-epochs", "0", "--sync-every", every, "--ckpt-every", "0"],
                           capture_output=True, text=True, cwd=ROOT, timeout=300)
        assert p.returncode == 1, p.stderr[-2000:]
        lines = [ln for ln in p.stderr.replace("\r", "\n").splitlines() if "train: error: non-finite loss" in ln]
        assert len(lines) == 1 and "epoch 1 step" in lines[0] and "batch:" in lines[0]
        assert "Traceback" not in p.stderr
        assert not os.path.exists(tmp_path / every / "last.pt")  # nothing saved after the loss went bad
        reports.append(lines[0][lines[0].index("train: error:"):])  # without the progress bar before it
    assert reports[0] == reports[1]
