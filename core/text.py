"""Names from the file system and text from other people, made safe for where they go.

A file name the file system holds as bytes that are not UTF-8 (a Latin-1 `café` from an older
collection) reaches Python as a str with lone surrogates (surrogateescape). It is kept as it is
(so the file can be opened again) and written losslessly: in JSON as its `\\udcXX` escape, in CSV
as the original bytes; on a terminal each such byte shows as `\\xNN`, and control characters (a
name's escape sequences) are shown escaped, never sent to the terminal.
"""
from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

_SURROGATE = re.compile("[\ud800-\udfff]")
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")
FORMULA_START = ("=", "+", "-", "@", "\t", "\r", "'")  # what spreadsheets read as a formula (and our escape)


def json_text(obj: Any, **kw) -> str:
    """json.dumps(obj, ensure_ascii=False, **kw), with lone surrogates as \\uXXXX escapes: the text
    encodes to UTF-8 and json.loads gives back the same str."""
    return _SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", json.dumps(obj, ensure_ascii=False, **kw))


def json_bytes(obj: Any, **kw) -> bytes:
    return json_text(obj, **kw).encode("utf-8")


def printable(text: str) -> str:
    """`text` for a terminal or a one-line message: undecodable bytes and control characters as \\xNN."""
    text = text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def csv_cell(value: Any) -> Any:
    """A CSV cell a spreadsheet shows as text: a string starting with = + - @ TAB CR (or ', the escape
    itself) gets a leading '. csv_value() undoes it."""
    return "'" + value if isinstance(value, str) and value.startswith(FORMULA_START) else value


def csv_value(cell: str) -> str:
    return cell[1:] if cell.startswith("'") else cell


def one_or_list(values: Sequence[str]) -> str | list[str]:
    """An output field per checkpoint: one checkpoint's value alone (as before ensembles), several as a list."""
    return values[0] if len(values) == 1 else list(values)
