"""One markdown table and one bar chart for every benchmark, each driven by a list of columns.

A row is a result dict. A timing is either a number or {"median", "min", "max"} (over passes or
windows): the table prints "median (min–max)", the chart draws the median with min–max error bars.
A row without its done key is printed as its first `keep` cells and "skipped: why" / "FAILED: why".
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

DASH = "–"


@dataclass(frozen=True)
class Col:
    head: str
    cell: Callable[[dict], str]


def _get(r: dict, key: str) -> Any:
    return r.get(key) if isinstance(r, dict) else None


def num(key: str, fmt: str, scale: float = 1.0) -> Callable[[dict], str]:
    """r[key] formatted (a {median, ...} dict: its median), '–' when missing."""
    def cell(r: dict) -> str:
        v = _get(r, key)
        v = v["median"] if isinstance(v, dict) else v
        return DASH if v is None else format(v * scale, fmt)
    return cell


def rng(key: str, fmt: str, scale: float = 1.0) -> Callable[[dict], str]:
    """'median (min–max)' of r[key], a {median, min, max} dict."""
    def cell(r: dict) -> str:
        d = r[key]
        return f"{format(d['median'] * scale, fmt)} ({format(d['min'] * scale, fmt)}–{format(d['max'] * scale, fmt)})"
    return cell


def text(key: str) -> Callable[[dict], str]:
    return lambda r: str(r.get(key, ""))


def status(r: dict) -> str:
    """'skipped: why' or 'FAILED: why' for a row that has no result."""
    if "skipped" in r:
        return f"skipped: {r['skipped']}"
    err = r.get("error") or "not run"
    return "FAILED: " + (" ".join(err) if isinstance(err, list) else str(err))


def markdown(rows: list[dict], cols: list[Col], done: str, keep: int = 1) -> str:
    """The table; a row without `done` shows its first `keep` cells, then status(row)."""
    lines = ["| " + " | ".join(c.head for c in cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        if done in r:
            cells = [c.cell(r) for c in cols]
        else:
            cells = [c.cell(r) for c in cols[:keep]] + [status(r)] + [""] * (len(cols) - keep - 1)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


@dataclass(frozen=True)
class Bars:
    """One panel of the chart. One key: a bar per row (with min–max error bars for {median, ...}
    values) and its value written after it; several keys: grouped bars and a legend of `labels`."""
    keys: tuple[str, ...]
    xlabel: str
    scale: float = 1.0
    fmt: str = ".1f"
    note: Callable[[dict, float], str] | None = None   # the text after a bar (default: the value in fmt)
    labels: tuple[str, ...] = ()
    colors: tuple[str, ...] = ("tab:blue", "tab:red", "tab:green", "tab:orange")
    pad: float = 1.35                                     # x axis up to pad × the largest value


def _mid_lo_hi(v: Any) -> tuple[float, float, float]:
    if isinstance(v, dict):
        return v["median"], v["min"], v["max"]
    v = v or 0.0
    return v, v, v


def bar_chart(rows: list[dict], panels: list[Bars], path: str, *, name: str, title: str) -> None:
    """Horizontal bars, one panel per Bars side by side, one row per result (labelled by row[name])."""
    from training.report import pyplot, save_figure
    if not rows:
        return
    plt = pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels) + 3, 0.65 * len(rows) + 2.2),
                             sharey=True, squeeze=False)
    y = list(range(len(rows)))
    for ax, p in zip(axes[0], panels):
        top, k = 0.0, len(p.keys)
        for j, key in enumerate(p.keys):
            mlh = [tuple(x * p.scale for x in _mid_lo_hi(r.get(key))) for r in rows]
            err = [[m - lo for m, lo, _ in mlh], [hi - m for m, _, hi in mlh]]
            ranged = any(isinstance(r.get(key), dict) for r in rows)
            pos = [v + (j - (k - 1) / 2) * 0.8 / k for v in y]
            ax.barh(pos, [m for m, _, _ in mlh], height=0.8 / k, xerr=err if ranged else None, capsize=4,
                    color=p.colors[j % len(p.colors)], label=p.labels[j] if p.labels else None)
            if k == 1:
                for yi, (m, _, hi), r in zip(y, mlh, rows):
                    ax.text(hi, yi, "  " + (p.note(r, m) if p.note else format(m, p.fmt)), va="center", fontsize=9)
            top = max([top] + [hi for _, _, hi in mlh])
        ax.set_xlabel(p.xlabel, fontsize=9)
        ax.set_xlim(0, max(top * p.pad, 1e-9))
        if p.labels:
            ax.legend(fontsize=8, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=k, frameon=False)
    axes[0][0].set_yticks(y, [str(r[name]) for r in rows])
    axes[0][0].invert_yaxis()
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    save_figure(fig, path, dpi=110)


def publish(heading: str, rows: list[dict], cols: list[Col], done: str, *, stem: str, keep: int = 1,
            notes: list[str] = (), chart: list[Bars] | None = None, name: str = "method", title: str = "",
            t_start: float | None = None) -> None:
    """A benchmark's end: the chart of the finished rows to STEM.png (if matplotlib is there), then on
    stdout the heading, the table, the notes and where the JSON (STEM.json, written by the script) and PNG are."""
    import os
    import time

    from bench import ROOT
    png = None
    if chart:
        try:
            bar_chart([r for r in rows if done in r], chart, stem + ".png", name=name, title=title)
            png = os.path.relpath(stem + ".png", ROOT)
        except ImportError as e:  # no matplotlib
            png = f"none ({e})"
    print(f"## {heading}\n")
    print(markdown(rows, cols, done, keep))
    if notes:
        print()
    for n in notes:
        print(f"- {n}")
    print(f"\nJSON: {os.path.relpath(stem + '.json', ROOT)}" + (f"  PNG: {png}" if png else "")
          + (f"  (total {time.perf_counter() - t_start:.0f} s)" if t_start is not None else ""))
