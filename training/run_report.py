"""report.html of a finished run (rank 0, at the end of train.py): one page a person reads.

Curves and the confusion matrix (the PNGs train.py already writes), per-class precision / recall /
F1, throughput and data wait per epoch, the run's arguments, FeatureSpec and environment, the test
tracks the model gets most wrong with their top-3, and a PCA of the test tracks' penultimate-layer
embeddings beside a PCA of their raw log-mel statistics: how much the network separated what the
statistics did not. Both PCAs are fitted on the test tracks (standardised on them), so the two
pictures show the same tracks in the same way; the dataset report (preprocess/explore.py) has the
statistics' PCA fitted on the training split.
"""
from __future__ import annotations

import os
import platform
import sys
from typing import Any

import numpy as np

from analysis.html import Page
from analysis.pca import PCA, Standardiser
from analysis.plots import pyplot, save_figure, scatter_by_class
from core.shards import Manifest
from core.spec import FeatureSpec
from training.report import best_val

MOST_WRONG = 10


def environment(device) -> dict[str, Any]:
    """Versions and the device, for the page (and metrics.json)."""
    import torch
    from importlib.metadata import PackageNotFoundError, version

    def ver(*names: str) -> str:
        for n in names:
            try:
                return version(n)
            except PackageNotFoundError:
                continue
        return "-"

    env = {"python": sys.version.split()[0], "platform": platform.platform(), "torch": torch.__version__,
           "nvidia-dali": ver("nvidia-dali-cuda130", "nvidia-dali-cuda120", "nvidia-dali"), "numpy": np.__version__,
           "device": str(device), "cpu cores": os.cpu_count()}
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
        env["cuda"] = torch.version.cuda
    return env


def class_separation(x: np.ndarray, labels: np.ndarray) -> float:
    """Share of the total variance of standardised `x` that the class means explain (between-class
    sum of squares over total): 1 when every class is one point, near 0 when classes overlap."""
    z = x - x.mean(0)
    total = float((z ** 2).sum())
    between = sum(float((labels == c).sum()) * float((z[labels == c].mean(0) ** 2).sum()) for c in np.unique(labels))
    return between / total if total > 0 else 0.0


def softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def test_views(rows: list[dict], classes: list[str]) -> dict:
    """From evaluate()'s TrackLog rows: probabilities, the most wrong tracks, the two PCAs."""
    labels = np.array([r["label"] for r in rows])
    probs = softmax(np.stack([r["logits"] for r in rows]).astype(np.float64))
    raw = np.concatenate([np.stack([r["mean"] for r in rows]), np.stack([r["std"] for r in rows])], axis=1)
    out: dict = {"labels": labels, "probs": probs, "uids": np.array([r["uid"] for r in rows])}
    spaces = {"raw": raw}
    if all(r["embedding"] is not None for r in rows):
        spaces["embedding"] = np.stack([r["embedding"] for r in rows]).astype(np.float64)
    for name, x in spaces.items():
        z = Standardiser.fit(x)(x)
        pca = PCA.fit(z, 2)
        out[name] = {"scores": pca(z), "explained": pca.explained_ratio, "separation": class_separation(z, labels)}
    return out


def write(run_dir: str, metrics: dict, rows: list[dict] | None, manifest: Manifest, spec: FeatureSpec,
          env_info: dict) -> str:
    """Write run_dir/report.html (and pca_test.png); returns its path."""
    classes = manifest.classes
    page = Page(f"Run report: {os.path.basename(os.path.abspath(run_dir))}")
    hist = metrics.get("history", [])
    test = metrics.get("test")
    best = best_val(hist)
    page.p(f"{len(hist)} epochs, best validation accuracy {best:.3f} (epoch {metrics.get('best_epoch', '-')})"
           + (f", test accuracy {test['track_acc']:.3f} on {test['tracks']} tracks (best checkpoint)" if test else "")
           + f"; {metrics.get('world_size')} rank(s) on {metrics.get('device')}, precision {metrics.get('precision')}.")
    raw = metrics.get("test_raw")
    if "best_epoch_raw" in metrics:  # --compare-raw
        page.p("Raw weights (without the EMA average): best validation accuracy "
               f"{best_val(hist, 'val_track_acc_raw'):.3f} (epoch "
               f"{metrics['best_epoch_raw']})" + (f", test accuracy {raw['track_acc']:.3f}." if raw else "."))

    page.h2("Curves")
    if os.path.exists(os.path.join(run_dir, "curves.png")):
        page.image("curves.png", "loss, accuracy and throughput per epoch")
    page.table(["epoch", "train loss", "train acc", "val loss", "val acc (tracks)", "val acc (windows)", "lr",
                "samples/s", "data wait %", "seconds"],
               [[h["epoch"], h["train_loss"], h["train_acc"], *(h.get(k, "–") for k in ("val_loss", "val_track_acc", "val_segment_acc")),
                 h["lr"], round(h["samples_per_s"], 1), round(100 * h["data_wait"], 2), round(h["epoch_seconds"], 1)]
                for h in hist])

    if test:
        page.h2("Test split")
        if os.path.exists(os.path.join(run_dir, "confusion.png")):
            page.image("confusion.png", "test confusion matrix")
        page.table(["class", "precision", "recall", "F1", "tracks"],
                   [[c, v["precision"], v["recall"], v["f1"], v["support"]] for c, v in test["per_class"].items()])
    if test and rows:
        views = test_views(rows, classes)
        by_uid = {s.uid: s for s in manifest.samples}
        page.h3(f"The test tracks the model gets most wrong (up to {MOST_WRONG})")
        p, y = views["probs"], views["labels"]
        wrong = [i for i in np.argsort(p[np.arange(len(y)), y], kind="stable") if p[i].argmax() != y[i]][:MOST_WRONG]
        if wrong:
            page.table(["track", "true class", "p(true)", "top 1", "top 2", "top 3"],
                       [[by_uid[int(views["uids"][i])].source if int(views["uids"][i]) in by_uid else views["uids"][i],
                         classes[y[i]], float(p[i, y[i]]),
                         *[f"{classes[k]} {p[i, k]:.2f}" for k in np.argsort(-p[i])[:3]]] for i in wrong])
        else:
            page.p("The model classifies every test track correctly.")
        page.h2("What the network separated")
        plot_pcas(views, classes, os.path.join(run_dir, "pca_test.png"))
        page.image("pca_test.png", "PCA of test embeddings beside PCA of raw log-mel statistics")
        sep = [["raw log-mel statistics (band mean and std)", views["raw"]["separation"]]]
        if "embedding" in views:
            sep.insert(0, ["penultimate-layer embedding", views["embedding"]["separation"]])
        page.table(["test tracks described by", "class separation (between-class share of variance)"], sep)
        page.p("Both PCAs are fitted on the test tracks, each feature standardised on them. The separation is the "
               "share of the total variance explained by the class means (1: each class one point).", note=True)

    page.h2("Arguments")
    page.kv({k: v for k, v in sorted(metrics.get("args", {}).items())})
    page.h2("FeatureSpec")
    page.kv(spec.to_dict())
    page.h2("Environment")
    page.kv(env_info)
    path = os.path.join(run_dir, "report.html")
    page.write(path)
    return path


def plot_pcas(views: dict, classes: list[str], path: str) -> None:
    plt = pyplot()
    names = [n for n in ("embedding", "raw") if n in views]
    fig, axes = plt.subplots(1, len(names), figsize=(6.5 * len(names), 5), squeeze=False)
    titles = {"embedding": "test tracks: penultimate-layer embedding", "raw": "test tracks: raw log-mel statistics"}
    for ax, n in zip(axes[0], names):
        v = views[n]
        scatter_by_class(ax, v["scores"], views["labels"], classes, f"{titles[n]} (separation {v['separation']:.2f})")
        ax.set_xlabel(f"PC1 ({v['explained'][0]:.1%})")
        ax.set_ylabel(f"PC2 ({v['explained'][1]:.1%})" if len(v["explained"]) > 1 else "PC2")
    fig.tight_layout()
    save_figure(fig, path)
