"""matplotlib for files: the Agg backend, names drawn as text (never math), atomic PNGs; and the
figures both reports draw (class-coloured scatter, log-mel images)."""
from __future__ import annotations

import os

import numpy as np

from core.atomic import atomic_open

MARKERS = {"train": "o", "val": "s", "test": "^"}


def pyplot():
    """matplotlib.pyplot on the file-only Agg backend (no display needed), imported on first use."""
    import matplotlib
    matplotlib.use("Agg")
    matplotlib.rcParams["text.parse_math"] = False  # file and class names are text, never math ($x$)
    import matplotlib.pyplot as plt
    return plt


def save_figure(fig, path: str, dpi: int = 100) -> None:
    """Atomic PNG: written to a temp file, then renamed over `path`; the figure is closed."""
    with atomic_open(path) as f:
        fig.savefig(f, format=os.path.splitext(path)[1][1:] or "png", dpi=dpi)
    pyplot().close(fig)


def class_colors(n: int) -> list:
    """n distinct colours (tab10, then tab20, then a continuous map)."""
    plt = pyplot()
    cmap = plt.get_cmap("tab10" if n <= 10 else "tab20" if n <= 20 else "turbo")
    return [cmap(i if n <= 20 else i / max(n - 1, 1)) for i in range(n)]


def scatter_by_class(ax, xy: np.ndarray, labels: np.ndarray, classes: list[str], title: str,
                     groups: np.ndarray | None = None) -> None:
    """2-D points coloured by class; with `groups` (split names), one marker per group."""
    colors = class_colors(len(classes))
    kinds = [None] if groups is None else [g for g in MARKERS if (groups == g).any()]
    for k in kinds:
        for i, c in enumerate(classes):
            sel = labels == i if k is None else (labels == i) & (groups == k)
            if sel.any():
                ax.scatter(xy[sel, 0], xy[sel, 1], s=14, color=colors[i], marker=MARKERS.get(k, "o"),
                           alpha=0.75, linewidths=0, label=c if k == kinds[0] else None)
    if groups is not None:
        for k in kinds:
            ax.scatter([], [], marker=MARKERS[k], color="grey", label=f"{k} split")
    ax.legend(fontsize=7, markerscale=1.2, loc="best", ncol=2 if len(classes) > 6 else 1)
    ax.set_title(title)


def mel_image(ax, db: np.ndarray, spec, title: str, vmin: float | None = None, vmax: float | None = None):
    """A (mels, frames) dB image, time in seconds on x, mel band on y."""
    seconds = db.shape[1] * spec.hop_length / spec.sample_rate
    im = ax.imshow(db, origin="lower", aspect="auto", cmap="magma", extent=(0, seconds, 0, db.shape[0]),
                   vmin=vmin, vmax=vmax, interpolation="nearest")
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("s", fontsize=8)
    ax.set_ylabel("mel band", fontsize=8)
    ax.tick_params(labelsize=7)
    return im
