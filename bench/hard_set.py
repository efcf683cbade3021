#!/usr/bin/env python
"""Model comparison on the overlapping generated set (`synth.py --hard`), the stand-in for real data.

    .venv/bin/python bench/hard_set.py                       # the README's table: every config below
    .venv/bin/python bench/hard_set.py --configs baseline,rescnn-c4 --seeds 0,1

Generates (once, into bench/.cache/) 30 clips of 30 s per genre with `synth.py --hard --seed 0`,
shards them with a stratified 70/15/15 whole-track split (220/40/40 tracks), then runs train.py
for each config and seed (2 local ranks, --amp, 30 epochs unless the config says otherwise) and
reads each run's metrics.json: best validation track accuracy (the model-selection metric),
test track and window accuracy of the best checkpoint, last-epoch train accuracy and wall time.
Output: markdown table on stdout, JSON under bench/results/hard-<host>-<date>.json, runs under
bench/.cache/hard-runs/<config>-s<seed>/ (a finished run there is reused; delete it to retrain).

40 tracks per split: one track is 0.025, so differences under ~0.1 are within noise; use several
--seeds (model init and crops; the split stays fixed) before trusting a small gap.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "bench")
sys.path.insert(0, ROOT)

# name -> train.py arguments (besides --shards/--run-dir/--seed/--nproc/--amp)
CONFIGS: dict[str, list[str]] = {
    "baseline": ["--model", "baseline", "--batch-size", "16", "--crops-per-track", "1"],
    "resnet": ["--model", "resnet", "--batch-size", "16", "--crops-per-track", "1"],
    "rescnn": ["--model", "rescnn", "--batch-size", "16", "--crops-per-track", "1"],
    "baseline-c4": ["--model", "baseline", "--batch-size", "32", "--crops-per-track", "4"],
    "rescnn-c4": ["--model", "rescnn", "--batch-size", "32", "--crops-per-track", "4"],
    "baseline-aug": ["--model", "baseline", "--batch-size", "16", "--crops-per-track", "1", "--specaugment",
                     "--gain-db", "6", "--mixup", "0.2"],
    "baseline-c4-specaug": ["--model", "baseline", "--batch-size", "32", "--crops-per-track", "4", "--specaugment"],
    "resnet-aug": ["--model", "resnet", "--batch-size", "16", "--crops-per-track", "1", "--specaugment",
                   "--gain-db", "6", "--mixup", "0.2"],
    "resnet-c4-aug": ["--model", "resnet", "--batch-size", "32", "--crops-per-track", "4", "--specaugment",
                      "--gain-db", "6", "--mixup", "0.2"],
}


def log(msg: str) -> None:
    print(f"[hard_set] {msg}", file=sys.stderr, flush=True)


def build_data(cache: str) -> str:
    """The hard set and its shards, made once (both steps are deterministic for the seed)."""
    from preprocess.make_shards import make_shards
    from preprocess.synth import generate
    src, shards = os.path.join(cache, "hard-src"), os.path.join(cache, "hard-shards")
    if not os.path.exists(os.path.join(src, ".done")):
        log("generating 300 clips of 30 s (synth --hard, seed 0)")
        generate(src, per_class=30, seconds=30.0, seed=0, hard=True)
        open(os.path.join(src, ".done"), "w").close()
    if not os.path.exists(os.path.join(shards, "manifest.json")):
        make_shards(src, shards, val=0.15, test=0.15, seed=0, workers=os.cpu_count() or 1)
    return shards


def run_config(name: str, seed: int, shards: str, runs: str, epochs: int, nproc: str, reuse_only: bool) -> dict | None:
    run_dir = os.path.join(runs, f"{name}-s{seed}")
    cmd = [sys.executable, os.path.join(ROOT, "train.py"), "--shards", shards, "--run-dir", run_dir,
           "--seed", str(seed), "--nproc", str(nproc), "--amp", "--epochs", str(epochs), *CONFIGS[name]]
    done = os.path.join(run_dir, "wall_s.txt")  # written last: a finished run is reused, not retrained
    if os.path.exists(done):
        log(f"{name} seed {seed}: reusing {run_dir}")
    elif reuse_only:
        return None
    else:
        log(f"{name} seed {seed}: {' '.join(cmd[2:])}")
        t = time.perf_counter()
        p = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if p.returncode != 0:
            return {"config": name, "seed": seed, "error": p.stderr.strip().splitlines()[-1:]}
        with open(done, "w", encoding="utf-8") as f:
            f.write(f"{time.perf_counter() - t:.1f}\n")
    wall = float(open(done, encoding="utf-8").read())
    m = json.load(open(os.path.join(run_dir, "metrics.json"), encoding="utf-8"))
    h = m["history"]
    return {"config": name, "seed": seed, "args": CONFIGS[name], "best_val": max(e["val_track_acc"] for e in h),
            "best_epoch": m["best_epoch"], "test_track": m["test"]["track_acc"], "test_window": m["test"]["segment_acc"],
            "last_train_acc": h[-1]["train_acc"], "wall_s": wall, "samples_per_s": statistics.median(
                e["samples_per_s"] for e in h), "run_dir": os.path.relpath(run_dir, ROOT)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", default=",".join(CONFIGS), help="comma-separated: " + ", ".join(CONFIGS))
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--nproc", default="auto", help="ranks per run (train.py --nproc; auto: one per GPU, 2 on a CPU)")
    ap.add_argument("--reuse-only", action="store_true", help="only tabulate finished runs; train nothing")
    ap.add_argument("--cache", default=os.path.join(BENCH, ".cache"))
    ap.add_argument("--out", default=os.path.join(BENCH, "results"))
    a = ap.parse_args(argv)
    names = [c.strip() for c in a.configs.split(",") if c.strip()]
    unknown = [c for c in names if c not in CONFIGS]
    if unknown:
        ap.error(f"unknown config(s) {', '.join(unknown)}; choose from {', '.join(CONFIGS)}")
    shards = build_data(a.cache)
    rows = [run_config(c, int(s), shards, os.path.join(a.cache, "hard-runs"), a.epochs, a.nproc, a.reuse_only)
            for c in names for s in a.seeds.split(",")]
    rows = [r for r in rows if r is not None]

    import features as fb  # bench/features.py: host description shared by every benchmark
    host, date = fb.host_info(), datetime.date.today().strftime("%Y%m%d")
    os.makedirs(a.out, exist_ok=True)
    path = os.path.join(a.out, f"hard-{host['kind']}-{date}.json")
    from training.report import write_json  # atomic; imported here to keep the top level light
    write_json(path, {"benchmark": "hard_set", "date": date, "host": host, "epochs": a.epochs, "nproc": a.nproc,
                      "rows": rows})
    print(f"## synth --hard (220/40/40 tracks), {a.epochs} epochs, {a.nproc} ranks, --amp; host {host['kind']}, {date}\n")
    print("| config | seed | best val acc (tracks) | test acc tracks (windows) | last train acc | samples/s | wall s |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        if "error" in r:
            print(f"| {r['config']} | {r['seed']} | FAILED: {' '.join(r['error'])} | | | | |")
            continue
        print(f"| {r['config']} | {r['seed']} | {r['best_val']:.3f} (epoch {r['best_epoch']}) | {r['test_track']:.3f} "
              f"({r['test_window']:.3f}) | {r['last_train_acc']:.3f} | {r['samples_per_s']:.1f} | {r['wall_s']:.0f} |")
    print(f"\nJSON: {os.path.relpath(path, ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
