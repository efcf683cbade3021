#!/usr/bin/env python
"""DaliLoader constructor settings vs loader-only throughput and memory (no model).

    .venv/bin/python bench/dali_tuning.py [--epochs 5] [--modes train,eval]

Varies one DaliLoader argument at a time around the baseline (num_threads = cores, prefetch 2,
batch 32): num_threads 1 / 2, prefetch 1 / 2 / 4, batch 16 / 32 / 64, and in train mode crops 4
(train.py's --crops-per-track: 4 crops per decoded track, batch counted in tracks). Nothing in
pipeline/ is changed: every setting is a DaliLoader constructor argument. Modes:
  train  train=True: a random 3 s crop per track (what training reads)
  eval   train=False: whole tracks, as bench/features.py's dali-cpu row
Each setting runs in a fresh process over the shards of bench/features.py's 200 clips (bench/.cache,
built if missing): one untimed epoch, then --epochs timed epochs. Reports tracks/s (median and
min-max over epochs) and the process's peak RSS. Output: table on stdout, JSON in bench/results/.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import resource
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "bench")
for _p in (ROOT, BENCH):
    if _p not in sys.path:
        sys.path.insert(0, _p)


def child(cfg: dict) -> dict:
    import torch

    from pipeline.loader import DaliLoader
    from pipeline.spec import FeatureSpec
    dev = torch.device("cuda", 0) if cfg["device"] == "cuda" else torch.device("cpu")
    t = time.perf_counter()
    ld = DaliLoader(cfg["shard_dir"], "train", FeatureSpec(), cfg["batch"], train=cfg["mode"] == "train",
                    num_threads=cfg["num_threads"], prefetch=cfg["prefetch"], device=dev, crops=cfg["crops"])
    build = time.perf_counter() - t
    times = []
    for e in range(1 + cfg["epochs"]):
        t = time.perf_counter()
        n = 0.0
        for b in ld:
            n += float(b.weight.sum())
        if dev.type == "cuda":
            torch.cuda.synchronize()
        if e:
            times.append(time.perf_counter() - t)
    crops = cfg["crops"] if cfg["mode"] == "train" else 1
    return {"build_s": build, "epoch_s": times, "tracks": n / crops, "crops_per_track": crops,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main(argv: list[str] | None = None) -> int:
    cores = os.cpu_count() or 1
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--modes", default="train,eval")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--clips", type=int, default=200)
    ap.add_argument("--wait-idle", type=float, default=30.0)
    ap.add_argument("--cache", default=os.path.join(BENCH, ".cache"))
    ap.add_argument("--out", default=os.path.join(BENCH, "results"))
    ap.add_argument("--_child", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a._child:
        cfg = json.loads(a._child)
        print(json.dumps(child(cfg)), flush=True)
        os._exit(0)  # skip DALI's slow teardown; the result is printed

    import features as fb
    from pipeline.spec import FeatureSpec
    spec = FeatureSpec()
    src = fb.synth_source(a.cache, a.clips)
    shard_dir, _ = fb.build_shards(src, fb.select_clips(src, a.clips), a.cache, spec)
    fb.warm_page_cache([os.path.join(shard_dir, f) for f in os.listdir(shard_dir)])
    base = {"num_threads": cores, "prefetch": 2, "batch": 32, "crops": 1}
    variants = [dict(base)]
    for k, vals in (("num_threads", sorted({1, 2, cores})), ("prefetch", [1, 2, 4]), ("batch", [16, 32, 64])):
        variants += [dict(base, **{k: v}) for v in vals if v != base[k]]
    host = fb.host_info()
    rows = []
    for mode in [m.strip() for m in a.modes.split(",") if m.strip()]:
        for v in variants + ([dict(base, crops=4)] if mode == "train" else []):
            cfg = dict(v, mode=mode, device=a.device, shard_dir=shard_dir, epochs=a.epochs)
            waited, load = fb.wait_idle(a.wait_idle) if a.wait_idle > 0 else (0.0, 0.0)
            t, busy0, own0 = time.perf_counter(), fb.cpu_busy_s(), fb.children_cpu_s()
            p = subprocess.run([sys.executable, os.path.abspath(__file__), "--_child", json.dumps(cfg)],
                               capture_output=True, text=True, cwd=ROOT, timeout=600)
            wall = time.perf_counter() - t
            other = max(0.0, (fb.cpu_busy_s() - busy0) - (fb.children_cpu_s() - own0)) / wall
            try:
                res = json.loads(p.stdout.strip().splitlines()[-1])
            except (IndexError, json.JSONDecodeError):
                res = {"error": (p.stderr or p.stdout)[-500:]}
            row = dict(v, mode=mode, other_load_cores=other, **res)
            if "epoch_s" in res:
                rates = [res["tracks"] / s for s in res["epoch_s"]]
                row["tracks_per_s"] = {"median": statistics.median(rates), "min": min(rates), "max": max(rates)}
            rows.append(row)
            fb.log(f"{mode} {v}: " + (f"{row['tracks_per_s']['median']:.1f} tracks/s" if "tracks_per_s" in row
                                       else "FAILED " + res.get("error", "")) + f" (other load {other:.2f})")
    date = datetime.date.today().strftime("%Y%m%d")
    os.makedirs(a.out, exist_ok=True)
    path = os.path.join(a.out, f"dali-tuning-{host['kind']}-{date}.json")
    from training.report import write_json  # atomic; imported here to keep the top level light
    write_json(path, {"benchmark": "dali_tuning", "date": date, "host": host, "device": a.device,
                      "shard_dir": shard_dir, "epochs": a.epochs, "rows": rows})
    print(f"## DaliLoader settings, loader only ({a.device}, {a.clips} tracks of 30 s), host {host['kind']}, {date}\n")
    print("| mode | num_threads | prefetch | batch (tracks) | crops/track | tracks/s median (min–max) | crops/s "
          "| peak RSS MB | other load, cores |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        tp = r.get("tracks_per_s")
        rate = f"{tp['median']:.1f} ({tp['min']:.1f}–{tp['max']:.1f})" if tp else "FAILED"
        k = r["crops"] if r["mode"] == "train" else 1
        crops_s = f"{tp['median'] * k:.1f}" if tp else "-"
        print(f"| {r['mode']} | {r['num_threads']} | {r['prefetch']} | {r['batch']} | {k} | {rate} | {crops_s} "
              f"| {r.get('peak_rss_mb', 0):.0f} | {r['other_load_cores']:.2f} |")
    print(f"\nJSON: {os.path.relpath(path, ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
