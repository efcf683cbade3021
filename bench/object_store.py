"""Benchmark: training from an object store through the node cache, cold and warm, against local shards.

    .venv/bin/python -m bench.object_store [--methods local,s3-warm,s3-cold,...] [--repeats 5]
                     [--epochs-per-window 3] [--window 1024] [--model resnet] [--batch 32]

Every row trains the same model the same way as bench/train_throughput.py (its Training setup, warm-up
and timed window: train.py's train_step, AdamW, label smoothing 0.1, AMP, one process, no DDP) on the
same shards (bench.data: the 200 synthetic 30 s clips, 8 shards of 25 tracks); the rows differ only in
where DaliLoader reads them from (loading/stream.py's fn.external_source in every row):

  local          the local shard folder, loader built once; windows of --epochs-per-window epochs
  local-restart  the local folder, a new loader for every timed epoch (the cold rows' structure
                 without the network: what rebuilding the DALI pipeline costs by itself)
  s3-warm        s3://bench/shards on a SeaweedFS server (`weed mini`, tests.servers) started by this
                 script, the node cache already holding every file (filled untimed first), loader
                 built once; windows as local. The server is paused (SIGSTOP) after the warm-up: a
                 warm cache reads nothing from it, and a remote store costs the node no CPU
  s3-warm-live   s3-warm with the server left running (idle, it uses ~0.1 core of the same cores)
  s3-cold        the same bucket; every timed window is one epoch from an empty cache dir and a new
                 loader: the loader's construction and every shard's fetch (+ sha256) fall inside it
  s3-cold-small  s3-cold with --small-window (default one shard's tracks) instead of --window: the
                 stream's first batch then needs one shard, not every shard of the first window
  http-warm, http-cold, http-cold-small   the same through http.server (tests.servers.HttpServer, a
                 thread of this script) serving the local folder: a server that costs little CPU
  stage          no training: download the whole train split into an empty cache dir (NodeCache,
                 fetch + sha256, 4 threads as the stream's fetch pool, and 1 thread), --stage-repeats
                 times: what a design that stages a rank's whole share before DALI's reader starts
                 (fn.readers.webdataset opens every listed tar when it is built) waits before its first batch

Each row runs in a fresh process (bench.harness): one untimed warm-up epoch (cold rows: from a cold
cache; its first batch, with the loader's construction, is the row's "first batch" figure, as for the
other rows), then --repeats timed windows. Per step: t0, next() (cold rows: the first next() builds
the loader), t1, train step, t2; data wait = sum(t1 - t0) / sum(t2 - t0), samples/s = batch * steps /
sum(t2 - t0), median (min-max) over windows. loader.traffic() after each window gives the bytes
fetched, hits and misses; per epoch and against the split's size (its tars and indices).

The server shares the cores with training here: its CPU (weed's processes, and this process's for the
HTTP server thread) during a row is reported as "server CPU" and not counted as other load. weed runs
only during the rows that read it (idle, `weed mini` still uses about 0.1 core).
Output: a markdown table on stdout, JSON and PNG in bench/results/object-store-<host>-<date>[-<tag>].json/.png.
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import os
import shutil
import statistics
import sys
import time
from typing import Any

from bench import CACHE, RESULTS
from bench.data import SPLIT, prepare
from bench.harness import load_note, logger, opening, require_dali, run_fresh, run_quietest, wait_idle
from bench.host import describe, today
from bench.tables import DASH, Bars, Col, markdown, num, publish, rng, text
from bench.train_throughput import (LABEL_SMOOTHING, check_losses, setup_training, summarise, timed_window,
                                    training_args, warm_up)

METHODS = ["local", "local-restart", "http-warm", "http-cold", "http-cold-small", "s3-warm", "s3-warm-live", "s3-cold",
           "s3-cold-small", "stage"]
DEFAULT_METHODS = ["local", "local-restart", "http-cold", "http-cold-small", "s3-warm", "s3-warm-live", "s3-cold",
                   "s3-cold-small", "stage"]
BUCKET, PREFIX = "bench", "shards"
STAGE_THREADS = (4, 1)   # 4: the stream's fetch pool (loading.stream.SampleStream fetch_threads)
log = logger("object-store-bench")


def source(method: str) -> str:
    return "stage" if method == "stage" else method.split("-")[0]


def is_cold(method: str) -> bool:
    return method == "local-restart" or "-cold" in method


# ============================================================== the child process

def split_files(manifest: Any) -> list[str]:
    from core.shards import index_name
    return [f for n in manifest.splits[SPLIT].shards for f in (index_name(n), n)]


def run_stage(job: dict) -> dict:
    """Download the whole split into an empty node cache, per thread count, `stage_repeats` times."""
    from concurrent.futures import ThreadPoolExecutor

    from storage.cache import NodeCache
    from storage.folder import read_manifest
    from storage.store import Store
    manifest = read_manifest(job["url"])
    names = split_files(manifest)
    res: dict[str, Any] = {"files": len(names), "stage": {}}
    for threads in job["stage_threads"]:
        times, fetched = [], []
        for r in range(job["stage_repeats"]):
            d = os.path.join(job["cache_root"], f"stage-t{threads}-{r}")
            shutil.rmtree(d, ignore_errors=True)
            files = NodeCache(Store(job["url"], log=log), d, manifest.files, None, log)
            t = time.perf_counter()
            with ThreadPoolExecutor(threads) as ex:
                list(ex.map(files.path, names))
            times.append(time.perf_counter() - t)
            st = files.reset_stats()
            fetched.append(st.bytes_fetched)
            if st.misses != len(names):
                raise RuntimeError(f"staging fetched {st.misses} of {len(names)} files")
            shutil.rmtree(d, ignore_errors=True)
        res["stage"][str(threads)] = {"times_s": times, "bytes": fetched,
                                      "s": {"median": statistics.median(times), "min": min(times), "max": max(times)},
                                      "mb_per_s": fetched[0] / 1e6 / statistics.median(times)}
    return res


def run_method(job: dict, sampler: Any) -> dict:
    if job["method"] == "stage":
        return run_stage(job)
    import torch

    tr = setup_training(job, require_dali)
    import nvidia.dali.plugin.pytorch  # noqa: F401 - imported before any timing, as in every row

    import features.dali_graph  # noqa: F401
    from loading.loader import DaliLoader
    from storage.folder import open_files, read_manifest
    res: dict[str, Any] = dict(tr.info)
    crops, batch = job["crops"], job["batch"]
    cold, url = is_cold(job["method"]), job["url"]
    held: dict[str, Any] = {}

    def build(cache_dir: str | None) -> Any:
        loader = DaliLoader(url, SPLIT, tr.spec, batch // crops, train=True, device=tr.dev, seed=0,
                            num_threads=job["num_threads"], prefetch=job["prefetch"], crops=crops,
                            window=job["window"], cache_dir=cache_dir, log=log)
        if len(loader) != job["epoch_steps"]:
            raise RuntimeError(f"{len(loader)} batches per epoch, the parent expected {job['epoch_steps']}")
        held["loader"] = loader
        return loader

    def batches(cache_dir: str | None, epochs: int | None):
        """Built at the first next(): its construction falls into that step's data wait."""
        loader = build(cache_dir)
        e = 0
        while epochs is None or e < epochs:
            for b in loader:
                yield b.x, b.y, b.weight
            e += 1

    def drop(it) -> dict:
        """The loader's traffic since the last call; the loader itself closed and released (cold rows)."""
        st = held["loader"].traffic().as_dict()
        if it is not None:
            it.close()
            held.pop("loader").stream.close()
            gc.collect()
        return st

    def cache(name: str) -> str | None:
        if source(job["method"]) == "local":
            return None
        d = os.path.join(job["cache_root"], f"{job['method']}-{name}")
        shutil.rmtree(d, ignore_errors=True)  # empty: cold
        return d

    n = job["epoch_steps"]
    windows, losses, traffic = [], [], []
    if cold:
        it = batches(cache("warmup"), 1)
        res.update(warm_up(it, n, tr))     # a cold first epoch of the first loader in the process
        res["warmup_traffic"] = drop(it)
        for r in range(job["repeats"]):
            d = cache(f"w{r}")
            it = batches(d, 1)
            w, loss = timed_window(it, n, tr)
            traffic.append(drop(it))
            windows.append(w)
            losses.append(loss)
            if d:
                shutil.rmtree(d, ignore_errors=True)
        res["windows_first_batch_s"] = [w["wait_s"][0] for w in windows]
    else:
        d = cache("warm")
        if d is not None:  # the node cache filled with every file of the split first (untimed)
            t = time.perf_counter()
            files = open_files(url, read_manifest(url), d, None, log)
            for name in split_files(read_manifest(url)):
                files.path(name)
            res["prefill_s"] = time.perf_counter() - t
            res["prefill_traffic"] = files.reset_stats().as_dict()
        it = batches(d, None)
        res.update(warm_up(it, n, tr))
        res["warmup_traffic"] = drop(None)
        if job.get("pause_flag"):
            res["server_paused_after_s"] = pause_server(job["pause_flag"])
        for _ in range(job["repeats"]):
            w, loss = timed_window(it, n * job["epochs_per_window"], tr)
            traffic.append(drop(None))
            windows.append(w)
            losses.append(loss)
    res.update(windows=windows, last_losses=losses, traffic=traffic,
               epochs_per_window=1 if cold else job["epochs_per_window"])
    if tr.dev.type == "cuda":
        res["peak_gpu_torch_mb"] = torch.cuda.max_memory_allocated(tr.dev) / 2**20
    sampler.sample()
    check_losses(losses)
    return res


def pause_server(flag: str, timeout: float = 30.0) -> float:
    """The child's half of the pause: say the warm-up is done (FLAG.ready), wait for FLAG.paused."""
    t = time.perf_counter()
    with open(flag + ".ready", "w") as f:
        f.write("ready\n")
    while not os.path.exists(flag + ".paused"):
        if time.perf_counter() - t > timeout:
            raise RuntimeError(f"the parent did not pause the server within {timeout:.0f} s")
        time.sleep(0.02)
    return time.perf_counter() - t


class ServerPause:
    """The parent's half: when the child's warm-up is done, SIGSTOP the server's process group (a warm
    cache reads no byte from it; a remote store would cost the node no CPU), SIGCONT it afterwards."""

    def __init__(self, flag: str, pgid: int):
        import threading
        self.flag, self.pgid, self.paused = flag, pgid, False
        for ext in (".ready", ".paused"):
            if os.path.exists(flag + ext):
                os.remove(flag + ext)
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self) -> None:
        import signal
        while not self.done.wait(0.02):
            if os.path.exists(self.flag + ".ready"):
                os.killpg(self.pgid, signal.SIGSTOP)
                self.paused = True
                with open(self.flag + ".paused", "w") as f:
                    f.write("paused\n")
                return

    def __enter__(self) -> "ServerPause":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        import signal
        self.done.set()
        self.thread.join()
        if self.paused:
            os.killpg(self.pgid, signal.SIGCONT)


# ============================================================== server CPU (the parent's side)

def session_cpu_s(sid: int | None) -> float:
    """CPU-seconds of every process in session `sid` (weed runs in a session of its own)."""
    if sid is None:
        return 0.0
    total = 0
    for p in os.listdir("/proc"):
        if not p.isdigit():
            continue
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == sid:  # fields after the name: state ppid pgrp session ... utime(11) stime(12)
            total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def summarise_traffic(r: dict, split_bytes: int) -> None:
    if "traffic" not in r:
        return
    per_epoch = [t["bytes_fetched"] / r["epochs_per_window"] for t in r["traffic"]]
    r["fetched_mb_per_epoch"] = {"median": statistics.median(per_epoch) / 1e6, "min": min(per_epoch) / 1e6,
                                 "max": max(per_epoch) / 1e6}
    r["fetched_vs_split"] = statistics.median(per_epoch) / split_bytes
    every = [r["warmup_traffic"], *r["traffic"]]  # warm rows: lookups happen when a shard is first mapped
    hits, misses = sum(t["hits"] for t in every), sum(t["misses"] for t in every)
    r["hit_rate"] = hits / (hits + misses) if hits + misses else None
    r["retries"] = sum(t["retries"] for t in r["traffic"])
    if "windows_first_batch_s" in r:
        v = r["windows_first_batch_s"]
        r["window_first_batch_s"] = {"median": statistics.median(v), "min": min(v), "max": max(v)}


def _fetched(r: dict) -> str:
    if "fetched_mb_per_epoch" not in r:
        return DASH
    if source(r["method"]) == "local":
        return "– (local files)"
    return f"{r['fetched_mb_per_epoch']['median']:.0f} ({r['fetched_vs_split']:.2f}×)"


COLUMNS = [
    Col("method", text("label")),
    Col("samples/s median (min–max)", rng("samples_per_s", ".1f")),
    Col("vs local", lambda r: f"{100 * r['vs_local'] - 100:+.1f} %" if r.get("vs_local") is not None else DASH),
    Col("data wait % of step time", rng("data_wait", ".1f", 100)),
    Col("step ms median", num("step_ms", ".0f")),
    Col("longest wait ms", lambda r: f"{r['max_wait_ms']['max']:.0f}"),
    Col("first batch s (build + 1st batch)", num("first_batch_s", ".2f")),
    Col("MB fetched per epoch (× split)", _fetched),
    Col("cache hit rate (warm-up + windows)", lambda r: DASH if r.get("hit_rate") is None else f"{r['hit_rate']:.2f}"),
    Col("windows × epochs (steps)", lambda r: f"{len(r['windows'])} × {r['epochs_per_window']} "
                                              f"({r['windows'][0]['steps']})"),
    Col("peak RSS / PSS MB", lambda r: f"{r['peak_rss_mb']:.0f} / {r['peak_pss_mb']:.0f}" if r.get("peak_pss_mb")
        else f"{r['peak_rss_mb']:.0f}"),
    Col("server CPU, cores", num("server_cpu_cores", ".2f")),
    Col("other load, cores", num("other_load_cores", ".2f")),
]
CHART = [
    Bars(("samples_per_s",), "training samples/s (median, bars: min–max over windows)"),
    Bars(("data_wait",), "data wait, % of step time", scale=100.0, colors=("tab:red",)),
    Bars(("first_batch_s",), "first batch, s (loader build + first batch)", fmt=".2f", colors=("tab:green",)),
]
START_COLUMNS = [
    Col("how the first batch is reached", text("what")),
    Col("first loader of the process, s", num("first", ".2f")),
    Col("repeated (new loader or download each time), s median (min–max)", lambda r: rng("later", ".2f")(r) if r.get("later") else DASH),
    Col("row", text("source")),
]


# ============================================================== driver (parent process)

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    cores = os.cpu_count() or 1
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    training_args(p, "batch size in rows (default 32, train.py's)")
    p.add_argument("--crops", type=int, default=1, help="crops per decoded track (default 1; --batch counts crops)")
    p.add_argument("--repeats", type=int, default=5, help="timed windows per row (default 5)")
    p.add_argument("--epochs-per-window", type=int, default=3,
                   help="epochs per timed window of the loader-built-once rows (default 3; cold rows: 1)")
    p.add_argument("--window", type=int, default=1024, help="shuffle window in samples (default train.py's 1024)")
    p.add_argument("--small-window", type=int, default=0,
                   help="s3-cold-small's shuffle window (default 0: the tracks of one shard)")
    p.add_argument("--stage-repeats", type=int, default=3, help="downloads of the whole split per thread count")
    p.add_argument("--methods", default=",".join(DEFAULT_METHODS),
                   help="comma-separated subset of: " + ", ".join(METHODS) + f" (default {','.join(DEFAULT_METHODS)})")
    p.add_argument("--num-threads", type=int, default=cores, help=f"DaliLoader num_threads (default cores: {cores})")
    p.add_argument("--prefetch", type=int, default=2, help="DaliLoader prefetch queue depth (default 2)")
    p.add_argument("--torch-threads", type=int, default=cores, help=f"torch intra-op threads (default {cores})")
    p.add_argument("--wait-idle", type=float, default=60.0,
                   help="before each row, wait up to this many seconds for other processes to go quiet")
    p.add_argument("--retries", type=int, default=1, help="reruns of a row whose run others disturbed")
    p.add_argument("--method-timeout", type=float, default=900.0, help="seconds per row's process at most")
    p.add_argument("--tag", help="suffix for the output names (object-store-<host>-<date>-<tag>.json)")
    p.add_argument("--cache", default=CACHE, help="generated data and shards; the server's data and the node "
                   "caches go to a folder in it, removed at the end")
    p.add_argument("--out", default=RESULTS, help="where the JSON and PNG go")
    p.add_argument("--_child", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    for k in ("clips", "batch", "crops", "repeats", "epochs_per_window", "window", "stage_repeats", "num_threads",
              "prefetch", "torch_threads"):
        if getattr(a, k) < 1:
            p.error(f"--{k.replace('_', '-')} must be >= 1")
    if a.batch % a.crops:
        p.error(f"--crops {a.crops} must divide --batch {a.batch}")
    a.methods = [m.strip() for m in a.methods.split(",") if m.strip()]
    unknown = [m for m in a.methods if m not in METHODS]
    if unknown:
        p.error(f"unknown methods {unknown}; choose from {METHODS}")
    return a


def code_state() -> dict:
    """The commit, and the files of the product packages and bench/ that differ from it, for the JSON."""
    import subprocess

    from bench import ROOT

    def git(*args: str) -> str:
        p = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=False)
        return p.stdout if p.returncode == 0 else ""
    return {"commit": git("rev-parse", "HEAD").strip(),
            "modified": git("status", "--porcelain", "--", "core", "storage", "features", "loading", "bench").splitlines()}


def upload(store: Any, folder: str) -> tuple[str, float, int]:
    """Every file of the shard folder to s3://BUCKET/PREFIX, the manifest last; (url, seconds, bytes)."""
    fs = store.fs()
    t = time.perf_counter()
    if not fs.exists(BUCKET):
        store.make_bucket(BUCKET)
    names = sorted(os.listdir(folder), key=lambda n: n == "manifest.json")
    for name in names:
        fs.put_file(os.path.join(folder, name), f"{BUCKET}/{PREFIX}/{name}")
    return f"s3://{BUCKET}/{PREFIX}", time.perf_counter() - t, sum(os.path.getsize(os.path.join(folder, n))
                                                                    for n in names)


def main(argv: list[str] | None = None) -> int:
    run = opening(argv, parse_args, run_method)
    a, t_start = run.args, run.t_start
    from tests.servers import HttpServer, ObjectStore
    from core.spec import FeatureSpec
    from storage.folder import read_manifest
    from training.report import write_json

    host, device = run.host, run.device
    spec = FeatureSpec()
    ds = prepare(a.src, a.clips, a.cache, spec, log=log)
    if not ds.shard_dir:
        log(f"no shards ({ds.shard_error}): nothing to measure")
        return 2
    manifest = read_manifest(ds.shard_dir)
    files = split_files(manifest)
    split_bytes = sum(os.path.getsize(os.path.join(ds.shard_dir, f)) for f in files)
    shards = manifest.splits[SPLIT].shards
    tracks = manifest.splits[SPLIT].count
    per_shard = -(-tracks // len(shards))
    small_window = a.small_window or per_shard
    epoch_steps = -(-tracks // (a.batch // a.crops))
    log(f"device {device}, batch {a.batch}, {len(shards)} shards, {split_bytes / 1e6:.0f} MB, {epoch_steps} steps an "
        f"epoch; windows: {a.repeats} x {a.epochs_per_window} epochs (cold rows: {a.repeats} x 1, new loader each)")

    date = today()
    code = code_state()
    os.makedirs(a.out, exist_ok=True)
    stem = os.path.join(a.out, f"object-store-{host['kind']}-{date}" + (f"-{a.tag}" if a.tag else ""))
    work = os.path.join(os.path.abspath(a.cache), f"object-store-{os.getpid()}")
    store = http = None
    setup: dict[str, Any] = {}
    urls = {"local": ds.shard_dir}
    results: list[dict] = []
    try:
        if any(source(m) in ("s3", "stage") for m in a.methods):
            store = ObjectStore(os.path.join(work, "weed")).start()
            setup["server_start_s"] = store.start_seconds
            for k in [k for k in os.environ if k.startswith("AWS_")]:
                del os.environ[k]
            os.environ.update(store.env)  # the children inherit the endpoint and the credentials
            urls["s3"], setup["upload_s"], setup["upload_bytes"] = upload(store, ds.shard_dir)
            urls["stage"] = urls["s3"]
            log(f"SeaweedFS up in {store.start_seconds:.1f} s; uploaded {setup['upload_bytes'] / 1e6:.0f} MB "
                f"to {urls['s3']} in {setup['upload_s']:.1f} s")
            store.stop()  # running only during the rows that read it: idle, it still uses ~0.1 core
        if any(source(m) == "http" for m in a.methods):
            http = HttpServer(ds.shard_dir).start()
            urls["http"] = http.url
        labels = {
            "local": "local shards",
            "local-restart": "local shards, new loader every epoch",
            "s3-warm": "s3, warm cache (server paused in the timed windows)",
            "s3-warm-live": "s3, warm cache, server running (idle)",
            "s3-cold": f"s3, cold cache, new loader every epoch (window {a.window})",
            "s3-cold-small": f"s3, cold cache, new loader every epoch (window {small_window})",
            "http-warm": "http, warm cache",
            "http-cold": f"http, cold cache, new loader every epoch (window {a.window})",
            "http-cold-small": f"http, cold cache, new loader every epoch (window {small_window})",
            "stage": "stage: download the whole split",
        }

        def report(complete: bool) -> dict:
            base = next((r for r in results if r["method"] == "local" and "samples_per_s" in r), None)
            for r in results:
                if base and "samples_per_s" in r:
                    r["vs_local"] = r["samples_per_s"]["median"] / base["samples_per_s"]["median"]
            more = load_note(results, "label") + [
                f"Every row: DaliLoader(train=True, num_threads={a.num_threads}, prefetch={a.prefetch}, "
                f"crops={a.crops}, window={a.window}) through loading/stream.py (fn.external_source); model "
                f"{a.model}, batch {a.batch}; one untimed warm-up epoch, then {a.repeats} timed windows.",
                f"Loader built once (local, *-warm): windows of {a.epochs_per_window} epoch(s) ({epoch_steps * a.epochs_per_window} "
                f"steps). Cold rows and local-restart: each window is one epoch ({epoch_steps} steps) with a new "
                "loader built at its first next() (counted as that step's data wait) and, for s3/http, an empty "
                "cache dir: every shard is fetched (and its sha256 checked) inside the window.",
                "first batch: the first loader of the process, from its construction to its first batch (cold rows: "
                "from an empty cache).",
                f"MB fetched per epoch: loader.traffic() after each window / its epochs (median); × split: against "
                f"the train split's {len(files)} files, {split_bytes / 1e6:.1f} MB.",
                "server CPU: the CPU of weed's processes and of this script (the HTTP server's thread) during the "
                "row; it shares the 2 cores with training and is left out of the other load.",
            ]
            r = {"benchmark": "object_store", "date": date, "host": host, "code": code, "complete": complete,
                 "methods_wanted": a.methods,
                 "data": {"src": ds.src, "synthetic": ds.synthetic, "tracks": len(ds.items), "shards": len(shards),
                          "split_files": len(files), "split_bytes": split_bytes, "total_seconds": ds.total_seconds,
                          "shard_dir": ds.shard_dir, "classes": ds.classes},
                 "settings": {"device": device, "model": a.model, "batch": a.batch, "crops": a.crops, "amp": a.amp,
                              "repeats": a.repeats, "epochs_per_window": a.epochs_per_window,
                              "epoch_steps": epoch_steps, "window": a.window, "small_window": small_window,
                              "num_threads": a.num_threads, "prefetch": a.prefetch,
                              "torch_threads": a.torch_threads, "label_smoothing": LABEL_SMOOTHING,
                              "stage_threads": list(STAGE_THREADS), "stage_repeats": a.stage_repeats,
                              "spec": spec.to_dict()},
                 "setup": setup, "methods": results, "notes": ds.notes + more,
                 "total_wall_s": time.perf_counter() - t_start}
            write_json(stem + ".json", r)
            return r

        def run_once(name: str, job: dict) -> dict:
            sid = None
            if source(name) in ("s3", "stage"):  # started before the idle wait: its start-up work settles first
                sid = store.start().proc.pid
            elif store:
                store.stop()  # the next rows that read it start it again (ports and objects kept)
            waited, before = wait_idle(a.wait_idle)
            s0 = session_cpu_s(sid) + time.process_time()
            pause = ServerPause(job["pause_flag"], sid) if job.get("pause_flag") else contextlib.nullcontext()
            with pause:
                r = run_fresh("bench.object_store", name, job, cache=a.cache, prefix="object-store-",
                              timeout=a.method_timeout, log=log)
            server = session_cpu_s(sid) + time.process_time() - s0
            if job.get("pause_flag") and not pause.paused and "windows" in r:
                r["error"] = "the server was not paused"
            r.update(waited_for_idle_s=waited, load_before_cores=before)
            if "process_wall_s" in r:
                r["server_cpu_cores"] = server / r["process_wall_s"]
                r["other_load_with_server_cores"] = r["other_load_cores"]
                r["other_load_cores"] = max(0.0, r["other_load_cores"] - r["server_cpu_cores"])
            return r

        for name in a.methods:
            job = {"method": name, "url": urls[source(name)], "device": device, "batch": a.batch, "crops": a.crops,
                   "amp": a.amp, "model": a.model, "n_classes": len(ds.classes), "spec": spec.to_dict(),
                   "repeats": a.repeats, "epochs_per_window": a.epochs_per_window, "epoch_steps": epoch_steps,
                   "window": small_window if name.endswith("-cold-small") else a.window,
                   "num_threads": a.num_threads, "prefetch": a.prefetch, "torch_threads": a.torch_threads,
                   "cache_root": os.path.join(work, "node-cache"), "stage_threads": list(STAGE_THREADS),
                   "stage_repeats": a.stage_repeats,
                   "pause_flag": os.path.join(work, f"{name}.pause") if name == "s3-warm" else None}
            best = run_quietest(lambda: run_once(name, job), a.retries, "stage" if name == "stage" else "windows",
                                name, log=log)
            best.update(method=name, label=labels[name])
            summarise(best, a.batch)
            summarise_traffic(best, split_bytes)
            results.append(best)
            report(complete=False)
    finally:
        if http:
            http.stop()
        if store:
            store.close()
        shutil.rmtree(work, ignore_errors=True)

    rep = report(complete=True)
    timed = [r for r in results if r["method"] != "stage"]
    precision = next((r["precision"] for r in timed if "precision" in r), "amp" if a.amp else "fp32")
    publish(f"Training from object storage: {a.model}, batch {a.batch}, {precision}, {device}; {len(ds.items)} "
            f"tracks in {len(shards)} shards ({split_bytes / 1e6:.0f} MB), {spec.clip_seconds:g} s crops; host "
            f"{describe(host)}, {date}", timed, COLUMNS, "samples_per_s", stem=stem, notes=rep["notes"], chart=CHART,
            name="label", t_start=t_start,
            title=f"object store vs local shards: {a.model}, batch {a.batch}, {device} — {describe(host)}, {date}")
    start_rows = first_batch_rows(results)
    if start_rows:
        print("\n### Time to the first batch: streaming vs staging the whole split\n")
        print(markdown(start_rows, START_COLUMNS, "s"))
    return 0 if all("error" not in r for r in results) else 1


def first_batch_rows(results: list[dict]) -> list[dict]:
    """Cold start: the stream's first batch (loader construction + first batch) per source, for the first
    loader of a process and for the later ones (the cold rows' windows: a new loader, an empty cache), and
    what a staging design waits: the whole split downloaded, then the local loader's first batch."""
    rows = []
    by = {r["method"]: r for r in results}
    for m, later in (("local", "local-restart"), ("http-cold", "http-cold"), ("http-cold-small", "http-cold-small"),
                     ("s3-cold", "s3-cold"), ("s3-cold-small", "s3-cold-small")):
        r = by.get(m)
        if r and r.get("first_batch_s") is not None:
            rows.append({"what": f"stream: {r['label']}", "first": r["first_batch_s"],
                         "later": by.get(later, {}).get("window_first_batch_s"),
                         "source": m if m == later or later not in by else f"{m}, {later}", "s": True})
    st = by.get("stage", {}).get("stage")
    if st:
        for threads, v in st.items():
            rows.append({"what": f"staging: download the whole split ({threads} thread{'s' if threads != '1' else ''}, "
                                 f"{v['mb_per_s']:.0f} MB/s, sha256 checked)", "later": v["s"], "source": "stage",
                         "s": True})
        loc = by.get("local", {}).get("first_batch_s")
        if loc is not None and str(STAGE_THREADS[0]) in st:
            rows.append({"what": f"staging, total: download ({STAGE_THREADS[0]} threads, median) + the local "
                                 "loader's first batch", "first": st[str(STAGE_THREADS[0])]["s"]["median"] + loc,
                         "source": "stage + local", "s": True})
    return rows

if __name__ == "__main__":
    sys.exit(main())
