"""The published fault-filtered GTZAN split (Kereliuk, Sturm & Larsen 2015), as torchaudio ships it.

The lists (443 train, 197 valid, 290 test track ids such as `blues.00012`; 930 in all) are
imported from torchaudio at run time rather than copied here, so there is one source of truth.
torchaudio's train list names `jazz.00054`, which is corrupt in the common GTZAN copy; make_shards
rejects that file when decoding it, like any other unreadable file.
"""
from __future__ import annotations

import os


class SplitUnavailable(Exception):
    """torchaudio (or its GTZAN module) cannot be imported."""


def gtzan_filtered() -> dict[str, str]:
    """Track id (file stem, e.g. `blues.00012`) -> "train" | "val" | "test"."""
    try:
        from torchaudio.datasets import gtzan
    except Exception as e:  # noqa: BLE001 - any import failure means the same thing to the user
        raise SplitUnavailable(f"--split gtzan-filtered needs torchaudio's GTZAN lists ({type(e).__name__}: {e})") \
            from None
    out: dict[str, str] = {}
    for split, ids in (("train", gtzan.filtered_train), ("val", gtzan.filtered_valid), ("test", gtzan.filtered_test)):
        for track in ids:
            out[track] = split
    return out


def gtzan_id(path: str) -> str:
    """`.../blues/blues.00012.wav` -> `blues.00012` (GTZAN's ids are file names without extension)."""
    return os.path.splitext(os.path.basename(path))[0]
