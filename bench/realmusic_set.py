"""The package-independent part of the real-music development set (bench/realmusic.py): which files
are one recording, how recordings are split, where excerpts are cut, and the files that describe the
set. Everything here works on plain files and is what tests/test_realmusic.py exercises; fetching
Debian packages lives in bench/realmusic_debian.py.

Rules (the README of the set is bench/NOTES.md, "Real-music development set"):
- A **recording** is one audio file of at least `min_seconds` (40 s), by its header and again by its
  audible span once decoded (leading and trailing digital silence cut off: colobot pads 20 s jingles
  to 84 s). Symlinks are skipped and files with the same bytes count once (the first path in sorted
  order), so a package that ships one track under several names (drascula's language folders) gives
  one recording.
- A **group** is what the split keeps together: a recording with its alternate versions and stems.
  `group_key` names it: a multitrack stem (song/guitar/rhythm/... .ogg in one song folder) belongs to
  its folder; any other file to its lower-cased base name with trailing version markers removed
  (`sixtyfour_revisited` and `sixtyfour_` -> `sixtyfour`, `theme-v2`, `theme (remix)` -> `theme`).
  A package may add aliases for variants that names do not reveal (bench/realmusic_debian.py).
- **Splits** are drawn per class by group: groups ordered by sha1(seed, class, group), the first
  `n_test` go to test, the next `n_val` to val, the rest to train, with n_x = max(min_per_split,
  round(fraction * groups)). No group, so no recording and no variant of one, is in two splits, and
  the order does not depend on how the files were listed.
- **Excerpts**: up to `max_excerpts` non-overlapping windows of `excerpt_seconds` per recording, as
  many as fit in its audible span (leading and trailing digital silence cut off), spaced evenly with
  equal gaps before, between and after them (intros and fades are avoided where the recording is
  long enough), at whole-sample offsets of the decoded 22,050 Hz signal computed in integers.
"""
from __future__ import annotations

import csv
import hashlib
import io
import os
import re
from dataclasses import dataclass, field

import numpy as np

AUDIO_EXTENSIONS = (".ogg", ".oga", ".opus", ".mp3", ".flac", ".wav")
MODULE_EXTENSIONS = (".mod", ".xm", ".it", ".s3m")  # tracker modules: soundfile cannot render them
STEM_NAMES = frozenset({"song", "guitar", "rhythm", "bass", "drums", "vocals", "keys", "crowd", "preview"})
# trailing markers of an alternate version; applied repeatedly, with the separators before them
_VARIANT = re.compile(r"(?:[\s._-]*(?:\([^()]*\)|\[[^\[\]]*\])"
                      r"|[\s._-]+(?:v\d+|ver(?:sion)?\s*\d*|revisited|remix(?:ed)?|re-?mix|mix|edit|alt(?:ernate)?"
                      r"|reprise|extended|loop(?:ed)?|instrumental)"
                      r"|[\s._-]+)$")
SPLITS = ("train", "val", "test")


def group_key(relpath: str, aliases: dict[str, str] | None = None) -> str:
    """The group a file belongs to (see the module docstring). `relpath` is the file's path inside
    its package ('/'-separated); `aliases` maps a group key to the key it is a variant of."""
    parts = relpath.replace("\\", "/").strip("/").split("/")
    stem = os.path.splitext(parts[-1])[0].lower()
    if stem in STEM_NAMES and len(parts) > 1:
        key = "/".join(parts[:-1]).lower()
    else:
        key = stem
        while True:
            cut = _VARIANT.sub("", key)
            if cut == key or not cut:
                break
            key = cut
    return (aliases or {}).get(key, key)


@dataclass
class Recording:
    """One usable audio file of a class."""
    label: str          # the class (a package name)
    path: str           # where the file is on this machine
    relpath: str        # inside the package: what the provenance file names
    seconds: float      # from the header (soundfile), before decoding
    sha256: str         # of the file's bytes
    group: str = ""


@dataclass
class Excerpt:
    """One 30 s window of a recording, at a whole-sample offset of the decoded signal."""
    recording: Recording
    split: str
    index: int           # within the recording
    offset: int          # first sample, at `rate`
    frames: int
    rate: int
    name: str = ""       # the WAV file's path relative to the set's folder (and its list.csv)
    wav_sha256: str = field(default="", compare=False)


def file_sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def audio_files(root: str) -> tuple[list[str], list[str]]:
    """(audio files, tracker modules) below `root`, sorted, symlinks skipped (a link repeats a file)."""
    audio, modules = [], []
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(files):
            path = os.path.join(folder, name)
            if os.path.islink(path):
                continue
            ext = os.path.splitext(name)[1].lower()
            if ext in AUDIO_EXTENSIONS:
                audio.append(path)
            elif ext in MODULE_EXTENSIONS:
                modules.append(path)
    return sorted(audio), sorted(modules)


def find_recordings(label: str, root: str, min_seconds: float,
                    aliases: dict[str, str] | None = None) -> tuple[list[Recording], list[dict]]:
    """The recordings of one class: audio files below `root` of at least `min_seconds`, each file's
    bytes once. Returns (recordings, skipped) where each skipped file has a reason
    (`short`, `same_bytes`, `unreadable`, `module`)."""
    import soundfile as sf
    audio, modules = audio_files(root)
    recs: list[Recording] = []
    skipped = [{"file": _rel(p, root), "reason": "module", "detail": "tracker module: no decoder here"}
               for p in modules]
    seen: dict[str, str] = {}
    for path in audio:
        rel = _rel(path, root)
        try:
            info = sf.info(os.fsencode(path))
            seconds = info.frames / info.samplerate if info.samplerate > 0 else 0.0
        except (RuntimeError, OSError) as e:  # LibsndfileError is a RuntimeError
            detail = getattr(e, "error_string", None) or str(e).splitlines()[0]  # libsndfile's reason, no path
            skipped.append({"file": rel, "reason": "unreadable", "detail": detail})
            continue
        if seconds < min_seconds:
            skipped.append({"file": rel, "reason": "short", "detail": f"{seconds:.1f} s"})
            continue
        digest = file_sha256(path)
        if digest in seen:
            skipped.append({"file": rel, "reason": "same_bytes", "detail": f"same bytes as {seen[digest]}"})
            continue
        seen[digest] = rel
        recs.append(Recording(label, path, rel, seconds, digest, group_key(rel, aliases)))
    return recs, skipped


def _rel(path: str, root: str) -> str:
    return os.path.relpath(path, root).replace(os.sep, "/")


def _order(seed: int, label: str, group: str) -> str:
    return hashlib.sha1(f"{seed}\0{label}\0{group}".encode("utf-8", "surrogateescape")).hexdigest()


def split_groups(groups: list[str], label: str, val: float, test: float, seed: int,
                 min_per_split: int = 1) -> dict[str, str]:
    """group -> split for one class's groups (see the module docstring). A class with fewer than
    2 * min_per_split + 1 groups has nothing left for train: ValueError."""
    unique = sorted(set(groups), key=lambda g: (_order(seed, label, g), g))
    n = len(unique)
    n_test = max(min_per_split, round(test * n))
    n_val = max(min_per_split, round(val * n))
    if n_test + n_val >= n:
        raise ValueError(f"{label}: {n} groups cannot give {n_val} val, {n_test} test and some train")
    return {g: ("test" if i < n_test else "val" if i < n_test + n_val else "train") for i, g in enumerate(unique)}


def excerpt_offsets(frames: int, length: int, max_excerpts: int) -> list[int]:
    """Start samples of up to `max_excerpts` non-overlapping windows of `length` samples in a signal
    of `frames`, spaced with equal gaps before, between and after them (integer arithmetic)."""
    n = min(max_excerpts, frames // length) if length > 0 else 0
    spare = frames - n * length
    return [k * length + (k + 1) * spare // (n + 1) for k in range(n)]


_SLUG = re.compile(r"[^A-Za-z0-9_-]+")


def excerpt_name(rec: Recording, index: int, offset: int, rate: int) -> str:
    """`audio/<label>/<slug of the path in the package>_<sha1 of it>_<nn>_<offset in ms>.wav`, relative to
    the set's folder (where list.csv is): readable, unique, safe in a CSV and free of dots in the stem
    (make_shards derives its keys from the stem)."""
    stem = _SLUG.sub("_", os.path.splitext(rec.relpath)[0]).strip("_")[-60:] or "audio"
    digest = hashlib.sha1(rec.relpath.encode("utf-8", "surrogateescape")).hexdigest()[:8]
    return f"audio/{rec.label}/{stem}_{digest}_{index:02d}_{offset * 1000 // rate:08d}ms.wav"


def audible_span(x: np.ndarray) -> tuple[int, int]:
    """[start, end) of a decoded signal without its leading and trailing digital silence (below one
    16-bit step, make_shards' `silent`): colobot's music010 ends in 44 s of it."""
    from features.audio import SILENCE_PEAK
    loud = np.flatnonzero(np.abs(x) >= SILENCE_PEAK)
    return (int(loud[0]), int(loud[-1]) + 1) if loud.size else (0, 0)


def plan_excerpts(rec: Recording, span: tuple[int, int], rate: int, excerpt_seconds: float,
                  max_excerpts: int) -> list[Excerpt]:
    """A recording's excerpts, placed within its audible span of the decoded signal (audible_span).
    Their split is set later (it does not change where they are cut)."""
    length = int(round(excerpt_seconds * rate))
    start, end = span
    return [Excerpt(rec, "", i, start + off, length, rate, excerpt_name(rec, i, start + off, rate))
            for i, off in enumerate(excerpt_offsets(end - start, length, max_excerpts))]


def wav_bytes(x: np.ndarray, rate: int) -> bytes:
    """A float signal in [-1, 1] as a 16-bit PCM WAV file's bytes (features/audio.py's rounding)."""
    import soundfile as sf

    from features.audio import to_pcm16
    buf = io.BytesIO()
    sf.write(buf, to_pcm16(x), rate, subtype="PCM_16", format="WAV")
    return buf.getvalue()


def list_csv(excerpts: list[Excerpt]) -> str:
    """The `path,label,split` list make_shards reads (`--list FILE --split list`); paths relative to
    the list's folder."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["path", "label", "split"])
    for e in excerpts:
        w.writerow([e.name, e.recording.label, e.split])
    return buf.getvalue()


def provenance_csv(excerpts: list[Excerpt], versions: dict[str, str]) -> str:
    """One row per excerpt: where its samples came from, exactly."""
    from core.text import csv_cell
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["path", "label", "split", "package", "version", "file", "group", "file_sha256",
                "offset_samples", "offset_s", "seconds", "rate", "wav_sha256"])
    for e in excerpts:
        r = e.recording
        w.writerow([e.name, r.label, e.split, r.label, versions.get(r.label, ""), csv_cell(r.relpath),
                    csv_cell(r.group), r.sha256, e.offset, f"{e.offset / e.rate:.6f}", f"{e.frames / e.rate:g}",
                    e.rate, e.wav_sha256])
    return buf.getvalue()


def counts(excerpts: list[Excerpt]) -> dict[str, dict[str, dict[str, int]]]:
    """label -> split -> {recordings, groups, excerpts}."""
    out: dict[str, dict[str, dict[str, int]]] = {}
    for split in SPLITS:
        for e in excerpts:
            if e.split != split:
                continue
            c = out.setdefault(e.recording.label, {}).setdefault(split, {"recordings": set(), "groups": set(),
                                                                          "excerpts": 0})
            c["recordings"].add(e.recording.sha256)
            c["groups"].add(e.recording.group)
            c["excerpts"] += 1
    return {lab: {s: {k: (len(v) if isinstance(v, set) else v) for k, v in c.items()} for s, c in per.items()}
            for lab, per in sorted(out.items())}
