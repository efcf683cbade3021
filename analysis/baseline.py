"""The linear baseline: multinomial logistic regression on per-track log-mel statistics.

Trained on the training split's statistics (standardised with that split's mean and standard
deviation), judged on val and test: the figure a CNN has to beat on a collection. L-BFGS on a
convex objective from a zero start is deterministic: the same folder gives the same numbers.
`baseline_for_folder(path)` is the whole thing for another command (issue #21's real-music set).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from analysis.logmel_stats import TrackStats
from analysis.pca import Standardiser

C = 1.0          # inverse L2 strength (scikit-learn's default; the features are standardised)
MAX_ITER = 5000


@dataclass
class BaselineResult:
    accuracy: dict[str, float]                     # per split
    recall: dict[str, dict[str, float | None]]     # split -> class -> recall (None: no track of it)
    confusion: dict[str, list[list[int]]]          # split -> (true, predicted) counts
    tracks: dict[str, int]
    weights: np.ndarray = field(repr=False)        # (classes, features) on standardised features
    intercept: np.ndarray = field(repr=False)
    iterations: int = 0

    def to_dict(self) -> dict:
        return {"model": f"logistic regression (multinomial, L2, C={C}, lbfgs) on standardised per-band mean and std",
                "accuracy": self.accuracy, "recall": self.recall, "confusion": self.confusion,
                "tracks": self.tracks, "iterations": self.iterations}

    def line(self) -> str:
        """One line for a terminal: accuracy per split."""
        return "linear baseline (logistic regression on log-mel statistics): " + ", ".join(
            f"{s} {self.accuracy[s]:.3f} ({self.tracks[s]} tracks)" for s in self.accuracy)


def fit_logistic(x: np.ndarray, y: np.ndarray):
    """A fitted scikit-learn LogisticRegression (lbfgs, tight tolerance)."""
    from sklearn.linear_model import LogisticRegression
    return LogisticRegression(C=C, max_iter=MAX_ITER, tol=1e-8).fit(x, y)


def linear_baseline(stats: TrackStats, classes: list[str]) -> BaselineResult:
    """Fit on the train rows of `stats`, score every split present."""
    train = stats.rows("train")
    if len(np.unique(stats.label[train])) < 2:
        raise ValueError("the training split holds fewer than 2 classes: no classifier can be fitted")
    scale = Standardiser.fit(stats.features[train])
    x = scale(stats.features)
    clf = fit_logistic(x[train], stats.label[train])
    # scikit-learn's classes_ are the labels seen in train; map its columns back to ours
    w = np.zeros((len(classes), x.shape[1]))
    b = np.full(len(classes), -np.inf)
    if len(clf.classes_) == 2:  # binary: one weight row for the second class
        w[clf.classes_[1]], b[clf.classes_[1]] = clf.coef_[0], clf.intercept_[0]
        b[clf.classes_[0]] = 0.0
    else:
        w[clf.classes_], b[clf.classes_] = clf.coef_, clf.intercept_
    pred = (x @ w.T + b).argmax(1)
    acc, recall, conf, tracks = {}, {}, {}, {}
    for split in [s for s in ("train", "val", "test") if stats.rows(s).any()]:
        sel = stats.rows(split)
        m = np.zeros((len(classes), len(classes)), dtype=np.int64)
        np.add.at(m, (stats.label[sel], pred[sel]), 1)
        acc[split] = float(np.trace(m) / max(m.sum(), 1))
        recall[split] = {c: (float(m[i, i] / m[i].sum()) if m[i].sum() else None) for i, c in enumerate(classes)}
        conf[split], tracks[split] = m.tolist(), int(sel.sum())
    return BaselineResult(acc, recall, conf, tracks, w, b, int(np.max(clf.n_iter_)))


def baseline_for_folder(shard_dir: str, **collect_kw) -> BaselineResult:
    """The linear baseline of a labeled shard folder (local or remote), computed from scratch."""
    from analysis.logmel_stats import collect
    from storage.folder import read_manifest

    manifest = read_manifest(shard_dir, allow_unverified=collect_kw.get("allow_unverified", False))
    if manifest.unlabeled:
        raise ValueError(f"{manifest.path}: an unlabeled collection has no classes for a baseline")
    stats, _ = collect(shard_dir, manifest, **collect_kw)
    return linear_baseline(stats, manifest.classes)
