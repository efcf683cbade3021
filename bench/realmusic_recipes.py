"""Training recipes compared on the real-music development set (issue #21), over seeds.

    .venv/bin/python -m bench.realmusic_recipes --set /work/realmusic                 # tabulate finished runs
    .venv/bin/python -m bench.realmusic_recipes --set /work/realmusic --runs runs-amp2 --train \
        --recipes default,ema999 --seeds 0,1,2 --extra "--nproc 2 --amp --batch-size 16"

The set is bench.realmusic's (SET/list.csv, SET/provenance.csv) sharded into SET/shards with
`make_shards --list SET/list.csv SET/shards --split list`. Runs live in SET/runs/<recipe>-s<seed>/
(train.py's defaults plus the recipe's arguments plus --extra; --runs picks another folder);
--train runs the missing ones one after another under nice 19, otherwise only finished runs are read.

Per run: the selected epoch's validation accuracy (best val, the selection metric), test accuracy
of that checkpoint per excerpt (track), per window and per **recording** (the mean of a recording's
excerpt probabilities: the test split holds few independent recordings, and excerpts of one
recording are not independent), how steady the validation curve is (mean absolute change of val
accuracy between neighbouring epochs, and the largest after epoch 5), and training minutes (the
epochs' time, without validation). Per recipe: mean and sample standard deviation over seeds, the
training FLOPs per 3 s crop (forward + backward, torch's flop counter) and, from a bench.hard_set
JSON (--hard), the synthetic hard set's test accuracy for the same recipe. Output: the table on stdout, JSON and
the validation curves (a panel per seed) as PNG under --out.

A recipe without --ema (`default`, `mixup`, ...) needs no run of its own where its `--ema 0.999
--compare-raw` twin has run with the seed (`ema999`, `ema999-mixup`, ...: RAW_TWIN): that run's raw
weights follow exactly the trajectory of a run without --ema (tested in tests/test_train_resume.py),
so its raw columns and best-raw.pt are the plain recipe's figures.

Against `default`, each recipe also gets a paired difference on the same test excerpts: mean over the
seeds both have of (recipe - default) excerpt accuracy, with a 95% bootstrap interval that resamples
the test split's recordings (the unit that is independent; seeds stay paired). An interval that
spans 0 means the test split cannot tell the two apart.

Test excerpts are evaluated again here (training.evaluate with the product's window averaging, in
the run's precision) to get per-track probabilities, cached in RUNS/.test-predictions/; the excerpt
accuracy is compared with the run's metrics.json (equal for fp32 runs; a bf16 pass in one process
may tip an excerpt that the run's ranks did not, which is logged).
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import shlex
import statistics
import subprocess
import sys
from collections import defaultdict
from typing import Any, Callable

from bench import RESULTS, ROOT, pin_ema
from bench.harness import logger
from bench.host import describe, host_info, today
from bench.tables import Col, num, publish, text

# recipe -> train.py arguments on top of its defaults (4 crops, 30 epochs, fp32, no augmentation).
# "default" names the recipe every comparison here is drawn against, as the results files do: the baseline
# CNN without an average, train.py's default until 2026-12-07 (now base-bandnorm-ema999's). Recipes pin
# --model, and train_command --ema 0 where they name none (pin_ema), so each keeps meaning what was measured.
BASELINE = ["--model", "baseline"]
RECIPES: dict[str, list[str]] = {
    "default": [*BASELINE],
    "ema999": [*BASELINE, "--ema", "0.999", "--compare-raw"],
    "specaug-gain": [*BASELINE, "--specaugment", "--gain-db", "6"],
    "ema999-specaug-gain": [*BASELINE, "--ema", "0.999", "--compare-raw", "--specaugment", "--gain-db", "6"],
    "mixup": [*BASELINE, "--mixup", "0.2"],
    "ema999-mixup": [*BASELINE, "--ema", "0.999", "--compare-raw", "--mixup", "0.2"],
    "speed": [*BASELINE, "--speed", "0.1"],
    "ema999-speed": [*BASELINE, "--ema", "0.999", "--compare-raw", "--speed", "0.1"],
    "eq": [*BASELINE, "--eq-db", "6"],
    "ema999-eq": [*BASELINE, "--ema", "0.999", "--compare-raw", "--eq-db", "6"],
    "resnet": ["--model", "resnet"],
    "resnet-ema999": ["--model", "resnet", "--ema", "0.999", "--compare-raw"],
    "bandnorm": ["--model", "baseline-bandnorm"],
    "bandnorm-ema999": ["--model", "baseline-bandnorm", "--ema", "0.999", "--compare-raw"],
    # ensembles trained in one run (model/ensemble.py), each member its own loss: bandnorm + resnet (the
    # real-music recipe), and the baseline with them
    "pair": ["--model", "baseline-bandnorm+resnet"],
    "pair-ema999": ["--model", "baseline-bandnorm+resnet", "--ema", "0.999", "--compare-raw"],
    "trio-ema999": ["--model", "baseline+baseline-bandnorm+resnet", "--ema", "0.999", "--compare-raw"],
    "base-bandnorm": ["--model", "baseline+baseline-bandnorm"],
    "base-bandnorm-ema999": ["--model", "baseline+baseline-bandnorm", "--ema", "0.999", "--compare-raw"],
}


def _without_ema(args: list[str]) -> list[str]:
    i = args.index("--ema")
    return [a for a in args[:i] + args[i + 2:] if a != "--compare-raw"]


# recipe -> the --ema --compare-raw recipe whose raw weights are its run: they follow exactly the
# trajectory of a run without --ema (tested in tests/test_train_resume.py), so one run gives both
RAW_TWIN: dict[str, str] = {plain: ema for ema, a in RECIPES.items() if "--compare-raw" in a
                            for plain, b in RECIPES.items() if b == _without_ema(a)}
# plain recipe -> the bench.hard_set config (--ema --compare-raw) that ran it: its raw-weight columns are
# the plain recipe's, its EMA columns the twin's
_HARD_CONFIG = {"default": "baseline-c4-ema", "specaug-gain": "baseline-c4-ema-specaug-gain",
                "resnet": "resnet-c4-ema", "bandnorm": "bandnorm-c4-ema", "pair": "pair-c4-ema",
                "base-bandnorm": "base-bandnorm-c4-ema"}
# recipe -> (bench.hard_set config, read its raw-weight columns?)
HARD = {**{plain: (c, True) for plain, c in _HARD_CONFIG.items()},
        **{RAW_TWIN[plain]: (c, False) for plain, c in _HARD_CONFIG.items()}}
log = logger("realmusic_recipes")


def model_of(recipe: str) -> str:
    args = RECIPES[recipe]
    return args[args.index("--model") + 1]  # every recipe names its model


def steadiness(curve: list[float], epochs: list[int] | None = None) -> dict[str, float]:
    """Mean absolute change between neighbouring validated epochs (`epochs`, default 1, 2, ...; a run
    with --val-every validates some), and the largest change from epoch 5 on."""
    epochs = epochs or list(range(1, len(curve) + 1))
    d = [(e, abs(b - a)) for e, a, b in zip(epochs, curve, curve[1:])]
    return {"mean_change": statistics.fmean(x for _, x in d) if d else 0.0,
            "max_change_after_5": max((x for e, x in d if e >= 5), default=0.0)}


def flops_per_crop(model: str, n_classes: int, spec) -> float:
    """Training FLOPs (forward + backward) of one crop of spec.clip_seconds, in GFLOP."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode
    from model import build_model
    net = build_model(model, n_classes).train()
    x = torch.randn(2, 1, spec.n_mels, spec.clip_frames)
    with FlopCounterMode(display=False) as fc:
        net(x).sum().backward()
    return fc.get_total_flops() / 2 / 1e9


def recording_of(provenance: str) -> dict[str, tuple[str, str]]:
    """WAV path (list.csv's) -> (package, group): the unit a split keeps together."""
    with open(provenance, newline="", encoding="utf-8") as f:
        return {r["path"]: (r["package"], r["group"]) for r in csv.DictReader(f)}


def split_predictions(checkpoint_path: str, shards: str, manifest, bf16: bool, split: str = "test",
                      raw: bool = False) -> tuple[list[dict[str, Any]], float]:
    """Every excerpt of `split`: its label and class probabilities under the checkpoint's inference
    weights (the EMA's where kept, or the raw ones with `raw`), in bf16 autocast if the run evaluated
    so; and the excerpt accuracy of that pass."""
    import torch
    from inference.classifier import load_classifier
    from training.amp import Amp
    from training.distributed import DistEnv
    from training.evaluate import TrackLog, evaluate
    net, classes, spec = load_classifier(checkpoint_path, raw=raw)
    env = DistEnv(0, 1, 0, torch.device("cpu"))
    loader = eval_loader(shards, split, spec, manifest)
    log_ = TrackLog()
    result = evaluate(net, loader, spec, env, Amp.create(env.device, bf16), len(classes), tracks=log_)
    source = {s.uid: s.source for s in manifest.samples}
    rows = []
    for r in log_.rows:
        p = torch.softmax(torch.as_tensor(r["logits"], dtype=torch.float64), 0).tolist()
        rows.append({"source": source[int(r["uid"])], "label": int(r["label"]), "probs": p})
    return rows, result.track_acc


def eval_loader(shards: str, split: str, spec, manifest):
    """One CPU process's loader of `split`'s whole excerpts, in order (a bench's evaluation pass)."""
    import torch
    from loading.loader import DaliLoader
    return DaliLoader(shards, split, spec, 8, train=False, rank=0, world_size=1, device=torch.device("cpu"),
                      num_threads=os.cpu_count() or 1, manifest=manifest, log=log)


def top(probs: list[float]) -> int:
    """The predicted class: the index of the largest probability."""
    return max(range(len(probs)), key=probs.__getitem__)


def check_against_run(where: str, split: str, again: float, logged: float) -> None:
    """Warn where evaluating a checkpoint again gives another accuracy than the run logged: fp32 passes
    agree exactly; a bf16 pass in one process can tip an excerpt the run's ranks did not (the figures
    here are then judged from the new pass)."""
    if abs(again - logged) > 1e-9:
        log(f"warning: {where}: {split} accuracy {again:.4f} on evaluating again, {logged:.4f} in metrics.json")


def fresh(cached: str, checkpoint_path: str | list[str]) -> bool:
    """Whether `cached` was written after the checkpoint (every checkpoint of an ensemble) last changed."""
    paths = [checkpoint_path] if isinstance(checkpoint_path, str) else checkpoint_path
    return os.path.exists(cached) and os.path.getmtime(cached) > max(os.path.getmtime(p) for p in paths)


def cached_predictions(cached: str, checkpoint_path: str | list[str], *args: Any, **kwargs: Any) -> dict[str, Any]:
    """split_predictions' {"rows", "track_acc"}, kept in `cached` (JSON) until the checkpoint (or any
    of an ensemble's) changes."""
    if fresh(cached, checkpoint_path):
        with open(cached, encoding="utf-8") as f:
            return json.load(f)
    rows, acc = split_predictions(checkpoint_path, *args, **kwargs)
    from core.atomic import atomic_write
    atomic_write(cached, json.dumps({"rows": rows, "track_acc": acc}).encode())
    return {"rows": rows, "track_acc": acc}


def recording_verdicts(rows: list[dict], recordings: dict[str, tuple[str, str]]) -> dict[tuple[str, str], tuple[int, int]]:
    """Recording -> (label, predicted class), the prediction the argmax of its excerpts' mean probabilities."""
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for r in rows:
        groups[recordings[r["source"]]].append(r)
    out = {}
    for rec, members in groups.items():
        labels = {m["label"] for m in members}
        assert len(labels) == 1, f"a recording with two labels: {members[0]['source']}"
        mean = [statistics.fmean(m["probs"][c] for m in members) for c in range(len(members[0]["probs"]))]
        out[rec] = (labels.pop(), top(mean))
    return out


def recording_accuracy(rows: list[dict], recordings: dict[str, tuple[str, str]]) -> tuple[float, int]:
    """Accuracy over recordings (argmax of the mean excerpt probabilities) and their number."""
    v = recording_verdicts(rows, recordings)
    return sum(label == pred for label, pred in v.values()) / len(v), len(v)


def run_name(recipe: str, seed: int, fold: int | None = None) -> str:
    return f"{recipe}-s{seed}" if fold is None else f"{recipe}-f{fold}-s{seed}"


def run_dir_of(runs: str, recipe: str, seed: int, fold: int | None = None) -> tuple[str, bool] | None:
    """(run folder, read its raw columns?) for a finished run of the recipe and seed (and fold), else None."""
    own = os.path.join(runs, run_name(recipe, seed, fold))
    if os.path.exists(os.path.join(own, "metrics.json")):
        return own, False
    if recipe in RAW_TWIN:
        twin = os.path.join(runs, run_name(RAW_TWIN[recipe], seed, fold))
        if os.path.exists(os.path.join(twin, "best-raw.pt")) and os.path.exists(os.path.join(twin, "metrics.json")):
            return twin, True
    return None


def read_run(run_dir: str, raw: bool, shards: str, manifest, recordings, cache: str) -> dict[str, Any]:
    with open(os.path.join(run_dir, "metrics.json"), encoding="utf-8") as f:
        m = json.load(f)
    from training.report import val_curve
    h = m["history"]
    suffix = "_raw" if raw else ""
    epochs, curve = val_curve(h, "val_track_acc" + suffix)
    test = m["test" + suffix]
    ckpt = os.path.join(run_dir, "best-raw.pt" if raw else "best.pt")
    cached = os.path.join(cache, f"{os.path.basename(run_dir)}{suffix}-test.json")
    tracks = cached_predictions(cached, ckpt, shards, manifest, bf16=m.get("precision") == "bf16")
    check_against_run(ckpt, "test", tracks["track_acc"], test["track_acc"])
    rec_acc, n_rec = recording_accuracy(tracks["rows"], recordings)
    return {"best_val": max(curve), "best_epoch": m["best_epoch" + suffix], "test_track": test["track_acc"],
            "test_window": test["segment_acc"], "test_recording": rec_acc, "recordings": n_rec,
            **steadiness(curve, epochs), "epochs": len(h), "val_curve": curve, "val_curve_epochs": epochs,
            "train_min": sum(e["epoch_seconds"] for e in h) / 60,
            "samples_per_s": statistics.median(e["samples_per_s"] for e in h),
            "run_dir": run_dir, "raw_columns": raw, "rows": tracks["rows"]}


def train_command(recipe: str, seed: int, run_dir: str, shards: str, extra: list[str]) -> list[str]:
    """train.py for the recipe and seed into run_dir under nice 19; a run stopped part-way (a session's
    end) continues from its last checkpoint (train.py's resume is exact)."""
    started = any(os.path.exists(os.path.join(run_dir, f)) for f in ("last.pt", "prev.pt"))
    return ["nice", "-n", "19", sys.executable, os.path.join(ROOT, "train.py"), "--shards", shards,
            "--run-dir", run_dir, "--seed", str(seed), *pin_ema(RECIPES[recipe]), *extra,
            *(["--resume"] if started else [])]


def train_missing(recipe: str, seed: int, run_dir: str, shards: str, extra: list[str]) -> None:
    """Runs train_command (its output appended to run_dir.log)."""
    cmd = train_command(recipe, seed, run_dir, shards, extra)
    log(f"{recipe} seed {seed}: {' '.join(cmd[4:])}")
    os.makedirs(os.path.dirname(run_dir), exist_ok=True)
    with open(run_dir + ".log", "a", encoding="utf-8") as out:
        p = subprocess.run(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    if p.returncode:
        raise SystemExit(f"{recipe} seed {seed}: train.py exited {p.returncode}; see {run_dir}.log")


def spread(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(values), "sd": statistics.stdev(values) if len(values) > 1 else 0.0,
            "min": min(values), "max": max(values), "n": len(values)}


def hard_figures(paths: str | None, recipe: str) -> dict | None:
    """The synthetic hard set's figures for the recipe from bench.hard_set JSONs (comma-separated)."""
    if not paths or recipe not in HARD:
        return None
    config, raw = HARD[recipe]
    rows = []
    for path in paths.split(","):
        with open(path, encoding="utf-8") as f:
            rows += [r for r in json.load(f)["rows"] if r.get("config") == config and "error" not in r]
    if not rows:
        return None
    key = "_raw" if raw else ""
    return {"config": config + (" (raw weights)" if raw else ""),
            "test": spread([r["test_track" + key] for r in rows]), "val": spread([r["best_val" + key] for r in rows])}


def paired_difference(recipe_runs: dict[int, list[dict]], default_runs: dict[int, list[dict]],
                      recordings: dict[str, tuple[str, str]], draws: int = 10000) -> dict[str, Any] | None:
    """Excerpt accuracy of a recipe minus the default's on the same test excerpts, averaged over the
    seeds both ran, with a 95% bootstrap interval over recordings (each draw resamples the recordings
    with replacement, weighting each by its excerpts; fixed generator seed, so reruns agree)."""
    import numpy as np
    seeds = sorted(set(recipe_runs) & set(default_runs))
    if not seeds:
        return None
    groups = sorted({recordings[r["source"]] for r in default_runs[seeds[0]]})
    index = {g: i for i, g in enumerate(groups)}

    def right_per_group(rows: list[dict]) -> np.ndarray:
        c = np.zeros(len(groups))
        for r in rows:
            c[index[recordings[r["source"]]]] += int(np.argmax(r["probs"])) == r["label"]
        return c

    n = np.zeros(len(groups))
    for r in default_runs[seeds[0]]:
        n[index[recordings[r["source"]]]] += 1
    delta = np.stack([right_per_group(recipe_runs[s]) - right_per_group(default_runs[s]) for s in seeds]).mean(0)
    w = np.random.default_rng(0).multinomial(len(groups), np.full(len(groups), 1 / len(groups)), size=draws)
    boot = (w @ delta) / (w @ n)
    lo, hi = np.percentile(boot, [2.5, 97.5])
    return {"diff": float(delta.sum() / n.sum()), "lo": float(lo), "hi": float(hi), "seeds": seeds,
            "recordings": len(groups), "draws": draws}


def plot_curves(runs: list[dict], path: str, title: str, *, curve: str = "val_curve",
                label: Callable[[dict], str] = lambda r: f"{r['recipe']} (test {r['test_track']:.3f})",
                ylabel: str = "validation accuracy (excerpts)", mark_selected: bool = True) -> None:
    """Accuracy by epoch (r[curve]): a panel per seed, a line per recipe, its selected epoch circled."""
    from analysis.plots import pyplot, save_figure
    plt = pyplot()
    seeds = sorted({r["seed"] for r in runs})
    fig, axes = plt.subplots(1, len(seeds), figsize=(5 * len(seeds), 3.8), sharey=True, squeeze=False)
    for ax, seed in zip(axes[0], seeds):
        for r in (r for r in runs if r["seed"] == seed):
            line, = ax.plot(r.get(curve + "_epochs") or range(1, len(r[curve]) + 1), r[curve], ".-", label=label(r))
            if mark_selected:
                ax.plot([r["best_epoch"]], [r["best_val"]], "o", ms=9, mfc="none", color=line.get_color())
        ax.set_title(f"seed {seed}")
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    axes[0][0].set_ylabel(ylabel)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)


def pm(s: dict) -> str:
    return f"{s['mean']:.3f} ± {s['sd']:.3f} (n={s['n']})"


def interval_cell(d: dict | None) -> str:
    """A paired difference with its interval, e.g. +0.012 [-0.030, +0.051]; '–' when there is none."""
    return f"{d['diff']:+.3f} [{d['lo']:+.3f}, {d['hi']:+.3f}]" if d else "–"


def vs_default_cell(r: dict) -> str:
    return interval_cell(r.get("vs_default"))


COLUMNS = [
    Col("recipe", text("recipe")),
    Col("real test, excerpts", lambda r: pm(r["test_track"])),
    Col("real test, recordings", lambda r: pm(r["test_recording"])),
    Col("Δ test vs default [95% over recordings]", vs_default_cell),
    Col("real val (selected epoch)", lambda r: pm(r["best_val"])),
    Col("val change per epoch (mean, max after 5)",
        lambda r: f"{r['mean_change']['mean']:.3f}, {r['max_change_after_5']['mean']:.3f}"),
    Col("hard set test", lambda r: pm(r["hard"]["test"]) if r.get("hard") else "–"),
    Col("GFLOP per crop", num("gflops", ".2f")),
    Col("train min per run", lambda r: f"{r['train_min']['mean']:.0f}"),
]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--set", required=True, help="bench.realmusic's output folder (with shards/ made from it)")
    ap.add_argument("--recipes", default="default,ema999", help="comma-separated: " + ", ".join(RECIPES))
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--train", action="store_true", help="train missing runs (one at a time, nice 19)")
    ap.add_argument("--runs", default="runs", help="the runs' folder inside --set (default: runs)")
    ap.add_argument("--extra", default="",
                    help="train.py arguments for every run trained here: how it executes (e.g. '--nproc 2 --amp "
                         "--batch-size 16': 2 ranks of 16 crops, the default's global batch of 32, bf16) or a "
                         "smoke test's settings; recorded in the JSON")
    ap.add_argument("--hard", default=None,
                    help="bench.hard_set JSONs (comma-separated) with the recipes' configs (HARD: baseline-c4-ema, ...)")
    ap.add_argument("--out", default=RESULTS)
    a = ap.parse_args(argv)
    names = [r.strip() for r in a.recipes.split(",") if r.strip()]
    unknown = [r for r in names if r not in RECIPES]
    if unknown:
        ap.error(f"unknown recipe(s) {', '.join(unknown)}; choose from {', '.join(RECIPES)}")
    seeds = [int(s) for s in a.seeds.split(",")]
    shards, runs = os.path.join(a.set, "shards"), os.path.join(a.set, a.runs)
    from storage.folder import read_manifest
    manifest = read_manifest(shards)
    recordings = recording_of(os.path.join(a.set, "provenance.csv"))
    cache = os.path.join(runs, ".test-predictions")  # per run folder: run names repeat across --runs
    os.makedirs(cache, exist_ok=True)

    if a.train:  # --ema twins first: their raw weights give the plain recipe's figures, no run of its own
        for recipe in sorted(names, key=lambda r: r not in RAW_TWIN.values()):
            for seed in seeds:
                if run_dir_of(runs, recipe, seed) is None:
                    train_missing(recipe, seed, os.path.join(runs, run_name(recipe, seed)), shards,
                                  shlex.split(a.extra))
    per_run, summary = [], []
    for recipe in names:
        got = []
        for seed in seeds:
            where = run_dir_of(runs, recipe, seed)
            if where is None:
                log(f"{recipe} seed {seed}: no finished run in {runs}")
                continue
            row = {"recipe": recipe, "seed": seed, **read_run(*where, shards, manifest, recordings, cache)}
            per_run.append(row)
            got.append(row)
        if not got:
            continue
        summary.append({"recipe": recipe, "args": RECIPES[recipe], "seeds": [r["seed"] for r in got],
                        **{k: spread([r[k] for r in got]) for k in
                           ("test_track", "test_window", "test_recording", "best_val", "mean_change",
                            "max_change_after_5", "train_min")},
                        "gflops": flops_per_crop(model_of(recipe), len(manifest.classes), manifest.spec),
                        "hard": hard_figures(a.hard, recipe)})
    by_seed = {(r["recipe"], r["seed"]): r["rows"] for r in per_run}
    base = {s: by_seed[("default", s)] for s in seeds if ("default", s) in by_seed}
    for row in summary:
        if row["recipe"] != "default" and base:
            mine = {s: by_seed[(row["recipe"], s)] for s in seeds if (row["recipe"], s) in by_seed}
            row["vs_default"] = paired_difference(mine, base, recordings)

    from training.report import write_json
    host, date = host_info(), today()
    os.makedirs(a.out, exist_ok=True)
    stem = os.path.join(a.out, f"realmusic-recipes-{host['kind']}-{date}")
    split = {s: manifest.splits[s].count for s in manifest.split_names}
    stem += "" if a.runs == "runs" else "-" + a.runs
    write_json(stem + ".json", {"benchmark": "realmusic_recipes", "date": date, "host": host, "split": split,
                                "runs_folder": a.runs, "extra_args": a.extra,
                                "classes": manifest.classes, "summary": summary,
                                "runs": [{k: v for k, v in r.items() if k not in ("run_dir", "rows")} | {"run": os.path.basename(r["run_dir"])}
                                         for r in per_run]})
    for r in per_run:
        log(f"{r['recipe']} s{r['seed']}{' (raw of ' + os.path.basename(r['run_dir']) + ')' if r['raw_columns'] else ''}: "
            f"val {r['best_val']:.3f} (epoch {r['best_epoch']}), test {r['test_track']:.3f} excerpts / "
            f"{r['test_recording']:.3f} of {r['recordings']} recordings, val change {r['mean_change']:.3f} "
            f"(max after 5: {r['max_change_after_5']:.3f}), {r['train_min']:.0f} min")
    if per_run:
        plot_curves(per_run, stem + ".png", "real-music set: validation accuracy by epoch (circle: selected epoch)")
        log(f"validation curves: {os.path.relpath(stem + '.png', ROOT)}")
    publish(f"real-music set ({'/'.join(map(str, split.values()))} excerpts), seeds {a.seeds}; host {describe(host)}, {date}",
            summary, COLUMNS, "test_track", stem=stem)
    return 0


if __name__ == "__main__":
    sys.exit(main())
