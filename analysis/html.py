"""A small, safe HTML page writer for the reports.

Every value is escaped (html.escape, quotes too), also attribute values; image and audio sources
are files beside the page, written into the page as percent-encoded relative URLs. The page loads
nothing from elsewhere and runs no script: one inline style sheet, <img>, <audio>, <table>,
<details>. Written atomically.
"""
from __future__ import annotations

import html
import os
from typing import Any, Callable, Iterable
from urllib.parse import quote

from core.atomic import atomic_write

STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5em auto;max-width:1200px;color:#222;padding:0 1em}
h1{font-size:1.6em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;margin:.6em 0;font-size:.9em}
th,td{border:1px solid #ccc;padding:.25em .6em;text-align:left;vertical-align:top}
td.n{text-align:right;font-variant-numeric:tabular-nums}th{background:#f3f3f3}
img{max-width:100%;height:auto;border:1px solid #eee}
.grid{display:flex;flex-wrap:wrap;gap:1em}.card{border:1px solid #ddd;padding:.5em;max-width:360px}
.note{color:#555;font-size:.9em}code{background:#f4f4f4;padding:0 .2em}
"""


def esc(value: Any) -> str:
    """Any value as HTML text: str() then escaped (<, >, &, quotes). A file name's undecodable bytes
    (lone surrogates) are shown as \\xNN, so the page always encodes as UTF-8."""
    text = value if isinstance(value, str) else str(value)
    text = text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return html.escape(text, quote=True)


def fmt(value: Any) -> str:
    """A cell's text: floats with 3 decimals (or 4 significant digits when small), None as a dash."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) >= 0.01 or value == 0 else f"{value:.4g}"
    return str(value)


def href(name: str) -> str:
    """A file beside the page (or below it) as a relative URL: each path segment percent-encoded."""
    if os.path.isabs(name) or ".." in name.split("/"):
        raise ValueError(f"{name!r}: a page links only to files beside it")
    return "/".join(quote(part, safe="") for part in name.split("/"))


class Page:
    """Build with the methods below, then write(path). Text arguments are plain text, never markup."""

    def __init__(self, title: str):
        self.title = title
        self.parts: list[str] = []

    def h2(self, text: str) -> None:
        self.parts.append(f"<h2>{esc(text)}</h2>")

    def h3(self, text: str) -> None:
        self.parts.append(f"<h3>{esc(text)}</h3>")

    def p(self, text: str, note: bool = False) -> None:
        cls = ' class="note"' if note else ""
        self.parts.append(f"<p{cls}>{esc(text)}</p>")

    def table(self, header: Iterable[Any], rows: Iterable[Iterable[Any]], caption: str | None = None) -> None:
        """Numbers right-aligned; every cell escaped."""
        out = ["<table>"]
        if caption:
            out.append(f"<caption>{esc(caption)}</caption>")
        out.append("<tr>" + "".join(f"<th>{esc(h)}</th>" for h in header) + "</tr>")
        for row in rows:
            cells = []
            for v in row:
                num = isinstance(v, (int, float)) and not isinstance(v, bool)
                cls = ' class="n"' if num else ""
                cells.append(f"<td{cls}>{esc(fmt(v))}</td>")
            out.append("<tr>" + "".join(cells) + "</tr>")
        out.append("</table>")
        self.parts.append("\n".join(out))

    def kv(self, pairs: dict[str, Any]) -> None:
        """A two-column table of names and values."""
        self.table(["", "value"], [[k, v if isinstance(v, (int, float, str)) or v is None else repr(v)]
                                   for k, v in pairs.items()])

    def image(self, src: str, alt: str, width: int | None = None) -> None:
        w = f' width="{int(width)}"' if width else ""
        self.parts.append(f'<p><img src="{esc(href(src))}" alt="{esc(alt)}"{w}></p>')

    def card(self, title: str, image: str | None, audio: str | None, text: str = "") -> None:
        """A box with a title, an image, an audio player (a WAV beside the page) and a line of text."""
        out = [f'<div class="card"><b>{esc(title)}</b>']
        if image:
            out.append(f'<img src="{esc(href(image))}" alt="{esc(title)}">')
        if audio:
            out.append(f'<audio controls preload="metadata" src="{esc(href(audio))}"></audio>')
        if text:
            out.append(f'<div class="note">{esc(text)}</div>')
        out.append("</div>")
        self.parts.append("".join(out))

    def grid(self, build: Callable[[], object]) -> None:
        """Cards side by side: `build()` adds them (call card() inside it)."""
        start = len(self.parts)
        build()
        inner = self.parts[start:]
        del self.parts[start:]
        self.parts.append('<div class="grid">' + "".join(inner) + "</div>")

    def details(self, summary: str, build: Callable[[], object]) -> None:
        """A folded section (no script: <details>): `build()` adds its content."""
        start = len(self.parts)
        build()
        inner = self.parts[start:]
        del self.parts[start:]
        self.parts.append(f"<details><summary>{esc(summary)}</summary>" + "\n".join(inner) + "</details>")

    def render(self) -> str:
        return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
                f"<title>{esc(self.title)}</title><style>{STYLE}</style></head>\n<body>\n"
                f"<h1>{esc(self.title)}</h1>\n" + "\n".join(self.parts) + "\n</body></html>\n")

    def write(self, path: str) -> None:
        atomic_write(path, self.render().encode("utf-8"))
