"""Run reports written by rank 0: metrics.json and PNGs people would rather look at than read."""
from __future__ import annotations

from typing import Any

import numpy as np

from analysis.plots import pyplot, save_figure  # noqa: F401 (also used from here by predict.py and bench)
from core.atomic import atomic_write
from core.text import json_bytes


def write_json(path: str, obj: Any) -> None:
    """Atomic: written to a temp file, then renamed over `path`."""
    atomic_write(path, json_bytes(obj, indent=1, default=float))


def val_curve(history: list[dict], key: str = "val_track_acc") -> tuple[list[int], list[float]]:
    """(validated epochs, their `key` figure) from a run's history: epochs --val-every skips have no
    val figures."""
    got = [(h["epoch"], h[key]) for h in history if key in h]
    return [e for e, _ in got], [v for _, v in got]


def best_val(history: list[dict], key: str = "val_track_acc") -> float:
    """The best `key` figure over the validated epochs (nan if none was)."""
    return max(val_curve(history, key)[1], default=float("nan"))


def plot_curves(history: list[dict], path: str, members: list[str] | None = None) -> None:
    """Learning curves (loss, accuracy) and throughput per epoch; `members`: an ensemble's member names."""
    plt = pyplot()
    ep = [h["epoch"] for h in history]
    fig, ax = plt.subplots(1, 3, figsize=(15, 4))
    ax[0].plot(ep, [h["train_loss"] for h in history], "o-", label="train")
    ax[0].plot(*val_curve(history, "val_loss"), "o-", label="val")
    ax[0].set_title("loss")
    ax[1].plot(ep, [h["train_acc"] for h in history], "o-", label="train (crops)")
    ax[1].plot(*val_curve(history), "o-", label="val (tracks)")
    ax[1].plot(*val_curve(history, "val_segment_acc"), "o--", label="val (windows)")
    raw = val_curve(history, "val_track_acc_raw")
    if raw[0]:  # --compare-raw: what the EMA average bought
        ax[1].plot(*raw, "x:", label="val (tracks, raw weights)")
    alone = [(h["epoch"], h["val_track_acc_members"]) for h in history if "val_track_acc_members" in h]
    for i in range(len(alone[0][1]) if alone else 0):  # an ensemble: each member alone, for comparison
        name = members[i] if members and i < len(members) else f"member {i + 1}"
        ax[1].plot([e for e, _ in alone], [m[i] for _, m in alone], ".:", alpha=0.6, label=f"val, {name} alone")
    ax[1].set_ylim(0, 1.02)
    ax[1].set_title("accuracy")
    ax[2].bar(ep, [h["samples_per_s"] for h in history], color="tab:green")
    ax2 = ax[2].twinx()
    ax2.plot(ep, [100 * h["data_wait"] for h in history], "o-", color="tab:red")
    ax2.set_ylabel("data wait (% of step time)", color="tab:red")
    ax[2].set_title("training throughput (samples/s)")
    for a in ax:
        a.set_xlabel("epoch")
    ax[0].legend()
    ax[1].legend()
    fig.tight_layout()
    save_figure(fig, path)


def plot_confusion(conf: np.ndarray, classes: list[str], path: str, title: str = "test confusion") -> None:
    """Row-normalised colours, counts written in the cells."""
    plt = pyplot()
    rows = conf.sum(1, keepdims=True)
    norm = conf / np.maximum(rows, 1)
    n = len(classes)
    fig, ax = plt.subplots(figsize=(1.0 + 0.6 * n, 1.0 + 0.55 * n))
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    for i in range(n):
        for j in range(n):
            if conf[i, j]:
                ax.text(j, i, f"{conf[i, j]}\n{norm[i, j]:.0%}", ha="center", va="center", fontsize=7,
                        color="white" if norm[i, j] > 0.5 else "black")
    ax.set_xticks(range(n), classes, rotation=45, ha="right")
    ax.set_yticks(range(n), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    acc = np.trace(conf) / max(conf.sum(), 1)
    ax.set_title(f"{title}: {acc:.1%} of {conf.sum()} tracks")
    fig.tight_layout()
    save_figure(fig, path)
