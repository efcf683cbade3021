"""Model comparison on the overlapping generated set (`synth.py --hard`), the stand-in for real data.

    .venv/bin/python -m bench.hard_set                       # the README's table: every config below
    .venv/bin/python -m bench.hard_set --configs baseline,rescnn-c4 --seeds 0,1
    .venv/bin/python -m bench.hard_set --configs tiny --per-class 3 --seconds 4 --epochs 1 --nproc 1  # smoke
    .venv/bin/python -m bench.hard_set --configs baseline-c4-ema,bandnorm-c4-ema,resnet-c4-ema --seeds 0,1,2 \
        --ensembles baseline-c4-ema+bandnorm-c4-ema+resnet-c4-ema

Generates (once, into bench/.cache/) --per-class 30 clips of --seconds 30 per genre with
`synth.py --hard --seed 0`, shards them with a stratified 70/15/15 whole-track split (220/40/40
tracks), then runs train.py for each config and seed (2 local ranks, --amp, 30 epochs unless the
config says otherwise) and reads each run's metrics.json: best validation track accuracy (the
model-selection metric), test track and window accuracy of the best checkpoint, last-epoch train
accuracy and wall time. Output: markdown table on stdout, JSON under
bench/results/hard-<host>-<date>.json, runs under bench/.cache/hard-runs/<config>-s<seed>/ (a
finished run there is reused; delete it to retrain; other data sizes get their own folders).

--ensembles A+B+...: for each seed where every member config's run finished, their best.pt joined
as predict.py joins several --checkpoint (model/ensemble.py), judged on val and test (one CPU
process, bf16 as the runs; cached beside the runs until a member's best.pt changes); members that
are not among --configs are trained too.

40 tracks per split: one track is 0.025, so differences under ~0.1 are within noise; use several
--seeds (model init and crops; the split stays fixed) before trusting a small gap.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

from bench import CACHE, RESULTS, ROOT, pin_ema
from bench.harness import logger
from bench.host import describe, host_info, today
from bench.tables import Col, markdown, num, publish, text

# name -> train.py arguments (besides --shards/--run-dir/--seed/--nproc/--amp)
CONFIGS: dict[str, list[str]] = {
    "baseline": ["--model", "baseline", "--batch-size", "16", "--crops-per-track", "1"],
    "resnet": ["--model", "resnet", "--batch-size", "16", "--crops-per-track", "1"],
    "rescnn": ["--model", "rescnn", "--batch-size", "16", "--crops-per-track", "1"],
    "baseline-c4": ["--model", "baseline", "--batch-size", "32", "--crops-per-track", "4"],
    "rescnn-c4": ["--model", "rescnn", "--batch-size", "32", "--crops-per-track", "4"],
    "baseline-aug": ["--model", "baseline", "--batch-size", "16", "--crops-per-track", "1", "--specaugment",
                     "--gain-db", "6", "--mixup", "0.2"],
    # the default with --ema; --compare-raw also gives the default's own figures from the same run
    "baseline-c4-ema": ["--model", "baseline", "--batch-size", "32", "--crops-per-track", "4", "--ema", "0.999",
                        "--compare-raw"],
    "baseline-c4-ema-specaug-gain": ["--model", "baseline", "--batch-size", "32", "--crops-per-track", "4", "--ema",
                                     "0.999", "--compare-raw", "--specaugment", "--gain-db", "6"],
    "baseline-c4-specaug": ["--model", "baseline", "--batch-size", "32", "--crops-per-track", "4", "--specaugment"],
    # the short-chunk resnet with the default's crops and batch; --compare-raw gives its plain run too
    "resnet-c4-ema": ["--model", "resnet", "--batch-size", "32", "--crops-per-track", "4", "--ema", "0.999",
                      "--compare-raw"],
    "bandnorm-c4-ema": ["--model", "baseline-bandnorm", "--batch-size", "32", "--crops-per-track", "4", "--ema",
                        "0.999", "--compare-raw"],
    # the real-music set's best ensembles (bench/NOTES.md), trained in one run
    "pair-c4-ema": ["--model", "baseline-bandnorm+resnet", "--batch-size", "32", "--crops-per-track", "4",
                    "--ema", "0.999", "--compare-raw"],
    "trio-c4-ema": ["--model", "baseline+baseline-bandnorm+resnet", "--batch-size", "32", "--crops-per-track", "4",
                    "--ema", "0.999", "--compare-raw"],
    # the default candidate without the resnet, whose overfitting costs the pair here (bench/NOTES.md)
    "base-bandnorm-c4-ema": ["--model", "baseline+baseline-bandnorm", "--batch-size", "32", "--crops-per-track", "4",
                             "--ema", "0.999", "--compare-raw"],
    "resnet-aug": ["--model", "resnet", "--batch-size", "16", "--crops-per-track", "1", "--specaugment",
                   "--gain-db", "6", "--mixup", "0.2"],
    "resnet-c4-aug": ["--model", "resnet", "--batch-size", "32", "--crops-per-track", "4", "--specaugment",
                      "--gain-db", "6", "--mixup", "0.2"],
}
SMOKE_CONFIGS = {"tiny": ["--model", "tiny", "--batch-size", "8", "--crops-per-track", "1"],  # not in the default set
                 "tiny-b4": ["--model", "tiny", "--batch-size", "4", "--crops-per-track", "1"]}
log = logger("hard_set")


def build_data(cache: str, per_class: int = 30, seconds: float = 30.0) -> tuple[str, str]:
    """The hard set and its shards, made once (both steps are deterministic for the seed).
    Returns (shard folder, runs folder), both named after the data size (the README's: 'hard-')."""
    from preprocess.make_shards import make_shards
    from preprocess.synth import generate
    stem = os.path.join(cache, "hard" if (per_class, seconds) == (30, 30.0) else f"hard-pc{per_class}-{seconds:g}s")
    src, shards = stem + "-src", stem + "-shards"
    if not os.path.exists(os.path.join(src, ".done")):
        log(f"generating {10 * per_class} clips of {seconds:g} s (synth --hard, seed 0)")
        generate(src, per_class=per_class, seconds=seconds, seed=0, hard=True, progress=False)
        open(os.path.join(src, ".done"), "w").close()
    if not os.path.exists(os.path.join(shards, "manifest.json")):
        make_shards(src, shards, val=0.15, test=0.15, seed=0, workers=os.cpu_count() or 1, progress=False)
    return shards, stem + "-runs"


def run_config(name: str, seed: int, shards: str, runs: str, a: argparse.Namespace) -> dict | None:
    run_dir = os.path.join(runs, f"{name}-s{seed}")
    args = {**CONFIGS, **SMOKE_CONFIGS}[name]
    cmd = [sys.executable, os.path.join(ROOT, "train.py"), "--shards", shards, "--run-dir", run_dir,
           "--seed", str(seed), "--nproc", str(a.nproc), "--amp", "--epochs", str(a.epochs), *pin_ema(args)]
    done = os.path.join(run_dir, "wall_s.txt")  # written last: a finished run is reused, not retrained
    if os.path.exists(done):
        log(f"{name} seed {seed}: reusing {run_dir}")
    elif a.reuse_only:
        return None
    else:
        log(f"{name} seed {seed}: {' '.join(cmd[2:])}")
        t = time.perf_counter()
        try:
            p = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                               timeout=a.run_timeout)
        except subprocess.TimeoutExpired:
            return {"config": name, "seed": seed, "error": f"train.py timed out after {a.run_timeout:.0f} s"}
        if p.returncode != 0:
            return {"config": name, "seed": seed, "error": " ".join(p.stderr.strip().splitlines()[-1:])}
        with open(done, "w", encoding="utf-8") as f:
            f.write(f"{time.perf_counter() - t:.1f}\n")
    with open(done, encoding="utf-8") as f:
        wall = float(f.read())
    with open(os.path.join(run_dir, "metrics.json"), encoding="utf-8") as f:
        m = json.load(f)
    from training.report import best_val
    h = m["history"]
    return {"config": name, "seed": seed, "args": args, "best_val": best_val(h),
            "best_epoch": m["best_epoch"], "test_track": m["test"]["track_acc"],
            "test_window": m["test"]["segment_acc"], "last_train_acc": h[-1]["train_acc"], "wall_s": wall,
            "samples_per_s": statistics.median(e["samples_per_s"] for e in h),
            "run_dir": os.path.relpath(run_dir, ROOT),
            **({"best_val_raw": best_val(h, "val_track_acc_raw"), "best_epoch_raw": m["best_epoch_raw"],
                "test_track_raw": m["test_raw"]["track_acc"]} if "test_raw" in m else {})}


def run_ensemble(members: list[str], seed: int, rows: list[dict], shards: str, runs: str) -> dict | None:
    """The members' best.pt joined, judged on val and test; None unless every member's run finished."""
    from bench.realmusic_recipes import cached_predictions, fresh
    from storage.folder import read_manifest
    got = {r["config"]: r for r in rows if r["seed"] == seed and "error" not in r}
    if any(m not in got for m in members):
        return None
    name = "+".join(members)
    ckpts = [os.path.join(runs, f"{m}-s{seed}", "best.pt") for m in members]
    cached = {split: os.path.join(runs, f"ensemble-{name}-s{seed}-{split}.json") for split in ("val", "test")}
    if not all(fresh(c, ckpts) for c in cached.values()):
        log(f"{name} seed {seed}: judging the joined best.pt on val and test")
    manifest = read_manifest(shards)
    acc = {split: cached_predictions(c, ckpts, shards, manifest, bf16=True, split=split)["track_acc"]
           for split, c in cached.items()}
    return {"config": name, "seed": seed, "members": members, "val_track": acc["val"], "test_track": acc["test"],
            "members_val": [got[m]["best_val"] for m in members],
            "members_test": [got[m]["test_track"] for m in members]}


COLUMNS = [
    Col("config", text("config")), Col("seed", text("seed")),
    Col("best val acc (tracks)", lambda r: f"{r['best_val']:.3f} (epoch {r['best_epoch']})"),
    Col("test acc tracks (windows)", lambda r: f"{r['test_track']:.3f} ({r['test_window']:.3f})"),
    Col("raw weights: best val (test)", lambda r: f"{r['best_val_raw']:.3f} ({r['test_track_raw']:.3f})"
        if "best_val_raw" in r else "–"),
    Col("last train acc", num("last_train_acc", ".3f")), Col("samples/s", num("samples_per_s", ".1f")),
    Col("wall s", num("wall_s", ".0f")),
]
ENSEMBLE_COLUMNS = [
    Col("ensemble (best.pt of each)", text("config")), Col("seed", text("seed")),
    Col("val acc (tracks)", num("val_track", ".3f")), Col("test acc (tracks)", num("test_track", ".3f")),
    Col("members: val", lambda r: ", ".join(f"{v:.3f}" for v in r["members_val"])),
    Col("members: test", lambda r: ", ".join(f"{v:.3f}" for v in r["members_test"])),
]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", default=",".join(CONFIGS),
                    help="comma-separated: " + ", ".join(CONFIGS) + " (and " + ", ".join(SMOKE_CONFIGS) + ")")
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--ensembles", default="", metavar="A+B[,C+D]",
                    help="configs joined by '+': their runs' best.pt judged as one model, per seed")
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--per-class", type=int, default=30, help="generated clips per genre (default 30)")
    ap.add_argument("--seconds", type=float, default=30.0, help="length of each generated clip (default 30)")
    ap.add_argument("--nproc", default="auto", help="ranks per run (train.py --nproc; auto: one per GPU, 2 on a CPU)")
    ap.add_argument("--run-timeout", type=float, default=4 * 3600.0, help="seconds per train.py run at most")
    ap.add_argument("--reuse-only", action="store_true", help="only tabulate finished runs; train nothing")
    ap.add_argument("--cache", default=CACHE)
    ap.add_argument("--out", default=RESULTS)
    a = ap.parse_args(argv)
    names = [c.strip() for c in a.configs.split(",") if c.strip()]
    ensembles = [e.split("+") for e in a.ensembles.split(",") if e.strip()]
    if any(len(e) < 2 or len(set(e)) < len(e) for e in ensembles):
        ap.error(f"--ensembles {a.ensembles}: each needs two or more different configs joined by '+'")
    names += [m for e in ensembles for m in e if m not in names]
    unknown = [c for c in names if c not in CONFIGS and c not in SMOKE_CONFIGS]
    if unknown:
        ap.error(f"unknown config(s) {', '.join(unknown)}; choose from {', '.join([*CONFIGS, *SMOKE_CONFIGS])}")
    shards, runs = build_data(a.cache, a.per_class, a.seconds)
    with open(os.path.join(shards, "manifest.json"), encoding="utf-8") as f:
        split = "/".join(str(s["count"]) for s in json.load(f)["splits"].values())
    rows = [run_config(c, int(s), shards, runs, a) for c in names for s in a.seeds.split(",")]
    rows = [r for r in rows if r is not None]
    joined = [run_ensemble(e, int(s), rows, shards, runs) for e in ensembles for s in a.seeds.split(",")]
    joined = [r for r in joined if r is not None]

    from training.report import write_json  # atomic; imported here to keep the top level light
    host, date = host_info(), today()
    os.makedirs(a.out, exist_ok=True)
    stem = os.path.join(a.out, f"hard-{host['kind']}-{date}")
    write_json(stem + ".json", {"benchmark": "hard_set", "date": date, "host": host, "epochs": a.epochs,
                                "nproc": a.nproc, "per_class": a.per_class, "seconds": a.seconds, "split": split,
                                "rows": rows, "ensembles": joined})
    publish(f"synth --hard ({split} tracks), {a.epochs} epochs, {a.nproc} ranks, --amp; host {describe(host)}, {date}",
            rows, COLUMNS, "best_val", stem=stem, keep=2)
    if joined:
        print()
        print(markdown(joined, ENSEMBLE_COLUMNS, "test_track", 2))
    return 0 if all("error" not in r for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
