"""Collection-scale prediction: the single-file path vs the collection path, same files, same run.

    .venv/bin/python -m bench.collection                  # 60 generated clips of 30 s, 3 rounds
    .venv/bin/python -m bench.collection --clips 200 --rounds 2 --checkpoint runs/X/best.pt

Every method is the command a user types, in a fresh process, timed from start to exit (start-up,
checkpoint, decoding, features, model and output included), in rounds: each round runs every
method once, in turn, so a neighbour's load lands on all of them alike. Before each run the script
waits (--wait-idle) for other processes to go quiet, and records the cores they used during it. Figures are clips of 30 s
per second (seconds of audio / 30 / wall seconds); the median round counts, min-max is given.
Each round also runs every method on one clip of the set: (N - 1) clips / (wall(N) - wall(1)) is
the marginal rate, start-up excluded: what a 100,000-song library sees.

Methods:
  single            predict.py FOLDER --json                    (torchaudio features, one file at a time)
  collection        predict.py --shards S --out X.jsonl         (DALI evaluation graph; shards made once)
  collection-eager  the same with --eager (no TorchScript): how much of the gain is the frozen model
  collection-2rank  the same with --nproc 2 (--cpu without 2 GPUs)
  folder            predict.py FOLDER --out X.jsonl             (sharding into a temporary folder included)

The checkpoint is an untrained model of --model (default: baseline, the default model; throughput
does not depend on the weights) unless --checkpoint is given. Results: bench/results/
collection-<host kind>-<date>.json, with the machine, versions and each run's wall and CPU seconds.
The probabilities of the collection path are compared with the single-file path's (--json prints
4 decimals, so differences up to 5e-5 are rounding).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from typing import Any

from bench.host import host_info  # run as: python -m bench.collection

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
PREDICT = os.path.join(ROOT, "predict.py")
MAKE_SHARDS = os.path.join(ROOT, "preprocess", "make_shards.py")
CLIP_S = 30.0


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def one_clip(src: str, shards_of) -> tuple[str, str, float]:
    """A folder holding the set's first clip, and its shards: the start-up cost of each method."""
    files = sorted(os.path.join(r, f) for r, _, fs in os.walk(src) for f in fs)
    one = src + "-one"
    if not os.path.isdir(one):
        os.makedirs(one + ".tmp")
        shutil.copy(files[0], one + ".tmp")
        os.replace(one + ".tmp", one)
    shards = shards_of(one)
    with open(os.path.join(shards, "manifest.json")) as f:
        return one, shards, json.load(f)["total_seconds"]


def shard(src: str) -> str:
    shards = src + "-shards"
    if not os.path.exists(os.path.join(shards, "manifest.json")):
        log(f"sharding {src} (make_shards --unlabeled; timed separately)")
        t = time.perf_counter()
        subprocess.run([sys.executable, MAKE_SHARDS, "--unlabeled", src, shards], check=True, capture_output=True,
                       timeout=3600)
        log(f"sharded in {time.perf_counter() - t:.1f} s")
    return shards


def prepare_data(cache: str, clips: int, seconds: float) -> tuple[str, str, float]:
    """Generated clips (10 genres) and their unlabeled shards, cached under bench/.cache/."""
    from preprocess.synth import GENRES, generate
    src = os.path.join(cache, f"collection-{clips}x{seconds:g}s")
    shards = src + "-shards"
    per_class = -(-clips // len(GENRES))
    if not os.path.isdir(src):
        log(f"generating {clips} clips of {seconds:g} s into {src}")
        generate(src + ".tmp", per_class=per_class, seconds=seconds, seed=13, progress=False)
        files = sorted(os.path.join(r, f) for r, _, fs in os.walk(src + ".tmp") for f in fs)
        for f in files[clips:]:
            os.remove(f)
        os.replace(src + ".tmp", src)
    shard(src)
    with open(os.path.join(shards, "manifest.json")) as f:
        total = json.load(f)["total_seconds"]
    return src, shards, total


def make_checkpoint(path: str, model: str) -> None:
    import torch

    from model import build_model
    from core.spec import FeatureSpec
    from preprocess.synth import GENRES
    from core import checkpoint
    torch.manual_seed(0)
    checkpoint.save(path, {"model_name": model, "model": build_model(model, len(GENRES)).state_dict(),
                           "classes": sorted(GENRES), "feature_spec": FeatureSpec().to_dict()})


def busy_s() -> float:
    """CPU seconds all processes of the machine have used (/proc/stat, every core)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return (sum(v) - v[3] - v[4]) / os.sysconf("SC_CLK_TCK")  # all but idle and iowait


def wait_idle(max_wait: float, threshold: float = 0.25) -> float:
    """Wait (up to max_wait s) until other processes use less than `threshold` cores; returns their load."""
    t0 = time.perf_counter()
    while True:
        b0, t = busy_s(), time.perf_counter()
        time.sleep(2.0)
        load = (busy_s() - b0) / (time.perf_counter() - t)
        if load < threshold or time.perf_counter() - t0 >= max_wait:
            return load


def timed(cmd: list[str], timeout: float) -> dict:
    """Run one command: wall and CPU seconds (its processes), and the cores others used meanwhile."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    b0 = busy_s()
    t = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=timeout)
    wall = time.perf_counter() - t
    busy = busy_s() - b0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({p.returncode}): {p.stderr[-1500:]}")
    return {"wall_s": round(wall, 3), "cpu_s": round(cpu, 2), "other_load_cores": round(max(0.0, busy - cpu) / wall, 2),
            "stdout": p.stdout}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clips", type=int, default=60)
    p.add_argument("--seconds", type=float, default=30.0)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--model", default="baseline", help="untrained model to time (without --checkpoint)")
    p.add_argument("--checkpoint", default=None)
    p.add_argument("--methods", default="single,collection,collection-eager,collection-2rank,folder")
    p.add_argument("--cache", default=os.path.join(HERE, ".cache"))
    p.add_argument("--tag", default="", help="suffix of the result file name")
    p.add_argument("--timeout", type=float, default=3600)
    p.add_argument("--wait-idle", type=float, default=120,
                   help="before each run, wait up to N s for other processes to use < 0.25 cores (0: never)")
    p.add_argument("--retries", type=int, default=2,
                   help="rerun a measurement that other processes disturbed (> 0.2 cores) up to N times")
    a = p.parse_args(argv)

    os.makedirs(a.cache, exist_ok=True)
    src, shards, total_s = prepare_data(a.cache, a.clips, a.seconds)
    one_src, one_shards, one_s = one_clip(src, shard)
    ckpt = a.checkpoint or os.path.join(a.cache, f"untrained-{a.model}.pt")
    if a.checkpoint is None:
        make_checkpoint(ckpt, a.model)
    host = host_info()
    import torch
    two_rank = ["--cpu"] if torch.cuda.is_available() and torch.cuda.device_count() < 2 else []  # one GPU per rank
    work = os.path.join(a.cache, "collection-out")
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)

    def out(name: str) -> str:
        path = os.path.join(work, f"{name}.jsonl")
        shutil.rmtree(path + ".parts", ignore_errors=True)  # a fresh run each time: nothing to resume
        shutil.rmtree(path + ".shards", ignore_errors=True)
        for f in (path, os.path.join(work, f"{name}.summary.json")):
            if os.path.exists(f):
                os.remove(f)
        return path

    commands = {
        "single": lambda src, shards, tag: [sys.executable, PREDICT, "--checkpoint", ckpt, "--json", "--top", "10", src],
        "collection": lambda src, shards, tag: [sys.executable, PREDICT, "--checkpoint", ckpt, "--shards", shards,
                                                "--out", out("collection" + tag), "--source-root", src],
        "collection-eager": lambda src, shards, tag: [sys.executable, PREDICT, "--checkpoint", ckpt, "--shards", shards,
                                                      "--out", out("eager" + tag), "--source-root", src, "--eager"],
        "collection-2rank": lambda src, shards, tag: [sys.executable, PREDICT, "--checkpoint", ckpt, "--shards", shards,
                                                      "--out", out("two" + tag), "--source-root", src, "--nproc", "2",
                                                      *two_rank],
        "folder": lambda src, shards, tag: [sys.executable, PREDICT, "--checkpoint", ckpt, src, "--out",
                                            out("folder" + tag)],
    }
    methods = [m for m in a.methods.split(",") if m]
    runs: dict[str, list[dict]] = {m: [] for m in methods}
    starts: dict[str, list[float]] = {m: [] for m in methods}  # wall seconds on one clip
    parity: dict[str, float] = {}
    load_before = os.getloadavg()
    for r in range(a.rounds):
        for m in methods:
            idle = wait_idle(a.wait_idle) if a.wait_idle else None
            log(f"round {r + 1}/{a.rounds}: {m}" + (f" (others used {idle:.2f} cores before it)" if idle is not None else ""))
            for attempt in range(a.retries + 1):
                if a.wait_idle:
                    wait_idle(a.wait_idle)
                one = timed(commands[m](one_src, one_shards, "-one"), a.timeout)
                res = timed(commands[m](src, shards, ""), a.timeout)
                res["attempt"] = attempt
                if max(one["other_load_cores"], res["other_load_cores"]) <= 0.2:
                    break
                log(f"  disturbed (others used {res['other_load_cores']:.2f} cores): again")
            starts[m].append(one["wall_s"])
            res["one_clip_other_load_cores"] = one["other_load_cores"]
            res["clips_per_s"] = round(total_s / CLIP_S / res["wall_s"], 3)
            res["load_avg_1min_after"] = round(os.getloadavg()[0], 2)
            if m == "single":
                single = {x["file"]: x["probabilities"] for x in json.loads(res["stdout"])["results"]}
            elif m in ("collection", "collection-2rank", "folder") and "single" in runs:
                name = {"collection": "collection", "collection-2rank": "two", "folder": "folder"}[m]
                with open(os.path.join(work, f"{name}.jsonl")) as f:
                    recs = [json.loads(line) for line in f]
                parity[m] = max(abs(x["probabilities"][c] - single[x["source"]][c])
                                for x in recs for c in x["probabilities"])
                assert len(recs) == len(single), (m, len(recs), len(single))
            del res["stdout"]
            runs[m].append(res)
            log(f"  {res['wall_s']:.1f} s wall, {res['cpu_s']:.0f} s CPU, others {res['other_load_cores']:.2f} cores: "
                f"{res['clips_per_s']:.2f} clips of 30 s/s")

    results = {}
    for m, rs in runs.items():
        walls = sorted(x["wall_s"] for x in rs)
        med = statistics.median(walls)
        w1 = statistics.median(starts[m])
        results[m] = {"runs": rs, "wall_s_median": med, "other_load_cores_max": max(x["other_load_cores"] for x in rs),
                      "one_clip_wall_s": starts[m], "one_clip_wall_s_median": w1,
                      "clips_per_s_marginal": round((total_s - one_s) / CLIP_S / (med - w1), 3),
                      "clips_per_s_median": round(total_s / CLIP_S / med, 3),
                      "clips_per_s_min_max": [round(total_s / CLIP_S / walls[-1], 3), round(total_s / CLIP_S / walls[0], 3)]}
    if "single" in results:
        base = results["single"]["clips_per_s_median"]
        for m in results:
            results[m]["x_single"] = round(results[m]["clips_per_s_median"] / base, 2)
            results[m]["x_single_marginal"] = round(results[m]["clips_per_s_marginal"]
                                                    / results["single"]["clips_per_s_marginal"], 2)
    report = {
        "benchmark": "collection", "date": time.strftime("%Y%m%d"), "time": time.strftime("%H:%M:%S"),
        "host": host,
        "data": {"src": src, "shards": shards, "clips": a.clips, "clip_seconds": a.seconds, "total_seconds": total_s,
                 "synthetic": True},
        "settings": {"rounds": a.rounds, "model": None if a.checkpoint else a.model, "checkpoint": a.checkpoint,
                     "load_avg_before": [round(x, 2) for x in load_before]},
        "results": results,
        "parity_max_abs_dprob_vs_single_json": {m: round(v, 6) for m, v in parity.items()},
        "notes": ["wall time of the whole command (start-up included); median of the rounds",
                  "single-file --json prints probabilities with 4 decimals: differences up to 5e-5 are rounding"],
    }
    os.makedirs(os.path.join(HERE, "results"), exist_ok=True)
    path = os.path.join(HERE, "results", f"collection-{host['kind']}-{report['date']}{a.tag}.json")
    from core.atomic import atomic_write
    atomic_write(path, json.dumps(report, indent=1).encode())
    print(f"\n{a.clips} clips x {a.seconds:g} s ({total_s / 60:.0f} min of audio), model "
          f"{a.model if not a.checkpoint else a.checkpoint}, {host['kind']} ({host['cpu_model']}, GPU {host['gpu']})")
    print("| method | clips of 30 s/s (median; min-max) | x single | wall s (median) | one clip, s | marginal "
          "clips of 30 s/s (start-up excluded) | x single | others' load, cores (max) |")
    print("|---|---|---|---|---|---|---|---|")
    for m, r in results.items():
        lo, hi = r["clips_per_s_min_max"]
        print(f"| {m} | {r['clips_per_s_median']:.2f} ({lo:.2f}-{hi:.2f}) | {r.get('x_single', '-')} | "
              f"{r['wall_s_median']:.1f} | {r['one_clip_wall_s_median']:.1f} | {r['clips_per_s_marginal']:.2f} | "
              f"{r.get('x_single_marginal', '-')} | {r['other_load_cores_max']:.2f} |")
    if parity:
        print("max |dp| vs single --json: " + ", ".join(f"{m} {v:.1e}" for m, v in parity.items()))
    print(f"-> {os.path.relpath(path, ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
