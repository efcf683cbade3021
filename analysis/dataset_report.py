"""The dataset report of a labeled shard folder: index.html, PNG figures and report.json in one folder.

What it holds (each a table or a chart, the numbers also in report.json): counts per split x class,
hours, the duration histogram, source formats / sample rates / channels, every reject by reason and
every warning (truncated, clipped); per class the mean log-mel and one example track (its log-mel
and its audio, the WAV exactly as the shards hold it); the PCA of per-track log-mel statistics;
the linear baseline; the leak check. Features come from the DALI graph with the folder's
FeatureSpec (analysis.logmel_stats), so what is explored is what is trained on.
"""
from __future__ import annotations

import os
import time
from collections import Counter
from dataclasses import dataclass
from typing import Callable

import numpy as np

from analysis import leaks
from analysis.baseline import BaselineResult, linear_baseline
from analysis.html import Page
from analysis.logmel_stats import ClassViews, TrackStats, collect
from analysis.pca import PCA, Standardiser
from analysis.plots import mel_image, pyplot, save_figure, scatter_by_class
from core.atomic import atomic_write
from core.shards import AUDIO, UID, UID_DTYPE, Manifest, index_name
from core.text import json_bytes

PCA_COMPONENTS = 10


@dataclass
class Report:
    data: dict                 # what report.json holds
    baseline: BaselineResult
    feature_seconds: float     # the DALI pass over every track: wall time
    feature_cpu_seconds: float  # ... and this process's CPU time (DALI's threads included)


def example_wav(files, manifest: Manifest, uid: int) -> bytes:
    """The WAV member of sample `uid`, read from its tar at the offset its DALI index gives."""
    from loading.stream import parse_index

    sample = next(s for s in manifest.samples if s.uid == uid)
    with open(files.path(index_name(sample.shard)), encoding="ascii", errors="replace") as f:
        text = f.read()
    tar = files.path(sample.shard)
    with open(tar, "rb") as f:
        for members in parse_index(text, files.url(index_name(sample.shard)), os.path.getsize(tar)):
            off, size = members[UID]
            f.seek(off)
            if int(np.frombuffer(f.read(size), UID_DTYPE)[0]) == uid:
                off, size = members[AUDIO]
                f.seek(off)
                return f.read(size)
    raise ValueError(f"{files.url(sample.shard)}: sample {uid} is not in it")


def build(shard_dir: str, manifest: Manifest, out: str, *, progress: Callable[[int], None] | None = None,
          num_threads: int = 2, cache_dir: str | None = None, allow_unverified: bool = False,
          log=print) -> Report:
    """Compute everything and write `out`/index.html, the PNGs, the example WAVs and report.json."""
    from storage.folder import open_files
    from storage.store import redact

    os.makedirs(out, exist_ok=True)
    classes, spec = manifest.classes, manifest.spec
    t0, c0 = time.perf_counter(), time.process_time()
    stats, views = collect(shard_dir, manifest, num_threads=num_threads, cache_dir=cache_dir,
                           allow_unverified=allow_unverified, progress=progress, log=log)
    feature_seconds, feature_cpu = time.perf_counter() - t0, time.process_time() - c0
    by_uid = {s.uid: s for s in manifest.samples}

    train = stats.rows("train")
    z = Standardiser.fit(stats.features[train])(stats.features)
    pca = PCA.fit(z[train], PCA_COMPONENTS)
    scores = pca(z)
    base = linear_baseline(stats, classes)
    near = leaks.near_copies(stats, spec)
    exact = leaks.exact_copies(manifest)

    files = open_files(shard_dir, manifest, cache_dir, None, log, allow_unverified=allow_unverified)
    examples = {}
    for i, c in enumerate(classes):
        if c in views.example_uid:
            name = f"example-{i:02d}.wav"
            atomic_write(os.path.join(out, name), example_wav(files, manifest, views.example_uid[c]))
            examples[c] = name

    data = summary(manifest, redact(shard_dir))
    data.update({
        "feature_seconds": round(feature_seconds, 2), "feature_cpu_seconds": round(feature_cpu, 2),
        "feature_threads": num_threads, "tracks_per_s": round(len(stats.uid) / max(feature_seconds, 1e-9), 1),
        "class_mean_spectrum_db": {c: np.round(m.mean(1), 2).tolist() for c, m in views.mean_logmel.items()},
        "examples": {c: {"uid": views.example_uid[c], "source": by_uid[views.example_uid[c]].source, "wav": w}
                     for c, w in examples.items()},
        "pca": {"standardised_on": "train", "features": f"mean and std of each of {spec.n_mels} mel bands (dB)",
                "explained_variance_ratio": pca.explained_ratio.round(5).tolist(),
                "tracks": [{"uid": int(u), "split": str(s), "label": classes[int(l)], "pc1": round(float(a), 4),
                            "pc2": round(float(b), 4)}
                           for u, s, l, a, b in zip(stats.uid, stats.split, stats.label, scores[:, 0], scores[:, 1])]},
        "baseline": base.to_dict(),
        "leaks": leak_data(near, exact, manifest, by_uid),
    })
    figures(out, manifest, stats, views, scores, pca, near)
    write_page(out, data, manifest, views, examples, base, near)
    atomic_write(os.path.join(out, "report.json"), json_bytes(data, indent=1))
    return Report(data, base, feature_seconds, feature_cpu)


def summary(manifest: Manifest, shown: str) -> dict:
    """The manifest's own figures: counts, hours, durations, sources, rejects, warnings."""
    samples = manifest.samples
    durations = np.array([s.duration for s in samples])
    edges = np.histogram_bin_edges(durations, bins=min(30, max(1, len(durations)))) if len(durations) else [0, 1]
    hist, edges = np.histogram(durations, bins=edges)
    rejects = manifest.get("rejects", [])
    return {
        "folder": shown, "classes": manifest.classes, "feature_spec": manifest.spec.to_dict(),
        "tracks": len(samples), "hours": round(float(durations.sum()) / 3600, 3),
        "counts": {s: dict(manifest.splits[s].per_class) for s in manifest.split_names},
        "seconds": {s: manifest.splits[s].seconds for s in manifest.split_names},
        "durations": {"edges": np.round(edges, 3).tolist(), "counts": hist.tolist(),
                      "min": float(durations.min()) if len(durations) else 0.0,
                      "max": float(durations.max()) if len(durations) else 0.0},
        "source_formats": dict(Counter(s.source_format for s in samples).most_common()),
        "source_rates": {str(k): v for k, v in sorted(Counter(s.source_rate for s in samples).items())},
        "source_channels": {str(k): v for k, v in sorted(Counter(s.source_channels for s in samples).items())},
        "rejects_by_reason": dict(Counter(r["reason"] for r in rejects).most_common()),
        "rejects": rejects,
        "warnings": [{"uid": s.uid, "source": s.source, "split": s.split, "warnings": list(s.warnings)}
                     for s in samples if s.warnings],
        "clipped": [{"uid": s.uid, "source": s.source, "split": s.split} for s in samples if s.clipped],
        "duplicates_dropped_by_make_shards": manifest.get("duplicates", []),
    }


def leak_data(near: leaks.NearPairs, exact: list[dict], manifest: Manifest, by_uid: dict) -> dict:
    q = np.quantile(near.nearest, [0.5, 0.9, 0.99, 1.0]).round(4).tolist() if len(near.nearest) else []
    return {
        "method": (f"candidates: each track's {leaks.CANDIDATES} nearest tracks of each other split by cosine "
                   f"similarity of the level-free band profile (floored {leaks.FLOOR_DB:g} dB below the loudest band, "
                   f"standardised on train); a near copy: loudness envelopes correlating >= the threshold within "
                   f"+-{leaks.MAX_LAG_SECONDS:g} s"),
        "threshold": near.threshold,
        "nearest_candidate_correlation": {"median": q[0], "p90": q[1], "p99": q[2], "max": q[3]} if q else {},
        "near_copies": [{"correlation": round(r, 4), "statistics_cosine": round(c, 4),
                         "a": {"uid": a, "split": by_uid[a].split, "source": by_uid[a].source, "label": by_uid[a].label},
                         "b": {"uid": b, "split": by_uid[b].split, "source": by_uid[b].source, "label": by_uid[b].label}}
                        for a, b, r, c in near.pairs],
        "exact_copies": [{**e, "sources": [by_uid[u].source for u in e["uids"]]} for e in exact],
    }


def figures(out: str, manifest: Manifest, stats: TrackStats, views: ClassViews, scores: np.ndarray, pca: PCA,
            near: leaks.NearPairs) -> None:
    plt = pyplot()
    classes, spec = manifest.classes, manifest.spec
    n = len(classes)
    # counts per class, stacked by split
    fig, ax = plt.subplots(figsize=(max(6, 0.7 * n + 2), 4))
    bottom = np.zeros(n)
    for split in manifest.split_names:
        v = np.array([manifest.splits[split].per_class.get(c, 0) for c in classes])
        ax.bar(range(n), v, bottom=bottom, label=split)
        bottom += v
    ax.set_xticks(range(n), classes, rotation=45, ha="right")
    ax.set_ylabel("tracks")
    ax.set_title("tracks per class and split")
    ax.legend()
    fig.tight_layout()
    save_figure(fig, os.path.join(out, "counts.png"))
    # durations
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.hist([s.duration for s in manifest.samples], bins=30, color="tab:blue")
    ax.set_xlabel("seconds")
    ax.set_ylabel("tracks")
    ax.set_title("track durations")
    fig.tight_layout()
    save_figure(fig, os.path.join(out, "durations.png"))
    # per-class mean log-mel, one colour scale
    shown = [c for c in classes if c in views.mean_logmel]
    if shown:
        cols = min(5, len(shown))
        rows = -(-len(shown) // cols)
        lo = min(float(np.percentile(views.mean_logmel[c], 1)) for c in shown)
        hi = max(float(views.mean_logmel[c].max()) for c in shown)
        fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.6 * rows), squeeze=False)
        for ax, c in zip(axes.flat, shown):
            im = mel_image(ax, views.mean_logmel[c], spec, c, lo, hi)
        for ax in list(axes.flat)[len(shown):]:
            ax.axis("off")
        fig.colorbar(im, ax=axes, shrink=0.8, label="dB")
        save_figure(fig, os.path.join(out, "class_means.png"))
    for i, c in enumerate(classes):
        if c in views.example_logmel:
            fig, ax = plt.subplots(figsize=(4.2, 2.6))
            mel_image(ax, views.example_logmel[c], spec, f"{c}: uid {views.example_uid[c]}")
            fig.tight_layout()
            save_figure(fig, os.path.join(out, f"example-{i:02d}.png"))
    # PCA
    fig, ax = plt.subplots(1, 2, figsize=(13, 5), gridspec_kw={"width_ratios": [3, 2]})
    scatter_by_class(ax[0], scores[:, :2], stats.label, classes,
                     "PCA of log-mel statistics (standardised on train)", stats.split)
    ax[0].set_xlabel(f"PC1 ({pca.explained_ratio[0]:.1%})")
    ax[0].set_ylabel(f"PC2 ({pca.explained_ratio[1]:.1%})" if len(pca.explained_ratio) > 1 else "PC2")
    k = len(pca.explained_ratio)
    ax[1].bar(range(1, k + 1), pca.explained_ratio, color="tab:blue", label="per component")
    ax[1].plot(range(1, k + 1), np.cumsum(pca.explained_ratio), "o-", color="tab:red", label="cumulative")
    ax[1].set_ylim(0, 1.02)
    ax[1].set_xlabel("component")
    ax[1].set_title("explained variance (train)")
    ax[1].legend()
    fig.tight_layout()
    save_figure(fig, os.path.join(out, "pca.png"))
    # leak check: nearest cross-split similarity
    fig, ax = plt.subplots(figsize=(6.5, 3.5))
    ax.hist(near.nearest, bins=50, range=(min(-0.2, float(near.nearest.min(initial=0))), 1.0), color="tab:blue")
    ax.axvline(near.threshold, color="tab:red", linestyle="--", label=f"threshold {near.threshold}")
    ax.set_xlabel("highest envelope correlation with a candidate of another split")
    ax.set_ylabel("tracks")
    ax.set_title("leak check")
    ax.legend()
    fig.tight_layout()
    save_figure(fig, os.path.join(out, "leaks.png"))


def write_page(out: str, data: dict, manifest: Manifest, views: ClassViews, examples: dict[str, str],
               base: BaselineResult, near: leaks.NearPairs) -> None:
    classes = manifest.classes
    splits = manifest.split_names
    page = Page(f"Dataset report: {data['folder']}")
    page.p(f"{data['tracks']} tracks, {data['hours']:.2f} hours, {len(classes)} classes; features: "
           f"{manifest.spec.n_mels} mel bands at {manifest.spec.sample_rate} Hz, computed by the training DALI graph "
           f"({data['feature_seconds']:.1f} s, {data['tracks_per_s']:.1f} tracks/s, {data['feature_cpu_seconds']:.1f} s of CPU time). The numbers are also in report.json.")

    page.h2("Tracks per split and class")
    page.table(["class", *splits, "all"], [[c, *[data["counts"][s].get(c, 0) for s in splits],
                                            sum(data["counts"][s].get(c, 0) for s in splits)] for c in classes]
               + [["all", *[manifest.splits[s].count for s in splits], data["tracks"]],
                  ["hours", *[round(data["seconds"][s] / 3600, 3) for s in splits], data["hours"]]])
    page.image("counts.png", "tracks per class and split")
    page.h2("Durations and sources")
    page.image("durations.png", "duration histogram")
    page.table(["source format", "tracks"], list(data["source_formats"].items()))
    page.table(["source sample rate (Hz)", "tracks"], list(data["source_rates"].items()))
    page.table(["source channels", "tracks"], list(data["source_channels"].items()))

    page.h2("Rejects and warnings")
    if data["rejects"]:
        page.table(["reason", "files"], list(data["rejects_by_reason"].items()))
        page.details(f"all {len(data['rejects'])} rejected files", lambda: page.table(
            ["file", "reason", "message"], [[r["path"], r["reason"], r["message"]] for r in data["rejects"]]))
    else:
        page.p("No file was rejected.")
    if data["warnings"] or data["clipped"]:
        page.table(["track", "split", "warning"],
                   [[w["source"], w["split"], "; ".join(w["warnings"])] for w in data["warnings"]]
                   + [[c["source"], c["split"], "clipped to --max-seconds"] for c in data["clipped"]])
    else:
        page.p("No track carries a warning (truncated) or was clipped.")
    if data["duplicates_dropped_by_make_shards"]:
        page.table(["identical audio (make_shards kept the first, or none under two labels)", "labels"],
                   [[", ".join(d["sources"]), ", ".join(d["labels"])] for d in data["duplicates_dropped_by_make_shards"]])

    page.h2("Classes: mean log-mel and one example each")
    page.p(f"Mean over each class's tracks of the log-mel of their first {10:g} s (dB, one colour scale).", note=True)
    if views.mean_logmel:
        page.image("class_means.png", "mean log-mel per class")
    page.grid(lambda: [page.card(c, f"example-{i:02d}.png" if c in views.example_logmel else None, examples.get(c),
                                 data["examples"][c]["source"] if c in data["examples"] else "")
                       for i, c in enumerate(classes)])

    page.h2("PCA of per-track log-mel statistics")
    ev = data["pca"]["explained_variance_ratio"]
    page.p(f"Each track: the mean and standard deviation over time of each of its {manifest.spec.n_mels} mel bands (dB), "
           f"standardised with the training split's mean and deviation; PCA fitted on the training tracks. "
           f"The first two components explain {sum(ev[:2]):.1%} of the training variance, the first {len(ev)} {sum(ev):.1%}.")
    page.image("pca.png", "PCA scatter and explained variance")

    page.h2("Linear baseline")
    page.p(f"{base.to_dict()['model']}, trained on the training split: the figure a CNN has to beat here.")
    page.table(["split", "tracks", "accuracy"], [[s, base.tracks[s], base.accuracy[s]] for s in base.accuracy])
    page.table(["class", *[f"recall ({s})" for s in base.recall]],
               [[c, *[base.recall[s][c] for s in base.recall]] for c in classes])

    page.h2("Leak check")
    lk = data["leaks"]
    page.p(f"Near copies: for each track, its {leaks.CANDIDATES} most similar tracks of each other split by their "
           f"level-free spectral profile (each band's mean dB relative to the loudest band, floored {leaks.FLOOR_DB:g} dB "
           "below it, standardised on train) are compared in time: a pair whose loudness envelopes correlate at "
           f">= {near.threshold} (within +-{leaks.MAX_LAG_SECONDS:g} s) is listed. The threshold was set from measured "
           "distributions: different tracks stay below it, copies re-encoded to OGG or FLAC with a gain change lie "
           "above (README, Dataset report). Exact copies: the same decoded PCM (sha256) in two splits.")
    page.image("leaks.png", "nearest cross-split similarity")
    if lk["near_copies"]:
        page.table(["envelope correlation", "statistics cosine", "track", "split", "class", "near copy", "split",
                    "class"],
                   [[p["correlation"], p["statistics_cosine"], p["a"]["source"], p["a"]["split"], p["a"]["label"], p["b"]["source"],
                     p["b"]["split"], p["b"]["label"]] for p in lk["near_copies"]])
    else:
        page.p(f"No cross-split pair reaches {near.threshold} (highest: {lk['nearest_candidate_correlation'].get('max', '-')}).")
    if lk["exact_copies"]:
        page.table(["PCM sha256", "tracks", "splits"],
                   [[e["pcm_sha256"][:16], ", ".join(e["sources"]), ", ".join(e["splits"])] for e in lk["exact_copies"]])
    else:
        page.p("No exact copy (same PCM sha256) lies in two splits.")

    page.h2("FeatureSpec")
    page.kv(data["feature_spec"])
    page.write(os.path.join(out, "index.html"))
