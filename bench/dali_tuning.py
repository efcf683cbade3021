"""DaliLoader constructor settings vs loader-only throughput and memory (no model).

    .venv/bin/python -m bench.dali_tuning [--epochs 5] [--modes train,eval] [--vary num_threads,prefetch]

Varies one DaliLoader argument at a time around the baseline (num_threads = cores, prefetch 2,
batch 32): num_threads 1 / 2, prefetch 1 / 2 / 4, batch 16 / 32 / 64, and in train mode crops 4
(train.py's --crops-per-track: 4 crops per decoded track, batch counted in tracks); --vary picks
which of them (none: the baseline alone). Nothing in the product code is changed: every setting is a
DaliLoader constructor argument. Modes:
  train  train=True: a random 3 s crop per track (what training reads)
  eval   train=False: whole tracks, as bench.features' dali-cpu row
Each setting runs in a fresh process (bench.harness) over the shards of bench.features' 200 clips
(bench/.cache, built if missing; or --src): one untimed epoch, then --epochs timed epochs. Reports
tracks/s (median and min-max over epochs) and the process's peak RSS. Output: table on stdout,
JSON in bench/results/.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from typing import Any

from bench import CACHE, RESULTS
from bench.data import SPLIT, prepare
from bench.harness import child_main, logger, require_dali, run_fresh
from bench.host import describe, host_info, today
from bench.tables import Col, num, publish, rng, text

VARY = {"num_threads": None, "prefetch": [1, 2, 4], "batch": [16, 32, 64], "crops": [4]}  # None: 1, 2, cores
log = logger("dali-tuning")


def run_setting(cfg: dict, sampler: Any) -> dict:
    """The child: build the loader, one untimed epoch, then cfg["epochs"] timed ones."""
    require_dali()
    import torch

    from loading.loader import DaliLoader
    from core.spec import FeatureSpec
    dev = torch.device("cuda", 0) if cfg["device"] == "cuda" else torch.device("cpu")
    t = time.perf_counter()
    ld = DaliLoader(cfg["shard_dir"], SPLIT, FeatureSpec.from_dict(cfg["spec"]), cfg["batch"],
                    train=cfg["mode"] == "train", num_threads=cfg["num_threads"], prefetch=cfg["prefetch"],
                    device=dev, crops=cfg["crops"])
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
    return {"build_s": build, "epoch_s": times, "tracks": n / crops, "crops_per_track": crops}


def settings(cores: int, vary: list[str], mode: str) -> list[dict]:
    """The baseline, then each varied argument's other values (crops in train mode only)."""
    base = {"num_threads": cores, "prefetch": 2, "batch": 32, "crops": 1}
    out = [dict(base)]
    for k in vary:
        if k == "crops" and mode != "train":
            continue
        vals = sorted({1, 2, cores}) if VARY[k] is None else VARY[k]
        out += [dict(base, **{k: v}) for v in vals if v != base[k]]
    return out


COLUMNS = [
    Col("mode", text("mode")), Col("num_threads", text("num_threads")), Col("prefetch", text("prefetch")),
    Col("batch (tracks)", text("batch")), Col("crops/track", lambda r: str(r["crops"] if r["mode"] == "train" else 1)),
    Col("tracks/s median (min–max)", rng("tracks_per_s", ".1f")),
    Col("crops/s", lambda r: f"{r['tracks_per_s']['median'] * r['crops_per_track']:.1f}"),
    Col("peak RSS MB", num("peak_rss_mb", ".0f")), Col("other load, cores", num("other_load_cores", ".2f")),
]


def main(argv: list[str] | None = None) -> int:
    cores = os.cpu_count() or 1
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--modes", default="train,eval")
    ap.add_argument("--vary", default=",".join(VARY),
                    help="comma-separated arguments to vary, of: " + ", ".join(VARY) + " ('none': the baseline only)")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--src", help="folder of class folders of audio (default: synthetic clips in bench/.cache)")
    ap.add_argument("--clips", type=int, default=200)
    ap.add_argument("--wait-idle", type=float, default=30.0)
    ap.add_argument("--method-timeout", type=float, default=600.0, help="seconds per setting's process at most")
    ap.add_argument("--cache", default=CACHE)
    ap.add_argument("--out", default=RESULTS)
    ap.add_argument("--_child", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a._child:
        child_main(a._child, run_setting)
    vary = [v.strip() for v in a.vary.split(",") if v.strip() and v.strip() != "none"]
    if set(vary) - set(VARY):
        ap.error(f"--vary: unknown {sorted(set(vary) - set(VARY))}; choose from {', '.join(VARY)}")

    from core.spec import FeatureSpec
    from training.report import write_json  # atomic; imported here to keep the top level light
    spec = FeatureSpec()
    ds = prepare(a.src, a.clips, a.cache, spec, log=log)
    if not ds.shard_dir:
        log(f"error: no shards, nothing to tune ({ds.shard_error})")
        return 2
    host, date = host_info(), today()
    rows = []
    for mode in [m.strip() for m in a.modes.split(",") if m.strip()]:
        for v in settings(cores, vary, mode):
            name = f"{mode}-t{v['num_threads']}-p{v['prefetch']}-b{v['batch']}-c{v['crops']}"
            cfg = dict(v, method=name, mode=mode, device=a.device, shard_dir=ds.shard_dir, epochs=a.epochs,
                       spec=spec.to_dict())
            res = run_fresh("bench.dali_tuning", name, cfg, cache=a.cache, prefix="tuning-", wait_idle_s=a.wait_idle,
                            timeout=a.method_timeout, log=log)
            row = dict(v, mode=mode, **res)
            if "epoch_s" in res:
                rates = [res["tracks"] / s for s in res["epoch_s"]]
                row["tracks_per_s"] = {"median": statistics.median(rates), "min": min(rates), "max": max(rates)}
            rows.append(row)
    os.makedirs(a.out, exist_ok=True)
    stem = os.path.join(a.out, f"dali-tuning-{host['kind']}-{date}")
    write_json(stem + ".json", {"benchmark": "dali_tuning", "date": date, "host": host, "device": a.device,
                                "shard_dir": ds.shard_dir, "tracks": len(ds.items), "epochs": a.epochs, "rows": rows})
    publish(f"DaliLoader settings, loader only ({a.device}, {len(ds.items)} tracks of "
            f"{ds.total_seconds / len(ds.items):.0f} s), host {describe(host)}, {date}", rows, COLUMNS, "tracks_per_s",
            stem=stem, keep=5)
    return 0 if all("tracks_per_s" in r for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
