"""Training from object storage: a real S3 server (SeaweedFS) and a real HTTP server on loopback.

The guarantees of local shards hold across the network: the same seed gives the same metrics as
the same shards read locally, on one node or two (two torchrun invocations with their own caches),
with a cache smaller than an epoch, and after a rank is killed mid-epoch. Faults: the server
stopped and restarted mid-epoch, a shard deleted, a shard's bytes altered, a wrong credential.
"""
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time

import pytest
import torch
from helpers import ROOT, TWO_RANK_ARGS, assert_board_matches, built_once
from servers import ObjectStore, clear_fsspec_s3_cache, http_server, object_store  # noqa: F401 - fixtures

from loading.loader import DaliLoader
from storage.folder import read_manifest
from core.spec import FeatureSpec
from preprocess.make_shards import make_shards
from core.faults import fault_env

TRAIN = os.path.join(ROOT, "train.py")
BUCKET = "tunes"


@pytest.fixture(scope="module")
def small_shards(train_shards, tmp_path_factory):
    """The session's tracks in shards of 4 (10 train shards): windows, shares and evictions have shards to span."""
    with built_once(tmp_path_factory, "small-shards") as (base, done):
        out = str(base / "shards")
        if not done:
            make_shards(train_shards[1], out, val=0.2, test=0.2, seed=0, workers=1, max_per_shard=4, progress=False)
            (base / "done.json").write_text("{}")
    return out


def upload(store: ObjectStore, folder: str, prefix: str) -> str:
    fs = store.fs()
    if not fs.exists(BUCKET):
        store.make_bucket(BUCKET)
    for name in sorted(os.listdir(folder)):
        fs.put_file(os.path.join(folder, name), f"{BUCKET}/{prefix}/{name}")
    return f"s3://{BUCKET}/{prefix}"


@pytest.fixture(scope="module")
def s3_shards(object_store, small_shards):
    return upload(object_store, small_shards, "small")


def common(shards: str, run_dir: str, *extra: str) -> list[str]:
    return ["--shards", shards, "--run-dir", run_dir, "--epochs", "3", "--batch-size", "2", "--crops-per-track", "1",
            "--clip-seconds", "2", "--ckpt-every", "3", "--seed", "3", "--model", "tiny", "--shuffle-window", "4",
            "--eval-batch-size", "4", *TWO_RANK_ARGS, *extra]


def torchrun(*args: str, max_restarts: int = 0, nodes: tuple[int, int] | None = None, port: int = 0) -> list[str]:
    launch = (["--standalone", "--nproc-per-node", "2"] if nodes is None else
              ["--nnodes", str(nodes[1]), "--node-rank", str(nodes[0]), "--nproc-per-node", "1",
               "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "two-nodes"])
    return [sys.executable, "-m", "torch.distributed.run", *launch, "--max-restarts", str(max_restarts),
            "--monitor-interval", "0.2", TRAIN, *args]


def history(run_dir: str) -> list[dict]:
    return json.load(open(os.path.join(run_dir, "metrics.json")))["history"]


KEYS = ("train_loss", "train_acc", "val_loss", "val_track_acc")


def assert_same_metrics(a: list[dict], b: list[dict]) -> None:
    assert [h["epoch"] for h in a] == [h["epoch"] for h in b]
    for x, y in zip(a, b):
        assert [round(x[k], 6) for k in KEYS] == [round(y[k], 6) for k in KEYS], (x, y)


@pytest.fixture(scope="module")
def local_reference(small_shards, tmp_path_factory):
    """The 2-rank run on the local shards every remote run must equal (built once per session)."""
    with built_once(tmp_path_factory, "remote-reference") as (base, done):
        run_dir = str(base / "run")
        if not done:
            p = subprocess.run(torchrun(*common(small_shards, run_dir)), capture_output=True, text=True, cwd=ROOT,
                               timeout=600)
            assert p.returncode == 0, p.stderr[-3000:]
            (base / "done.json").write_text("{}")
    return run_dir


def files_of(folder: str, split: str) -> int:
    return sum(os.path.getsize(os.path.join(folder, n)) for n in os.listdir(folder) if n.startswith(split + "-"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_nodes_stream_from_s3_like_one_node_reads_local_shards(object_store, s3_shards, small_shards,
                                                                    local_reference, tmp_path):
    """The documented multi-node recipe: two torchrun invocations, one cache per node."""
    # torchrun sets OMP_NUM_THREADS=1 for 2 ranks on a node, not for 1: the same threads make the same sums
    port, env = free_port(), object_store.client_env(OMP_NUM_THREADS="1")
    run_dir = str(tmp_path / "run")
    procs = [subprocess.Popen(torchrun(*common(s3_shards, run_dir, "--cache-dir", str(tmp_path / f"cache{n}")),
                                       nodes=(n, 2), port=port),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env)
             for n in (0, 1)]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    hist = history(run_dir)
    assert_same_metrics(history(local_reference), hist)

    m = read_manifest(small_shards)
    names = m.splits["train"].shards
    counts = [sum(s.shard == n for s in m.samples) for n in names]
    for node in (0, 1):  # each node fetched the training shards its rank reads, and no others
        cached = next(os.scandir(tmp_path / f"cache{node}")).path
        # cache entries are content-keyed: train-000003.<sha256>.tar
        have = {n.split(".")[0] + ".tar" for n in os.listdir(cached) if n.startswith("train-") and n.endswith(".tar")}
        n = sum(counts)
        lo, hi = n * node // 2, n * (node + 1) // 2
        starts = [sum(counts[:j]) for j in range(len(names))]
        want = {name for name, s, c in zip(names, starts, counts) if s < hi and s + c > lo}
        assert have == want, (node, sorted(have), sorted(want))
    # epoch 1 fetched each training and validation file a rank reads once; later epochs hit the cache
    first = hist[0]["storage"]
    whole = files_of(small_shards, "train") + files_of(small_shards, "val")
    straddling = 2 * max(os.path.getsize(os.path.join(small_shards, n)) for n in names) + 4096
    assert whole <= first["bytes_fetched"] <= whole + straddling  # a shard split between the nodes: once per node
    for h in hist[1:]:
        assert h["storage"]["bytes_fetched"] == 0
        assert all(r["hit_rate"] in (None, 1.0) for r in h["storage"]["ranks"])
    assert_board_matches(run_dir, hist)  # storage traffic per rank included


def assert_no_secret(secret: bytes, root, *procs: subprocess.CompletedProcess) -> None:
    """`secret` is in nothing the run printed, and in no file or folder name or content under `root`."""
    for p in procs:
        assert secret.decode() not in p.stdout + p.stderr
    for d, dirs, files in os.walk(root):
        for n in dirs + files:
            assert secret.decode() not in n, os.path.join(d, n)
        for n in files:
            assert secret not in open(os.path.join(d, n), "rb").read(), os.path.join(d, n)


def test_killed_rank_resumes_mid_epoch_from_s3_through_a_small_cache(object_store, s3_shards, small_shards,
                                                                     local_reference, tmp_path):
    """A rank SIGKILLs itself after step 5 of epoch 2 (the last checkpoint is step 3's); torchrun restarts
    the job, which resumes mid-epoch from the object store through a node cache of 4 MB, smaller than
    an epoch (10 MB of training shards): the same batches in the same order from the same weights,
    optimizer, schedule and RNG, so its figures equal the uninterrupted local run's; evicted shards
    come back, the cache stays within its limit, and the S3 secret is in nothing the run wrote."""
    limit_gb = 4e-3  # about 3 training shards of the 10 (+ validation), more than a rank reads at once
    assert files_of(small_shards, "train") > 2 * limit_gb * 1e9
    run_dir = str(tmp_path / "faulty")
    p = subprocess.run(torchrun(*common(s3_shards, run_dir, "--cache-dir", str(tmp_path / "cache"),
                                        "--cache-limit", str(limit_gb)), max_restarts=1),
                       capture_output=True, text=True, cwd=ROOT, timeout=600,
                       env=object_store.client_env(**fault_env("step", "2.5", rank=1)))
    assert p.returncode == 0, p.stderr[-3000:]
    assert "SIGKILL" in p.stderr or "exitcode: -9" in p.stderr, p.stderr[-2000:]  # torchrun saw the kill, restarted
    resumed = [ln for ln in p.stdout.splitlines() if ln.startswith("resumed from")]
    assert resumed == [f"resumed from {os.path.join(run_dir, 'last.pt')} at epoch 2 step 3"], resumed
    hist = history(run_dir)
    assert_same_metrics(history(local_reference), hist)
    # epoch 1 (the first attempt) fetched every training and validation file; every epoch evicted,
    # and the later ones fetched evicted shards again
    assert hist[0]["storage"]["bytes_fetched"] >= files_of(small_shards, "train") + files_of(small_shards, "val")
    assert all(h["storage"]["evictions"] > 0 for h in hist)
    assert all(h["storage"]["bytes_fetched"] > 0 for h in hist[1:])
    assert_board_matches(run_dir, hist)  # the restarted job continued the curves
    cached = next(os.scandir(tmp_path / "cache")).path
    assert sum(e.stat().st_size for e in os.scandir(cached) if e.is_file()) <= limit_gb * 1e9
    assert_no_secret(object_store.SECRET_KEY.encode(), tmp_path, p)


def one_rank(shards: str, run_dir: str, cache: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, TRAIN, "--shards", shards, "--run-dir", run_dir, "--epochs", "1",
                           "--batch-size", "2", "--crops-per-track", "1", "--clip-seconds", "2", "--model", "tiny",
                           "--cache-dir", cache], capture_output=True, text=True, cwd=ROOT, timeout=600, env=env)


def error_lines(stderr: str) -> list[str]:
    return [ln for ln in stderr.splitlines() if ln.startswith("train: error:")]


@pytest.mark.parametrize("damage", ["altered"])  # "deleted": test_missing_shard_on_two_ranks_names_it_once
def test_missing_or_altered_shard_stops_with_one_line(object_store, small_shards, tmp_path, damage):
    url = upload(object_store, small_shards, f"broken-{damage}")
    victim = read_manifest(small_shards).splits["train"].shards[3]
    key = f"{BUCKET}/broken-{damage}/{victim}"
    fs = object_store.fs()
    if damage == "deleted":
        fs.rm_file(key)
    else:
        data = bytearray(open(os.path.join(small_shards, victim), "rb").read())
        data[len(data) // 2] ^= 0xFF
        fs.pipe_file(key, bytes(data))
    p = one_rank(url, str(tmp_path / "run"), str(tmp_path / "cache"), object_store.client_env())
    assert p.returncode == 1, p.stderr[-3000:]
    lines = error_lines(p.stderr)
    assert len(lines) == 1, p.stderr[-3000:]
    assert "Traceback" not in p.stderr, p.stderr[-3000:]
    assert lines[0].startswith(f"train: error: {url}/{victim}: ")  # one rank: no rank prefix
    assert ("not found" if damage == "deleted" else "differs from the manifest") in lines[0]
    cached = next(os.scandir(tmp_path / "cache")).path
    assert not [n for n in os.listdir(cached) if n.startswith(victim[:-4]) and ".tar" in n]  # nothing unverified kept


def test_missing_shard_on_two_ranks_names_it_once(object_store, small_shards, tmp_path):
    """The rank that needs the shard names it; the other, cut off mid-collective, says only that."""
    url = upload(object_store, small_shards, "broken-2ranks")
    victim = read_manifest(small_shards).splits["train"].shards[1]  # in rank 0's share
    object_store.fs().rm_file(f"{BUCKET}/broken-2ranks/{victim}")
    p = subprocess.run([sys.executable, TRAIN, "--shards", url, "--run-dir", str(tmp_path / "run"), "--epochs", "1",
                        "--batch-size", "2", "--crops-per-track", "1", "--clip-seconds", "2", "--model", "tiny",
                        "--cache-dir", str(tmp_path / "cache"), "--nproc", "2", *TWO_RANK_ARGS],
                       capture_output=True, text=True, cwd=ROOT, timeout=600, env=object_store.client_env())
    assert p.returncode != 0
    assert "Traceback" not in p.stderr, p.stderr[-3000:]
    lines = error_lines(p.stderr)
    assert [ln for ln in lines if victim in ln] == [f"train: error: [rank 0] {url}/{victim}: not found"], lines
    # rank 1 says it was cut off, unless the launcher's SIGTERM reached it first
    assert all(ln.startswith("train: error: [rank 1] stopped: another rank left the job")
               for ln in lines if victim not in ln), lines


def test_wrong_credentials_one_line(object_store, s3_shards, tmp_path):
    env = object_store.client_env(AWS_SECRET_ACCESS_KEY="not-the-secret")
    p = one_rank(s3_shards, str(tmp_path / "run"), str(tmp_path / "cache"), env)
    assert p.returncode == 2, p.stderr[-3000:]
    assert p.stderr.strip().splitlines() == error_lines(p.stderr), p.stderr[-3000:]
    assert f"{s3_shards}/manifest.json: access denied" in p.stderr


def batches(loader: DaliLoader) -> list[tuple[list[int], torch.Tensor]]:
    return [(b.uid.tolist(), b.x.clone()) for b in loader]


def test_http_stream_equals_local_shards(small_shards, http_server, tmp_path):
    """Read-only HTTP(S): the same batches, bit for bit, as the local folder."""
    shutil.copytree(small_shards, os.path.join(http_server.folder, "small"), dirs_exist_ok=True)
    spec = FeatureSpec(clip_seconds=2.0)
    kw = dict(train=True, seed=5, window=4, num_threads=1)
    local = batches(DaliLoader(small_shards, "train", spec, 4, **kw))
    remote_loader = DaliLoader(f"{http_server.url}/small", "train", spec, 4, cache_dir=str(tmp_path / "c"), **kw)
    remote = batches(remote_loader)
    assert [u for u, _ in local] == [u for u, _ in remote]
    assert all(torch.equal(a, b) for (_, a), (_, b) in zip(local, remote))
    t = remote_loader.traffic()
    assert t.bytes_fetched == files_of(small_shards, "train") and t.misses == 20


def test_http_run_with_credentials_keeps_them_out_of_everything_it_writes(small_shards, http_server, tmp_path):
    """A one-rank training run from https-style user:password@ and a ?token= URL: the secrets reach
    the server with every request, and no line, file, saved argument or folder name."""
    shutil.copytree(small_shards, os.path.join(http_server.folder, "small"), dirs_exist_ok=True)
    url = http_server.url.replace("://", "://trainer:pw-SECRET1@") + "/small?sig=SECRET2"
    p = one_rank(url, str(tmp_path / "run"), str(tmp_path / "cache"), dict(os.environ))
    assert p.returncode == 0, p.stderr[-3000:]
    assert "plain http" in p.stderr
    args = json.load(open(tmp_path / "run" / "metrics.json"))["args"]
    assert args["shards"] == http_server.url.replace("://", "://***@") + "/small?***"
    assert_no_secret(b"SECRET", tmp_path, p)


def test_server_stopped_and_restarted_mid_epoch(object_store, s3_shards, small_shards, tmp_path):
    """Fetches that fail while the server is down (killed, back 2 s later) are retried, counted, and
    the epoch completes with every sample once."""
    for k, v in object_store.env.items():
        os.environ[k] = v
    clear_fsspec_s3_cache()
    restart = None
    try:
        spec = FeatureSpec(clip_seconds=2.0)
        ld = DaliLoader(s3_shards, "train", spec, 2, train=True, seed=1, window=1, num_threads=1,
                        cache_dir=str(tmp_path / "c"), log=lambda line: None)
        it = iter(ld)
        first = next(it)
        seen = first.uid[first.counted].tolist()
        object_store.stop(kill=True)
        restart = threading.Timer(2.0, object_store.start)
        restart.start()
        t0 = time.time()
        for b in it:
            seen += b.uid[b.counted].tolist()
        assert time.time() - t0 >= 1.5  # it did wait for the server
        assert ld.traffic().retries > 0
        assert sorted(set(seen)) == sorted(s.uid for s in read_manifest(small_shards).samples if s.split == "train")
    finally:
        if restart is not None:
            restart.join()
        object_store.start()  # (a no-op when it is running) the module's later tests need it
        for k in object_store.env:
            os.environ.pop(k, None)
        clear_fsspec_s3_cache()
