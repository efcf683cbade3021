"""Denser windows when judging a track: held-out accuracy of finished fold runs (bench.realmusic_folds)
when each excerpt is judged by windows every 1, 1/2, 1/4, ... of a window instead of back to back.

    .venv/bin/python -m bench.eval_windows --set /work/realmusic --folds 3 --runs runs-amp2 \
        --recipe default --seed 0 --hops 1,0.5,0.25

Issue #21 lists "evaluation on more windows per validation track" as a recipe idea. The product judges
a track by the mean logits of back-to-back windows that cover all of it (features.windows), in
evaluation, predict.py and the collection mode alike; overlapping windows would change all three, so
this measures first whether it would pay. Each fold's last-epoch checkpoint (the folds bench's primary
score, the raw weights for a recipe read from its --ema twin) is run once over its held-out fold; every
hop is judged from the same decoded features. Per hop: pooled excerpt and recording accuracy, windows
per excerpt, and against the first hop the excerpts whose verdict changed and the largest and mean
change of a class probability. The first hop should be 1 (the product's way): its accuracy must equal
the folds bench's last-epoch score (checked, as a warning where a bf16 pass tips an excerpt).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
from typing import Any

from bench import RESULTS
from bench.harness import logger
from bench.host import describe, host_info, today
from bench.realmusic_folds import excerpt_accuracy, fold_lists, shards_dir
from bench.realmusic_recipes import RECIPES, check_against_run, eval_loader, recording_accuracy, recording_of, run_dir_of, top
from bench.tables import Col, text

log = logger("eval_windows")


def judge(checkpoint: str, shards: str, manifest, raw: bool, bf16: bool, hops: list[float],
          split: str = "val") -> dict[float, list[dict[str, Any]]]:
    """hop (fraction of a window) -> every `split` excerpt's source, label, class probabilities and
    number of windows, judged by the checkpoint's inference weights (raw ones with `raw`)."""
    import torch
    from features.windows import track_logits
    from inference.classifier import load_classifier
    from training.amp import Amp
    net, _classes, spec = load_classifier(checkpoint, raw=raw)
    amp = Amp.create(torch.device("cpu"), bf16)
    loader = eval_loader(shards, split, spec, manifest)
    source = {s.uid: s.source for s in manifest.samples}
    out: dict[float, list[dict[str, Any]]] = {h: [] for h in hops}
    with torch.no_grad():
        for b in loader:
            keep = b.counted
            if not keep.any():
                continue
            x, n = b.x[keep], b.n_samples[keep]
            for h in hops:
                with amp.autocast():
                    mean, per_track = track_logits(net, x, n, spec, hop_frames=max(1, round(h * spec.clip_frames)))
                for uid, y, logits, w in zip(b.uid[keep].tolist(), b.y[keep].tolist(), mean, per_track):
                    out[h].append({"source": source[uid], "label": int(y), "windows": len(w),
                                   "probs": torch.softmax(logits.double(), 0).tolist()})
    return out


def compare(rows: list[dict], first: list[dict]) -> dict[str, float]:
    """How a hop's verdicts differ from the first hop's on the same excerpts."""
    by = {r["source"]: r for r in first}
    changes = [max(abs(a - b) for a, b in zip(r["probs"], by[r["source"]]["probs"])) for r in rows]
    return {"verdicts_changed": sum(top(r["probs"]) != top(by[r["source"]]["probs"]) for r in rows),
            "prob_change_max": max(changes), "prob_change_mean": statistics.fmean(changes)}


COLUMNS = [
    Col("hop (windows)", lambda r: f"{r['hop']:g}"),
    Col("windows per excerpt", lambda r: f"{r['windows_mean']:.1f}"),
    Col("excerpts", lambda r: f"{r['excerpts_acc']:.3f}"),
    Col("recordings", lambda r: f"{r['recordings_acc']:.3f}"),
    Col("per fold", lambda r: ", ".join(f"{v:.3f}" for v in r["per_fold"])),
    Col("verdicts changed vs first hop", text("verdicts_changed")),
    Col("class probability change: mean, max", lambda r: f"{r['prob_change_mean']:.4f}, {r['prob_change_max']:.4f}"),
]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--set", required=True, help="bench.realmusic's output folder")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--fold-seed", type=int, default=0)
    ap.add_argument("--runs", default="runs", help="the runs' folder inside --set (folds-K/ inside it)")
    ap.add_argument("--recipe", default="default", help="one of: " + ", ".join(RECIPES))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--hops", default="1,0.5,0.25", help="comma-separated hops, in windows; 1 first")
    ap.add_argument("--out", default=RESULTS)
    a = ap.parse_args(argv)
    if a.recipe not in RECIPES:
        ap.error(f"unknown recipe {a.recipe}; choose from {', '.join(RECIPES)}")
    try:
        hops = [float(h) for h in a.hops.split(",")]
    except ValueError:
        ap.error(f"--hops {a.hops}: not a comma-separated list of numbers")
    if not hops or any(not 0 < h <= 1 for h in hops):
        ap.error(f"--hops {a.hops}: each hop must be in (0, 1] windows")
    if not os.path.exists(os.path.join(a.set, "provenance.csv")):
        ap.error(f"{a.set}: no provenance.csv there (build the set with python -m bench.realmusic)")
    runs = os.path.join(a.set, a.runs, f"folds-{a.folds}")
    where = [run_dir_of(runs, a.recipe, a.seed, i) for i in range(a.folds)]
    if None in where:
        ap.error(f"{a.recipe} seed {a.seed}: {where.count(None)} of {a.folds} folds not run in {runs}")
    from storage.folder import read_manifest
    recordings = recording_of(os.path.join(a.set, "provenance.csv"))
    per_fold: list[dict[float, list[dict]]] = []
    for i, (path, (run_dir, raw)) in enumerate(zip(fold_lists(a.set, a.folds, a.fold_seed), where)):
        with open(os.path.join(run_dir, "metrics.json"), encoding="utf-8") as f:
            m = json.load(f)
        shards = shards_dir(path)
        got = judge(os.path.join(run_dir, "last.pt"), shards, read_manifest(shards), raw, m.get("precision") == "bf16", hops)
        check_against_run(f"{run_dir} (last epoch)", "val", excerpt_accuracy(got[hops[0]]),
                          m["history"][-1]["val_track_acc" + ("_raw" if raw else "")])
        log(f"fold {i}: " + ", ".join(f"hop {h:g} {excerpt_accuracy(got[h]):.3f}" for h in hops))
        per_fold.append(got)
    rows = []
    for h in hops:
        pooled = [r for f in per_fold for r in f[h]]
        rows.append({"hop": h, "excerpts": len(pooled), "excerpts_acc": excerpt_accuracy(pooled),
                     "recordings_acc": recording_accuracy(pooled, recordings)[0],
                     "windows_mean": statistics.fmean(r["windows"] for r in pooled),
                     "per_fold": [excerpt_accuracy(f[h]) for f in per_fold],
                     **compare(pooled, [r for f in per_fold for r in f[hops[0]]])})

    from bench.tables import publish
    from training.report import write_json
    host, date = host_info(), today()
    os.makedirs(a.out, exist_ok=True)
    stem = os.path.join(a.out, f"eval-windows-{a.recipe}-s{a.seed}-folds{a.folds}-{host['kind']}-{date}")
    write_json(stem + ".json", {"benchmark": "eval_windows", "date": date, "host": host, "folds": a.folds,
                                "runs_folder": a.runs, "recipe": a.recipe, "seed": a.seed,
                                "runs": [os.path.basename(d) for d, _ in where], "rows": rows})
    publish(f"real-music set, {a.folds} folds, {a.recipe} seed {a.seed}, last epoch: judging an excerpt by denser "
            f"windows; host {describe(host)}, {date}", rows, COLUMNS, "excerpts_acc", stem=stem)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
