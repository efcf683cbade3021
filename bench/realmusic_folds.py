"""Recipes compared by group k-fold cross-validation on the real-music set (issue #21).

    .venv/bin/python -m bench.realmusic_folds --set /work/realmusic --folds 5          # tabulate finished runs
    .venv/bin/python -m bench.realmusic_folds --set /work/realmusic --folds 5 --train \
        --recipes default,ema999 --seeds 0 --extra "--nproc 2 --amp --batch-size 16 --no-tensorboard"

Why: the set's fixed test split holds 16 recordings, so one recording moves its accuracy by up to
0.09 and no recipe difference smaller than that can show (bench/NOTES.md, 2026-12-06). Here every
train and val recording of the set (71 groups) is held out once, by a model that never trained on it.
The test split stays out of it entirely: recipes are chosen on these folds, and tested once.

Folds: each class's recording groups (provenance.csv's package and group: variants and remixes of a
recording stay together) are dealt into K folds, the groups with the most excerpts first (a hashed
order among equals, --fold-seed), each to the fold holding fewest excerpts of that class so far.
Fold i is the val split, the other folds train: SET/folds-K/fold-i/list.csv, sharded with make_shards
into SET/folds-K/fold-i/shards when missing. Runs: SET/RUNS/folds-K/<recipe>-f<i>-s<seed>/ (train.py's
defaults plus the recipe's arguments plus --extra; a recipe without --ema is read from its
`--ema --compare-raw` twin's raw weights where that ran, as in bench.realmusic_recipes).

Scores per recipe and seed, pooled over the K held-out folds (each excerpt predicted once):
- **last epoch** (the primary score): the last epoch's weights, no selection, so a noisy validation
  curve earns nothing from its peaks; per excerpt and per recording (mean excerpt probabilities).
- **selected epoch**: best.pt (best-raw.pt), chosen on that same fold, hence optimistic.
- **the pooled curve**: held-out accuracy by epoch over all folds (each run's validation history,
  weighted by its fold's excerpts) and how steady it is (mean change between epochs, the largest
  after epoch 5; and the per-fold curves' mean change): 300 excerpts per point instead of 75. PNG.
Against `default`: the paired difference of the last-epoch excerpt accuracy on the same excerpts,
averaged over the seeds both ran, with a 95% bootstrap interval over recordings. Per recipe: mean ±
sample sd over seeds, the per-fold spread, training minutes per fold. Output: table on stdout, JSON
under --out. Predictions are cached in SET/RUNS/folds-K/.val-predictions/.
--ensembles default+resnet,...: recipes whose held-out probabilities are combined excerpt by excerpt
by predict.py's ensemble rule (per seed; `default@0+default@1+default@2` combines given seeds, the
control for a mixed ensemble), scored the same way (last epoch, paired difference against the
default) as a lead for a recipe that trains several models; `--versus default@0+default@1+default@2`
also scores each against that control. The JSON also lists the recordings at least half of the
tabulated runs missed, and keeps every run's held-out last-epoch probabilities (`held_out`), so
`--recorded earlier.json` brings an earlier session's runs (recipe and seed not found under --runs)
back into the table, the paired differences and the ensembles without their checkpoints; a recorded
run from before `held_out` was kept joins the table only, and a recipe whose default has no held-out
rows is compared by the difference of means, in units of the default's seed spread.
"""
from __future__ import annotations

import argparse
import csv
import functools
import hashlib
import io
import json
import os
import shlex
import statistics
import sys
from collections import defaultdict
from typing import Any

from bench import RESULTS
from bench.harness import logger
from bench.host import describe, host_info, today
from bench.realmusic_recipes import (RAW_TWIN, RECIPES, cached_predictions, check_against_run, interval_cell, paired_difference, plot_curves, pm,
                                     recording_accuracy, recording_of, recording_verdicts, run_dir_of, run_name, spread, steadiness,
                                     top, train_missing, vs_default_cell)
from bench.tables import Col, text

Group = tuple[str, str]  # (label, recording group)
log = logger("realmusic_folds")


def assign_folds(excerpts: dict[Group, int], k: int, seed: int = 0) -> dict[Group, int]:
    """(label, group) -> fold in 0..k-1, balanced per class by excerpts (see the module docstring)."""
    def order(g: Group) -> tuple[int, str, Group]:
        digest = hashlib.sha1(f"{seed}\0{g[0]}\0{g[1]}".encode("utf-8", "surrogateescape")).hexdigest()
        return -excerpts[g], digest, g
    fold: dict[Group, int] = {}
    load: dict[str, list[int]] = defaultdict(lambda: [0] * k)
    for g in sorted(excerpts, key=order):
        f = min(range(k), key=lambda i: (load[g[0]][i], i))
        fold[g] = f
        load[g[0]][f] += excerpts[g]
    return fold


def fold_lists(set_dir: str, k: int, seed: int = 0) -> list[str]:
    """The K list files (path,label,split rows of list.csv's train and val excerpts; test left out),
    written (deterministic bytes); returns their paths."""
    with open(os.path.join(set_dir, "provenance.csv"), newline="", encoding="utf-8") as f:
        rows = [r for r in csv.DictReader(f) if r["split"] in ("train", "val")]
    groups = {r["path"]: (r["label"], r["package"] + "/" + r["group"]) for r in rows}
    excerpts: dict[Group, int] = defaultdict(int)
    for g in groups.values():
        excerpts[g] += 1
    fold = assign_folds(excerpts, k, seed)
    for label in sorted({g[0] for g in excerpts}):
        n = len({g for g in excerpts if g[0] == label})
        if n < k:
            log(f"{label}: {n} recording groups for {k} folds: {k - n} fold(s) validate none of it")
    from core.atomic import atomic_write
    paths = []
    for i in range(k):
        out = io.StringIO()
        w = csv.writer(out, lineterminator="\n")
        w.writerow(["path", "label", "split"])
        for r in sorted(rows, key=lambda r: r["path"]):
            w.writerow([r["path"], r["label"], "val" if fold[groups[r["path"]]] == i else "train"])
        path = os.path.join(set_dir, f"folds-{k}", f"fold-{i}", "list.csv")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        atomic_write(path, out.getvalue().encode())  # the shards are remade only when its bytes change
        paths.append(path)
    return paths


def shards_dir(list_path: str) -> str:
    return os.path.join(os.path.dirname(list_path), "shards")


def fold_shards(set_dir: str, list_path: str) -> None:
    """The fold's shards beside its list (shards_dir), made (paths relative to the set) unless they
    were made from it."""
    out = shards_dir(list_path)
    with open(list_path, "rb") as f:
        want = hashlib.sha256(f.read()).hexdigest()
    manifest = os.path.join(out, "manifest.json")
    if os.path.exists(manifest):
        with open(manifest, encoding="utf-8") as f:
            if json.load(f).get("options", {}).get("list_sha256") == want:
                return
    from preprocess.make_shards import make_shards
    log(f"sharding {os.path.relpath(list_path, set_dir)}")
    make_shards(set_dir, out, list_file=list_path, split="list", progress=False)


def read_fold(run_dir: str, raw: bool, shards: str, manifest, cache: str) -> dict[str, Any]:
    """A fold run's held-out predictions at its last and its selected epoch, and its history's figures."""
    from training.report import val_curve
    with open(os.path.join(run_dir, "metrics.json"), encoding="utf-8") as f:
        m = json.load(f)
    suffix = "_raw" if raw else ""
    bf16 = m.get("precision") == "bf16"
    got = {}
    for which, ckpt in (("last", "last.pt"), ("selected", "best-raw.pt" if raw else "best.pt")):
        path = os.path.join(run_dir, ckpt)
        cached = os.path.join(cache, f"{os.path.basename(run_dir)}{suffix}-{which}.json")
        got[which] = cached_predictions(cached, path, shards, manifest, bf16=bf16, split="val", raw=raw)
    h = m["history"]
    for which, epoch in (("last", len(h)), ("selected", m["best_epoch" + suffix])):
        check_against_run(f"{run_dir} ({which} epoch)", "val", got[which]["track_acc"],
                          h[epoch - 1]["val_track_acc" + suffix])
    return {"last": got["last"]["rows"], "selected": got["selected"]["rows"],
            "curve": val_curve(h, "val_track_acc" + suffix), "epochs": len(h), "best_epoch": m["best_epoch" + suffix],
            "train_min": sum(e["epoch_seconds"] for e in h) / 60,
            # a one-run ensemble (train.py --model a+b): each member alone at the last epoch, from the run's
            # own validation (the raw weights' for the raw columns)
            "members_last": h[-1].get("val_track_acc_raw_members" if raw else "val_track_acc_members")}


def held_out(rows: list[dict]) -> list[dict]:
    """A run's held-out rows as kept in the results JSON: probabilities to 6 decimals (about 40 kB a run)."""
    return [{"source": r["source"], "label": r["label"], "probs": [round(float(v), 6) for v in r["probs"]]}
            for r in rows]


def recorded_runs(paths: list[str], folds: int, fold_seed: int, sources: set[str]) -> list[dict]:
    """The runs of earlier results JSONs of this bench (same --folds and --fold-seed, the same held-out
    excerpts), each a per-seed row as main() builds them; "rows" is None where the file kept no
    held-out predictions (written before they were kept)."""
    out = []
    for path in paths:
        try:
            with open(path, encoding="utf-8") as f:
                doc = json.load(f)
        except (OSError, ValueError) as e:
            raise SystemExit(f"--recorded {path}: cannot read it ({e})")
        if doc.get("benchmark") != "realmusic_folds" or (doc.get("folds"), doc.get("fold_seed")) != (folds, fold_seed):
            raise SystemExit(f"--recorded {path}: not a realmusic_folds result for {folds} folds "
                             f"(fold seed {fold_seed})")
        for r in doc.get("runs", []):
            rows = r.get("held_out")
            if r.get("excerpts") != len(sources) or (rows is not None and {x["source"] for x in rows} != sources):
                raise SystemExit(f"--recorded {path}: {r.get('recipe')} seed {r.get('seed')} held out other "
                                 f"excerpts than this set's folds")
            out.append({**{k: v for k, v in r.items() if k != "held_out"}, "rows": rows, "recorded": path})
    return out


def unpaired_difference(mine: dict, default: dict) -> dict[str, Any]:
    """A recipe's mean last-epoch excerpt accuracy minus the default's, over the seeds each ran, in units
    of the default's seed spread: the issue's rule where no paired comparison is possible."""
    diff = mine["last_excerpts"]["mean"] - default["last_excerpts"]["mean"]
    sd = default["last_excerpts"]["sd"]
    return {"diff": diff, "default_sd": sd, "spreads": diff / sd if sd else None,
            "seeds": mine["seeds"], "default_seeds": default["seeds"]}


def excerpt_accuracy(rows: list[dict]) -> float:
    return sum(top(r["probs"]) == r["label"] for r in rows) / len(rows)


def score(folds: list[dict], recordings: dict[str, tuple[str, str]]) -> dict[str, Any]:
    """One recipe and seed over its K folds: pooled held-out accuracies and the per-fold spread."""
    last = [r for f in folds for r in f["last"]]
    selected = [r for f in folds for r in f["selected"]]
    n = [len(f["last"]) for f in folds]
    by_recording, n_recordings = recording_accuracy(last, recordings)
    epochs = folds[0]["curve"][0]
    if any(f["curve"][0] != epochs for f in folds):
        raise SystemExit("the folds' runs validated different epochs (--val-every): their curves cannot be pooled")
    curve = [sum(a * k for a, k in zip(accs, n)) / sum(n) for accs in zip(*(f["curve"][1] for f in folds))]
    alone = [f["members_last"] for f in folds]
    members = (None if None in alone else
               [sum(a * k for a, k in zip(accs, n)) / sum(n) for accs in zip(*alone)])
    return {"curve": curve, "curve_epochs": epochs, **{"curve_" + k: v for k, v in steadiness(curve, epochs).items()},
            "mean_change_per_fold": statistics.fmean(steadiness(f["curve"][1], epochs)["mean_change"] for f in folds),
            "last_excerpts": excerpt_accuracy(last), "last_recordings": by_recording,
            "selected_excerpts": excerpt_accuracy(selected), "recordings": n_recordings, "excerpts": len(last),
            "per_fold_last": [excerpt_accuracy(f["last"]) for f in folds],
            "best_epochs": [f["best_epoch"] for f in folds],
            "train_min_per_fold": statistics.fmean(f["train_min"] for f in folds), "rows": last,
            "members_last_excerpts": members}


def missed_recordings(per_seed: list[dict], recordings: dict[str, tuple[str, str]], classes: list[str]) -> list[dict]:
    """The recordings that at least half of the tabulated runs (recipe x seed, last epoch) got wrong,
    most-missed first: what no recipe tried has learnt, and how they were called."""
    missed: dict[tuple[str, str], list[str]] = defaultdict(list)
    for r in per_seed:
        for rec, (label, pred) in recording_verdicts(r["rows"], recordings).items():
            if pred != label:
                missed[rec].append(classes[pred])
    n = len(per_seed)
    out = [{"package": rec[0], "group": rec[1], "missed_by": len(called), "of": n,
            "called": max(set(called), key=called.count)}
           for rec, called in missed.items() if 2 * len(called) >= n]
    return sorted(out, key=lambda m: (-m["missed_by"], m["package"], m["group"]))


def average_rows(members: list[list[dict]]) -> list[dict]:
    """One run's rows from several runs' rows on the same excerpts: their class probabilities combined
    by predict.py's ensemble rule (inference.ensemble.combine_probabilities)."""
    from inference.ensemble import combine_probabilities
    by_source = [{r["source"]: r for r in rows} for rows in members]
    if any(set(b) != set(by_source[0]) for b in by_source):
        raise SystemExit("an ensemble's members held out different excerpts: they cannot be averaged")
    return [dict(r, probs=combine_probabilities([b[r["source"]]["probs"] for b in by_source])) for r in members[0]]


def score_ensembles(specs: list[list[str]], per_seed: list[dict], recordings: dict[str, tuple[str, str]],
                    versus: str | None = None) -> list[dict]:
    """Each ensemble (recipes whose held-out last-epoch probabilities are combined), per seed all its
    members ran, or once where every member names its seed (`default@1`: seeds of one recipe combined,
    compared with the default at the first member's seed): pooled accuracies and the paired
    difference against the default. `versus`: one of the specs with pinned seeds (the control, e.g.
    default@0+default@1+default@2); every other ensemble also gets the paired difference against it,
    at each of its own seeds."""
    rows_of = {(r["recipe"], r["seed"]): r["rows"] for r in per_seed}
    base = {seed: rows for (recipe, seed), rows in rows_of.items() if recipe == "default"}
    out = []
    reference = None
    for members in specs:
        pinned = [m.partition("@") for m in members]
        if all(at for _, at, _ in pinned):
            keys = [(name, int(seed)) for name, _, seed in pinned]
            runs = {keys[0][1]: keys} if all(k in rows_of for k in keys) else {}
        else:
            runs = {seed: [(m, seed) for m in members] for (recipe, seed) in rows_of if recipe == members[0]
                    and all((m, seed) in rows_of for m in members)}
        if not runs:
            log(f"ensemble {'+'.join(members)}: not all its members ran (for any one seed)")
            continue
        seeds = sorted(runs)
        avg = {seed: average_rows([rows_of[k] for k in runs[seed]]) for seed in seeds}
        row = {"ensemble": "+".join(members), "seeds": seeds,
               "last_excerpts": statistics.fmean(excerpt_accuracy(avg[s]) for s in seeds),
               "last_recordings": statistics.fmean(recording_accuracy(avg[s], recordings)[0] for s in seeds),
               "vs_default": paired_difference(avg, base, recordings) if base else None}
        log(f"ensemble {row['ensemble']}: last epoch {row['last_excerpts']:.3f} of excerpts, "
            f"{row['last_recordings']:.3f} of recordings; vs default {vs_default_cell(row)}")
        if row["ensemble"] == versus:
            reference = avg[seeds[0]]
        out.append((row, avg))
    for row, avg in out:
        if reference is not None and row["ensemble"] != versus:
            row["vs_reference"] = {"reference": versus, **paired_difference(avg, dict.fromkeys(avg, reference),
                                                                               recordings)}
            log(f"ensemble {row['ensemble']} vs {versus}: {interval_cell(row['vs_reference'])}")
    if versus and reference is None:
        log(f"--versus {versus}: not all its members ran; no ensemble compared with it")
    return [row for row, _ in out]


def vs_default_or_unpaired_cell(r: dict) -> str:
    """The paired difference with its interval, or where the default kept no held-out rows the difference
    of means in the default's seed spreads (e.g. +0.064 unpaired (3.3 default seed sd))."""
    u = r.get("vs_default_unpaired")
    if u is None:
        return vs_default_cell(r)
    return f"{u['diff']:+.3f} unpaired" + (f" ({u['spreads']:.1f} default seed sd)" if u["spreads"] is not None else "")


COLUMNS = [
    Col("recipe", text("recipe")),
    Col("last epoch, excerpts", lambda r: pm(r["last_excerpts"])),
    Col("last epoch, recordings", lambda r: pm(r["last_recordings"])),
    Col("Δ vs default [95% over recordings]", vs_default_or_unpaired_cell),
    Col("selected epoch, excerpts", lambda r: pm(r["selected_excerpts"])),
    Col("val change per epoch: pooled (mean, max after 5), per fold",
        lambda r: f"{r['curve_mean_change']['mean']:.3f}, {r['curve_max_change_after_5']['mean']:.3f}, "
                  f"{r['mean_change_per_fold']['mean']:.3f}"),
    Col("per fold (last epoch)", lambda r: ", ".join(f"{v:.2f}" for v in r["per_fold_last"])),
    Col("train min per fold", lambda r: f"{r['train_min_per_fold']:.0f}"),
]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--set", required=True, help="bench.realmusic's output folder")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--fold-seed", type=int, default=0, help="order among groups of equal size")
    ap.add_argument("--recipes", default="default,ema999", help="comma-separated: " + ", ".join(RECIPES))
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--train", action="store_true", help="shard the folds and train missing runs (nice 19)")
    ap.add_argument("--runs", default="runs", help="the runs' folder inside --set (folds-K/ inside it)")
    ap.add_argument("--extra", default="", help="train.py arguments for every run trained here (recorded)")
    ap.add_argument("--ensembles", default="",
                    help="comma-separated ensembles of tabulated recipes joined by '+' (e.g. default+resnet, per "
                         "seed; default@0+default@1: given seeds): held-out probabilities combined, scored "
                         "against the default")
    ap.add_argument("--versus", default=None, metavar="ENSEMBLE",
                    help="one of --ensembles with every member's seed given (the control, e.g. "
                         "default@0+default@1+default@2): the others are also scored against it")
    ap.add_argument("--recorded", default="", metavar="JSON[,JSON]",
                    help="earlier results of this bench: their runs (of --recipes and --seeds) not found under "
                         "--runs join the table, from their kept held-out predictions")
    ap.add_argument("--out", default=RESULTS)
    a = ap.parse_args(argv)
    names = [r.strip() for r in a.recipes.split(",") if r.strip()]
    unknown = [r for r in names if r not in RECIPES]
    if unknown:
        ap.error(f"unknown recipe(s) {', '.join(unknown)}; choose from {', '.join(RECIPES)}")
    ensembles = [e.split("+") for e in a.ensembles.split(",") if e.strip()]
    outside = sorted({m.partition("@")[0] for e in ensembles for m in e} - set(names))
    if outside or any(len(e) < 2 for e in ensembles):
        ap.error(f"--ensembles: each needs two or more of the --recipes being tabulated ({', '.join(outside) or a.ensembles})")
    bad_seed = [m for e in ensembles for m in e if "@" in m and not m.partition("@")[2].isdigit()]
    half_pinned = ["+".join(e) for e in ensembles if len({"@" in m for m in e}) > 1]
    if bad_seed or half_pinned:
        ap.error(f"--ensembles: a seed is recipe@N, given for every member or none ({', '.join(bad_seed + half_pinned)})")
    if a.versus is not None and (a.versus.split("+") not in ensembles or "@" not in a.versus):
        ap.error(f"--versus {a.versus}: give one of the --ensembles, with every member's seed (recipe@N)")
    if a.folds < 2:
        ap.error("--folds must be at least 2")
    if not os.path.exists(os.path.join(a.set, "provenance.csv")):
        ap.error(f"{a.set}: no provenance.csv there (build the set with python -m bench.realmusic)")
    seeds = [int(s) for s in a.seeds.split(",")]
    lists = fold_lists(a.set, a.folds, a.fold_seed)
    runs = os.path.join(a.set, a.runs, f"folds-{a.folds}")
    cache = os.path.join(runs, ".val-predictions")
    os.makedirs(cache, exist_ok=True)
    recordings = recording_of(os.path.join(a.set, "provenance.csv"))
    shards = [shards_dir(p) for p in lists]
    dev = set()
    for p in lists:
        with open(p, newline="", encoding="utf-8") as f:
            dev |= {r["path"] for r in csv.DictReader(f)}
    recorded = recorded_runs([x for x in a.recorded.split(",") if x.strip()], a.folds, a.fold_seed, dev)

    if a.train:  # --ema twins first: their raw weights are the plain recipe's runs
        for p in lists:
            fold_shards(a.set, p)
        for recipe in sorted(names, key=lambda r: r not in RAW_TWIN.values()):
            for seed in seeds:
                for i in range(a.folds):
                    if run_dir_of(runs, recipe, seed, i) is None:
                        train_missing(recipe, seed, os.path.join(runs, run_name(recipe, seed, i)), shards[i],
                                      shlex.split(a.extra))
    from storage.folder import read_manifest
    manifest_of = functools.cache(read_manifest)  # a fold's manifest, read once for all its runs
    per_seed: list[dict] = []
    summary: list[dict] = []
    for recipe in names:
        got = []
        for seed in seeds:
            where = [run_dir_of(runs, recipe, seed, i) for i in range(a.folds)]
            if None in where:
                log(f"{recipe} seed {seed}: {where.count(None)} of {a.folds} folds not run in {runs}")
                continue
            folds = [read_fold(d, raw, shards[i], manifest_of(shards[i]), cache) for i, (d, raw) in enumerate(where)]
            row = {"recipe": recipe, "seed": seed, "runs": [os.path.basename(d) for d, _ in where],
                   "raw_columns": where[0][1], **score(folds, recordings)}
            log(f"{recipe} s{seed}: last epoch {row['last_excerpts']:.3f} of {row['excerpts']} excerpts, "
                f"{row['last_recordings']:.3f} of {row['recordings']} recordings; selected epoch "
                f"{row['selected_excerpts']:.3f}; per fold {', '.join(f'{v:.2f}' for v in row['per_fold_last'])}"
                + (f"; members alone (the run's validation) {', '.join(f'{v:.3f}' for v in row['members_last_excerpts'])}"
                   if row["members_last_excerpts"] else ""))
            per_seed.append(row)
            got.append(row)
        for row in recorded:
            if row["recipe"] == recipe and row["seed"] in seeds and row["seed"] not in [r["seed"] for r in got]:
                log(f"{recipe} s{row['seed']}: recorded in {row['recorded']}"
                    + ("" if row["rows"] is not None else " (no held-out predictions kept: table only)"))
                per_seed.append(row)
                got.append(row)
        got.sort(key=lambda r: r["seed"])
        if got:
            summary.append({"recipe": recipe, "args": RECIPES[recipe], "seeds": [r["seed"] for r in got],
                            **{k: spread([r[k] for r in got]) for k in
                               ("last_excerpts", "last_recordings", "selected_excerpts", "curve_mean_change",
                                "curve_max_change_after_5", "mean_change_per_fold")},
                            "per_fold_last": [statistics.fmean(v) for v in zip(*(r["per_fold_last"] for r in got))],
                            **({"members_last_excerpts": [spread(list(v)) for v in zip(*(r["members_last_excerpts"]
                                                                                         for r in got))]}
                               if all(r.get("members_last_excerpts") for r in got) else {}),
                            "train_min_per_fold": statistics.fmean(r["train_min_per_fold"] for r in got)})
    base = {r["seed"]: r["rows"] for r in per_seed if r["recipe"] == "default" and r["rows"] is not None}
    default_row = next((row for row in summary if row["recipe"] == "default"), None)
    for row in summary:
        if row["recipe"] == "default":
            continue
        mine = {r["seed"]: r["rows"] for r in per_seed if r["recipe"] == row["recipe"] and r["rows"] is not None}
        if set(mine) & set(base):
            row["vs_default"] = paired_difference(mine, base, recordings)
        elif default_row is not None:
            row["vs_default_unpaired"] = unpaired_difference(row, default_row)
    with_rows = [r for r in per_seed if r["rows"] is not None]

    ensemble_rows = score_ensembles(ensembles, with_rows, recordings, a.versus)
    hard = missed_recordings(with_rows, recordings, manifest_of(shards[0]).classes) if with_rows else []
    if hard:
        log(f"missed by at least half of the {len(with_rows)} runs: " + "; ".join(
            f"{m['package']} {m['group']} ({m['missed_by']}, called {m['called']})" for m in hard))

    from bench.tables import publish
    from training.report import write_json
    host, date = host_info(), today()
    os.makedirs(a.out, exist_ok=True)
    stem = os.path.join(a.out, f"realmusic-folds{a.folds}-{host['kind']}-{date}")
    write_json(stem + ".json", {"benchmark": "realmusic_folds", "date": date, "host": host, "folds": a.folds,
                                "fold_seed": a.fold_seed, "runs_folder": a.runs, "extra_args": a.extra,
                                "summary": summary, "ensembles": ensemble_rows, "missed_recordings": hard,
                                "runs": [{**{k: v for k, v in r.items() if k != "rows"},
                                          **({"held_out": held_out(r["rows"])} if r["rows"] is not None else {})}
                                         for r in per_seed]})
    if per_seed:
        plot_curves(per_seed, stem + ".png", f"real-music set, {a.folds} folds: held-out accuracy by epoch", curve="curve",
                    label=lambda r: f"{r['recipe']} (last {r['curve'][-1]:.3f})", mark_selected=False,
                    ylabel="held-out accuracy, all folds (excerpts)")
    publish(f"real-music set, {a.folds}-fold cross-validation over train+val recordings, seeds {a.seeds}; "
            f"host {describe(host)}, {date}", summary, COLUMNS, "last_excerpts", stem=stem)
    return 0


if __name__ == "__main__":
    sys.exit(main())
