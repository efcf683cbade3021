"""Pack an audio collection into WebDataset tar shards for DALI.

    python preprocess/make_shards.py SRC OUT [--val 0.1] [--test 0.1] [--seed 0] [--workers N]
    python preprocess/make_shards.py --list FILE [SRC] OUT [--split list|random|gtzan-filtered]
    python preprocess/make_shards.py SRC OUT --split gtzan-filtered
    python preprocess/make_shards.py --verify OUT     # re-read shards, check against the manifest
    python preprocess/make_shards.py --unlabeled SRC OUT   # a collection to predict (predict.py --shards)
    python preprocess/make_shards.py SRC s3://bucket/prefix/ [--staging DIR]   # built locally, then uploaded
    python preprocess/make_shards.py --verify s3://bucket/prefix/              # the remote copy, every byte

Inputs. SRC is GTZAN's layout or any folder-per-class tree (SRC/<class>/**/<file>; a single
`genres_original/` or `genres/` folder inside SRC is entered; OUT is skipped if it lies inside
SRC). Or `--list FILE`: a CSV or TSV (delimiter detected: a tab in the first row means TSV) of
`path,label[,split]` rows, with or without a header row (`path,label,split`; with a header the
columns may come in any order and extra columns are ignored). Relative paths are relative to the
list file's folder, or to SRC when SRC is given; `#` lines and blank lines are skipped. Labels are
free text: every label seen becomes a class.

Unlabeled collections (`--unlabeled`): every non-hidden file anywhere below SRC goes into one
split, "all" (`all-NNNNNN.tar`), with no label (`.lab` -1, `.cls` "-1", `"label": null`); the
manifest says `"unlabeled": true` and `"classes": []`. For predict.py --shards, not for training.
Rejects, duplicates (same decoded audio twice: the copy is rejected), resume and --verify work as
for labeled shards; --list, --split, --val and --test do not apply.

Splits (`--split`): `random` (the default without a split column) is stratified by class, whole
tracks, seeded (--val/--test/--seed). `list` (the default when the list has a split column) takes
each row's split: train, val or test (any case); a row with anything else is rejected as
`bad_split`. `gtzan-filtered` is the published fault-filtered GTZAN split (Kereliuk & Sturm,
torchaudio's lists, see preprocess/gtzan_splits.py), matched by file stem (`blues.00012`); files
in none of its lists are rejected as `not_in_split`. The method goes into the manifest's options.

Every file is decoded (format detected by content), validated, downmixed, resampled to the
feature rate with an anti-aliasing filter and stored as 16-bit PCM WAV. Output:

    OUT/{train,val,test}-NNNNNN.tar   samples <key>.wav/.cls/.lab/.uid/.json
    OUT/{train,val,test}-NNNNNN.idx   DALI index for each shard
    OUT/manifest.json                 classes, counts, FeatureSpec, options, samples, rejects

Each input file (or list row) ends up either in one shard or in the manifest's reject list with
a reason: empty_file, not_audio, unreadable, decode_error, zero_samples, too_short, non_finite,
silent, duplicate, label_conflict, no_class_folder (folder mode), missing_file (list mode),
bad_split (--split list), not_in_split (--split gtzan-filtered). A path listed twice is a
`duplicate` (same label) or a `label_conflict` (all its rows rejected).

Truncated files: a WAV whose header promises more frames than the file holds (an interrupted
copy or download) is accepted with what it holds, with a warning in its manifest sample record
(`"warnings": ["truncated: header says X frames, file holds Y"]`), unless less than
--min-seconds remains (then `too_short`). A truncated file usually still holds real music, and
the warning keeps it findable; the run's summary line counts samples with warnings.

Resume. Decoded clips are staged in OUT/.work/ (one .wav and one .json per input, each written
atomically), so rerunning the same command after a crash or SIGKILL decodes only what is
missing and produces the same bytes as an uninterrupted run. A cached record is reused only if
the options that affect decoding (sample rate, --min-seconds, --max-seconds, decoder version)
and the source file's size and mtime are unchanged. The shard stage first deletes
manifest.json and every old shard, index and `.partial` file, writes each tar as `.partial`
(renamed after its index is complete) and writes manifest.json last: a folder with a manifest is
complete, one without is not. The manifest holds no absolute OUT path and no timestamps.

Object storage. OUT may be s3://bucket/prefix/ (AWS or any S3-compatible store: AWS_ACCESS_KEY_ID,
AWS_SECRET_ACCESS_KEY or AWS_PROFILE, AWS_ENDPOINT_URL) or gs://bucket/prefix/ (gcsfs installed,
GOOGLE_APPLICATION_CREDENTIALS). The shards are built as above in a local staging folder (--staging,
default ~/.cache/parallel_tunes/staging/<hash of OUT>), then uploaded through storage.store,
manifest.json last; a rerun after a crash, also one during the upload, resumes and ends with the
same bytes remotely (storage/upload.py has the protocol). The staging folder's files are deleted
after a complete upload. http(s):// is read-only and refused. Storage errors (credentials, missing
bucket, unreachable endpoint after retries) are one line naming the URL, exit code 2.
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import hashlib
import io
import json
import math
import os
import re
import shutil
import sys
import unicodedata
from collections import Counter, defaultdict
from dataclasses import dataclass
from multiprocessing import get_context
from typing import Iterator

import numpy as np

from core import version
from core.atomic import atomic_write as _atomic_write
from core.faults import fault_point
from core.shards import (ALL_SPLITS, MANIFEST, OUTPUT_FILE, SPLITS, UNLABELED_SPLIT, build_manifest, check_files,
                         check_name, manifest_bytes, shard_name, write_shard)
from core.spec import FeatureSpec
from core.text import printable
from features.audio import MAX_SECONDS, MIN_SECONDS
from storage.folder import read_manifest
from storage.store import StorageError, is_remote

SPLIT_METHODS = ("random", "list", "gtzan-filtered")
DECODER_VERSION = 2  # bump when decode_one's output changes: cached .work records become stale


class UsageError(Exception):
    """Bad input for the whole run: reported as one line, exit 2."""


@dataclass
class Item:
    path: str                # absolute (or as resolved from the list)
    rel: str                 # path as shown to users: relative to SRC, or as written in the list
    label: str | None
    split: str | None = None  # fixed split (list column / gtzan-filtered); None: random split


def find_inputs(src: str, exclude: str | None = None) -> tuple[list[Item], list[str], list[dict]]:
    """Walk SRC. Returns (items with a class folder, empty class folders, rejects).

    `exclude` (OUT) is skipped, so shards written inside SRC are not read back as inputs."""
    root = src
    subdirs = [d for d in os.listdir(src) if not d.startswith(".")]
    for name in ("genres_original", "genres"):
        if subdirs == [name] and os.path.isdir(os.path.join(src, name)):
            root = os.path.join(src, name)
    skip = os.path.realpath(exclude) if exclude else None
    items, empty, rejects = [], [], []
    for entry in sorted(os.listdir(root)):
        full = os.path.join(root, entry)
        if entry.startswith(".") or os.path.realpath(full) == skip:
            continue
        if os.path.isfile(full):
            rejects.append(_reject(os.path.relpath(full, src), "no_class_folder",
                                   "file is not inside a class folder"))
            continue
        found = []
        for dirpath, dirnames, filenames in os.walk(full):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith(".")
                                 and os.path.realpath(os.path.join(dirpath, d)) != skip)
            for fn in sorted(filenames):
                if fn.startswith("."):
                    continue
                p = os.path.join(dirpath, fn)
                found.append(Item(p, os.path.relpath(p, src), entry))
        if not found:
            empty.append(entry)
        items.extend(found)
    return items, empty, rejects


def find_unlabeled(src: str, exclude: str | None = None) -> list[Item]:
    """--unlabeled: every non-hidden file below SRC, at any depth, sorted, without a label
    (`exclude`, OUT, is skipped as in find_inputs)."""
    skip = os.path.realpath(exclude) if exclude else None
    items = []
    for dirpath, dirnames, filenames in os.walk(src):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".")
                             and os.path.realpath(os.path.join(dirpath, d)) != skip)
        for fn in sorted(filenames):
            if not fn.startswith("."):
                p = os.path.join(dirpath, fn)
                items.append(Item(p, os.path.relpath(p, src), None))
    return items


_PATH_COLS = {"path", "file", "filename", "filepath", "file_path", "audio"}
_LABEL_COLS = {"label", "class", "genre", "category"}
_SPLIT_COLS = {"split", "subset", "set", "fold"}


def read_list(list_file: str, base: str | None = None) -> tuple[list[Item], list[dict], bool]:
    """Parse a `path,label[,split]` CSV/TSV. Returns (items, rejects, has_split_column).

    Item.split holds the raw split text; its meaning depends on --split (see the docstring).
    Rows that cannot be understood at all raise UsageError naming FILE:LINE."""
    try:
        with open(list_file, encoding="utf-8-sig", newline="") as f:
            text = f.read()
    except UnicodeDecodeError:
        raise UsageError(f"{list_file}: not UTF-8 text") from None
    except OSError as e:
        raise UsageError(f"{list_file}: cannot read list ({e.strerror or e})") from None
    base = base if base is not None else os.path.dirname(os.path.abspath(list_file))
    rows = _list_rows(list_file, text)
    cols = {"path": 0, "label": 1}
    head = [c.lower() for c in rows[0][1]]
    header = head[0] in _PATH_COLS or bool(_PATH_COLS & set(head) and _LABEL_COLS & set(head))
    if header:  # columns by name, any order, extra columns ignored
        cols = {}
        for i, name in enumerate(head):
            for key, names in (("path", _PATH_COLS), ("label", _LABEL_COLS), ("split", _SPLIT_COLS)):
                if name in names and key not in cols:
                    cols[key] = i
        if "path" not in cols or "label" not in cols:
            raise UsageError(f"{list_file}:{rows[0][0]}: header needs path and label columns, got {','.join(head)}")
        rows = rows[1:]
        if not rows:
            raise UsageError(f"{list_file}: list has a header but no rows")
    elif any(len(cells) >= 3 for _, cells in rows):
        cols["split"] = 2
    has_split = "split" in cols
    need = max(cols.values()) + 1
    seen: dict[str, list[tuple[int, Item]]] = defaultdict(list)
    for line, cells in rows:
        if len(cells) < need or (not header and len(cells) > 3):
            raise UsageError(f"{list_file}:{line}: expected path,label[,split], got {len(cells)} field(s)")
        path, label = cells[cols["path"]], cells[cols["label"]]
        if not path or not label:
            raise UsageError(f"{list_file}:{line}: empty {'path' if not path else 'label'}")
        full = os.path.normpath(path if os.path.isabs(path) else os.path.join(base, path))
        split = cells[cols["split"]] if has_split else None
        seen[full].append((line, Item(full, os.path.normpath(path), label, split)))

    items, rejects = _list_items(seen)
    return items, rejects, has_split


def _list_rows(list_file: str, text: str) -> list[tuple[int, list[str]]]:
    """(line number, stripped cells) of a list's non-empty, non-comment rows, tab- or comma-separated."""
    first = next((ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")), "")
    delimiter = "\t" if "\t" in first else ","  # paths may hold commas, hardly ever tabs
    rows: list[tuple[int, list[str]]] = []
    reader = csv.reader(io.StringIO(text), delimiter=delimiter)
    for row in reader:
        cells = [c.strip() for c in row]
        if cells and any(cells) and not cells[0].startswith("#"):
            rows.append((reader.line_num, cells))
    if not rows:
        raise UsageError(f"{list_file}: list has no rows")
    return rows


def _list_items(seen: dict[str, list[tuple[int, Item]]]) -> tuple[list[Item], list[dict]]:
    """A list's files, each once: a file listed under two labels, twice, missing or a folder is rejected."""
    items, rejects = [], []
    for full, entries in seen.items():
        first_line, item = entries[0]
        labels = sorted({it.label for _, it in entries})
        if len(labels) > 1:  # one file, two labels: no label can be trusted
            for line, it in entries:
                rejects.append(_reject(it.rel, "label_conflict",
                                       f"listed with labels {', '.join(labels)} (line {line})"))
            continue
        for line, it in entries[1:]:
            rejects.append(_reject(it.rel, "duplicate", f"listed again at line {line} (first at line {first_line})"))
        if not os.path.exists(full):
            rejects.append(_reject(item.rel, "missing_file", f"no such file (list line {first_line})"))
        elif os.path.isdir(full):
            rejects.append(_reject(item.rel, "unreadable", f"is a folder, not a file (list line {first_line})"))
        else:
            items.append(item)
    return items, rejects


def apply_split_method(items: list[Item], method: str) -> tuple[list[Item], list[dict]]:
    """Give each item its fixed split (or None for `random`); reject items the method cannot place."""
    keep, rejects = [], []
    if method == "random":
        for it in items:
            it.split = None
        return items, rejects
    if method == "list":
        for it in items:
            value = (it.split or "").strip().lower()
            if value in SPLITS:
                it.split = value
                keep.append(it)
            else:
                rejects.append(_reject(it.rel, "bad_split", f"split {it.split!r} is not train, val or test"))
        return keep, rejects
    from preprocess.gtzan_splits import SplitUnavailable, gtzan_filtered, gtzan_id
    try:
        table = gtzan_filtered()
    except SplitUnavailable as e:
        raise UsageError(str(e)) from None
    for it in items:
        track = gtzan_id(it.rel)
        if track in table:
            it.split = table[track]
            keep.append(it)
        else:
            rejects.append(_reject(it.rel, "not_in_split", f"{track} is in none of the gtzan-filtered lists"))
    return keep, rejects


def _reject(rel: str, reason: str, message: str) -> dict:
    return {"path": rel, "reason": reason, "message": message}


def sample_key(item: Item) -> str:
    """WebDataset key: readable, unique, and free of dots (DALI splits names at the first dot)."""
    stem = unicodedata.normalize("NFKD", os.path.splitext(os.path.basename(item.rel))[0])
    slug = re.sub(r"[^A-Za-z0-9_-]+", "_", stem.encode("ascii", "ignore").decode()).strip("_")[:48]
    digest = hashlib.sha1(os.fsencode(item.rel)).hexdigest()[:10]  # the name's bytes, UTF-8 or not
    return f"{slug or 'clip'}_{digest}"


# ---------------------------------------------------------------- decode stage (parallel, cached)

def _work_paths(work: str, key: str) -> tuple[str, str]:
    return os.path.join(work, key + ".wav"), os.path.join(work, key + ".json")


def _init_worker() -> None:
    # one thread per worker: the pool already uses every core. Set before torch is imported
    # (only resampling imports it), so its thread pool starts at that size.
    os.environ["OMP_NUM_THREADS"] = "1"
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(1)


def _cache_id(item: Item, options: dict) -> dict:
    """What a cached .work record must match to be reused: decoding options and the source file."""
    try:
        st = os.stat(item.path)
        source = [item.rel, st.st_size, st.st_mtime_ns]
    except OSError:
        source = [item.rel, None, None]
    return {"options": options, "source": source}


def decode_one(job: tuple[Item, str, str, dict]) -> dict:
    """Decode one input into OUT/.work (or reuse a previous run's result). Returns its record.

    options: sample_rate, min_seconds, max_seconds, decoder (all that changes the result)."""
    item, key, work, options = job
    wav_path, meta_path = _work_paths(work, key)
    cache_id = _cache_id(item, options)
    if os.path.exists(meta_path):  # finished by an earlier, interrupted run?
        try:
            with open(meta_path, encoding="utf-8") as f:
                cached = json.load(f)
            if cached.get("cache") == cache_id and (not cached["ok"] or os.path.exists(wav_path)):
                cached["label"] = item.label
                return cached
        except (OSError, ValueError, KeyError):
            pass  # unreadable or stale: decode again
    import soundfile as sf
    from features.audio import AudioError, decode, to_pcm16, validate

    rate, min_seconds, max_seconds = options["sample_rate"], options["min_seconds"], options["max_seconds"]
    record: dict = {"key": key, "source": item.rel, "label": item.label, "cache": cache_id}
    try:
        d = decode(item.path, rate, max_seconds)
        warnings = validate(d, min_seconds)  # the same check predict.py applies
        pcm = to_pcm16(d.samples)
        duration = len(pcm) / rate
        buf = io.BytesIO()
        sf.write(buf, pcm, rate, format="WAV", subtype="PCM_16")
        _atomic_write(wav_path, buf.getvalue())
        record.update(ok=True, duration=round(duration, 4), frames=len(pcm),
                      pcm_sha256=hashlib.sha256(pcm.tobytes()).hexdigest(),
                      source_rate=d.source_rate, source_channels=d.channels, source_format=d.source_format,
                      clipped=d.clipped,
                      warnings=warnings)
    except AudioError as e:
        record.update(ok=False, reason=e.reason, message=e.message)
    except Exception as e:  # noqa: BLE001 - a library failure on one file must not stop the run
        record.update(ok=False, reason="decode_error", message=f"{type(e).__name__}: {e}")
    _atomic_write(meta_path, json.dumps(record, sort_keys=True).encode())
    return record


# ---------------------------------------------------------------- splits and shards

def split_tracks(records: list[dict], classes: list[str], val: float, test: float, seed: int) -> dict[str, list[dict]]:
    """Stratified by class, whole tracks, seeded; each class with >= 3 tracks gets >= 1 in val and test."""
    out: dict[str, list[dict]] = {s: [] for s in SPLITS}
    by_class = defaultdict(list)
    for r in records:
        by_class[r["label"]].append(r)
    for ci, c in enumerate(classes):
        rs = sorted(by_class[c], key=lambda r: r["source"])
        order = np.random.default_rng([seed, ci]).permutation(len(rs))
        n = len(rs)
        n_test = max(1 if (test > 0 and n >= 3) else 0, int(round(n * test)))
        n_val = max(1 if (val > 0 and n >= 3) else 0, int(round(n * val)))
        n_val = min(n_val, max(0, n - n_test - 1))
        for rank, i in enumerate(order):
            split = "test" if rank < n_test else "val" if rank < n_test + n_val else "train"
            out[split].append(rs[i])
    return _interleave(out, seed)


def fixed_splits(records: list[dict], seed: int) -> dict[str, list[dict]]:
    """Splits given per record (r["fixed_split"]: from the list or the gtzan-filtered table)."""
    return _interleave({s: [r for r in records if r["fixed_split"] == s] for s in SPLITS}, seed)


def _interleave(out: dict[str, list[dict]], seed: int) -> dict[str, list[dict]]:
    """Mix classes within each split (seeded): DALI shards by sample position across ranks."""
    for s in SPLITS:
        rs = sorted(out[s], key=lambda r: r["key"])
        out[s] = [rs[i] for i in np.random.default_rng([seed, 99, SPLITS.index(s)]).permutation(len(rs))]
    return out


def shard_count(n: int, max_per_shard: int, min_shards: int) -> int:
    if n == 0:
        return 0
    return max(math.ceil(n / max_per_shard), min(min_shards, n))


def _clear_outputs(out: str) -> None:
    """Remove the manifest first, then shards, indexes and leftovers of a killed run.

    Without a manifest the folder reads as incomplete (loader and --verify refuse it) until this
    run writes its own manifest at the very end."""
    manifest = os.path.join(out, MANIFEST)
    if os.path.exists(manifest):
        os.remove(manifest)
    for name in sorted(os.listdir(out)):
        if OUTPUT_FILE.fullmatch(name):
            os.remove(os.path.join(out, name))


# ---------------------------------------------------------------- main

@dataclass
class Found:
    """What the find stage gives: the files to decode and the ones already rejected."""
    items: list[Item]
    rejects: list[dict]
    empty_classes: list[str]
    method: str          # the split method
    origin: str          # the folder or list the files came from (for messages)
    inputs: int          # files seen, accepted or not
    outside: list[str]   # items (as shown) whose real path lies outside the source folder


def outside_source(items: list[Item], base: str) -> list[Item]:
    """Items whose real path (symlinks resolved) lies outside `base`: a list's absolute or `../`
    paths, symlinked class folders or files. Fine when intended, but a list or a folder from someone
    else can pull in any audio the user can read (and its path, as `source`) into shards that may then
    be uploaded: they are listed in the manifest's "outside_source" and refused with --strict."""
    root = os.path.join(os.path.realpath(base), "")
    return [it for it in items if not os.path.realpath(it.path).startswith(root)]


def make_shards(src: str | None, out: str, *, list_file: str | None = None, split: str | None = None,
                val: float = 0.1, test: float = 0.1, seed: int = 0,
                workers: int | None = None, min_seconds: float = MIN_SECONDS, max_seconds: float | None = MAX_SECONDS,
                max_per_shard: int = 256, min_shards: int = 8, spec: FeatureSpec | None = None,
                progress: bool = True, unlabeled: bool = False, keep_work: bool = False, strict: bool = False) -> dict:
    """Build the shards and manifest; returns the manifest. Raises UsageError on unusable input.

    src: folder of class folders, or (with list_file) the base for the list's relative paths.
    split: "random" | "list" | "gtzan-filtered"; None picks "list" if the list has a split column.
    unlabeled: every file below src in one split (UNLABELED_SPLIT), no labels (module docstring).
    keep_work: keep the decoded clips in OUT/.work (a staging folder until its upload is done).
    strict: files outside the source folder (outside_source) are rejected, not kept and listed.

    The stages: find -> decode -> account (rejects, duplicates, ids) -> split -> write."""
    spec = spec or FeatureSpec()
    found = find(src, out, list_file, split, unlabeled, strict)
    work = _work_folder(out)
    options = {"sample_rate": spec.sample_rate, "min_seconds": min_seconds, "max_seconds": max_seconds,
               "decoder": DECODER_VERSION}
    records = decode_all(found.items, work, options, workers, progress)
    good, classes, duplicates = account(records, found, unlabeled)
    splits = ({UNLABELED_SPLIT: good} if unlabeled else  # in uid (source path) order
              split_tracks(good, classes, val, test, seed) if found.method == "random" else fixed_splits(good, seed))
    _clear_outputs(out)  # shards of an earlier, different or killed run must not mix with these
    split_info, files = write_splits(out, work, splits, classes, max_per_shard, min_shards, progress)
    opts = {"split": UNLABELED_SPLIT if unlabeled else found.method,
            **({} if unlabeled else {"val": val, "test": test, "seed": seed}),
            "min_seconds": min_seconds, "max_seconds": max_seconds, "max_per_shard": max_per_shard,
            "min_shards": min_shards}
    if list_file is not None:  # identifies the list without recording where it lived
        with open(list_file, "rb") as f:
            opts["list_sha256"] = hashlib.sha256(f.read()).hexdigest()
    manifest = build_manifest(classes=classes, spec=spec, folder=out, files=files, splits=split_info,
                              samples=good, options=opts, inputs=found.inputs,
                              empty_class_folders=found.empty_classes, duplicates=duplicates,
                              rejects=found.rejects, unlabeled=unlabeled)
    if found.outside:  # only then: other manifests keep their bytes
        manifest["outside_source"] = sorted(found.outside)
    _atomic_write(os.path.join(out, MANIFEST), manifest_bytes(manifest))
    if not keep_work:
        shutil.rmtree(work, ignore_errors=True)
    return manifest


def find(src: str | None, out: str, list_file: str | None, split: str | None, unlabeled: bool,
         strict: bool = False) -> Found:
    """The find stage: the input files (class folders, a list, or an unlabeled folder) and the split
    method; UsageError for a request that cannot work."""
    if split is not None and split not in SPLIT_METHODS:
        raise UsageError(f"--split {split}: choose one of {', '.join(SPLIT_METHODS)}")
    if src is not None and not os.path.isdir(src):
        raise UsageError(f"{src}: not a directory")
    if unlabeled and (list_file is not None or split is not None):
        raise UsageError("--unlabeled takes a SRC folder; --list and --split do not apply")
    has_split_column, empty_classes = False, []
    if unlabeled:
        if src is None:
            raise UsageError("give a SRC folder")
        items, rejects, origin = find_unlabeled(src, exclude=out), [], src
    elif list_file is not None:
        items, rejects, has_split_column = read_list(list_file, base=src)
        origin = list_file
    elif src is None:
        raise UsageError("give a SRC folder or --list FILE")
    else:
        items, empty_classes, rejects = find_inputs(src, exclude=out)
        origin = src
    method = split or ("list" if has_split_column else "random")
    if method == "list" and not has_split_column:
        raise UsageError(f"{origin}: --split list needs a list file with a split column")
    inputs = len(items) + len(rejects)
    base = src if src is not None else os.path.dirname(os.path.abspath(list_file))
    outside = outside_source(items, base)
    if strict and outside:
        gone = {id(it) for it in outside}
        items = [it for it in items if id(it) not in gone]
        rejects += [_reject(it.rel, "outside_source", f"resolves to {os.path.realpath(it.path)}, outside {base} "
                                                      f"(--strict)") for it in outside]
        outside = []
    items, split_rejects = apply_split_method(items, method)
    return Found(items, rejects + split_rejects, empty_classes, method, origin, inputs, [it.rel for it in outside])


def _work_folder(out: str) -> str:
    """OUT and its decode records, OUT/.work: a private state folder (core.folders), since a rerun
    trusts the records it finds there."""
    from core.folders import UnsafeFolder, state_folder
    try:
        os.makedirs(out, exist_ok=True)
        return state_folder(os.path.join(out, ".work"), "decode-record folder")
    except UnsafeFolder as e:
        raise UsageError(str(e)) from None
    except OSError as e:
        raise UsageError(f"{out}: cannot create output folder ({e.strerror or e})") from None


def decode_all(items: list[Item], work: str, options: dict, workers: int | None, progress: bool) -> list[dict]:
    """The decode stage: one record per item, in order (decode_one; cached in `work` across reruns),
    by a pool of `workers` processes or, for one worker or one file, in this process."""
    from tqdm import tqdm

    jobs = [(it, sample_key(it), work, options) for it in items]
    workers = workers or os.cpu_count() or 1
    records: list[dict] = []
    with contextlib.ExitStack() as stack:
        if workers > 1 and len(jobs) > 1:
            pool = stack.enter_context(get_context("spawn").Pool(workers, initializer=_init_worker))
            results = pool.imap(decode_one, jobs, chunksize=2)
        else:
            results = map(decode_one, jobs)
        bar = stack.enter_context(tqdm(total=len(jobs), desc="decode", unit="file", disable=not progress))
        for r in results:
            records.append(r)
            bar.update()
            fault_point("decodes", len(records))
    return records


def account(records: list[dict], found: Found, unlabeled: bool) -> tuple[list[dict], list[str], list[dict]]:
    """The account stage: failed decodes and duplicates go to found.rejects; the kept records get
    their uids (in source-path order). Returns (kept records, classes, duplicate groups)."""
    good = []
    for r, it in zip(records, found.items):
        if r["ok"]:
            r["fixed_split"] = it.split
            good.append(r)
        else:
            found.rejects.append(_reject(r["source"], r["reason"], r["message"]))
    good, dup_rejects, duplicates = resolve_duplicates(good)
    found.rejects.extend(dup_rejects)
    if not good:
        raise UsageError(f"{found.origin}: no usable audio found ({len(found.rejects)} files rejected)")
    good.sort(key=lambda r: r["source"])
    for uid, r in enumerate(good):
        r["uid"] = uid
    classes = [] if unlabeled else sorted({r["label"] for r in good})
    return good, classes, duplicates


def write_splits(out: str, work: str, splits: dict[str, list[dict]], classes: list[str], max_per_shard: int,
                 min_shards: int, progress: bool) -> tuple[dict[str, dict], dict[str, str]]:
    """The write stage: each split's records into its tars (core.shards.write_shard). Returns the
    manifest's "splits" and "files" entries."""
    from tqdm import tqdm

    class_index = {c: i for i, c in enumerate(classes)}
    names = [s for s in ALL_SPLITS if s in splits]
    split_info, files = {}, {}

    def wav_of(key: str) -> bytes:
        with open(_work_paths(work, key)[0], "rb") as f:
            return f.read()
    with tqdm(total=sum(shard_count(len(splits[s]), max_per_shard, min_shards) for s in names), desc="shards",
              unit="shard", disable=not progress) as bar:
        for s in names:
            rs = splits[s]
            n_sh = shard_count(len(rs), max_per_shard, min_shards)
            bounds = np.linspace(0, len(rs), n_sh + 1).round().astype(int) if n_sh else [0]
            tars = [shard_name(s, i) for i in range(n_sh)]
            for i, name in enumerate(tars):
                part = rs[bounds[i]:bounds[i + 1]]
                files.update(write_shard(os.path.join(out, name), part, wav_of, class_index))
                for r in part:
                    r["split"], r["shard"] = s, name
                bar.update()
            split_info[s] = {"shards": tars, "count": len(rs),
                             "per_class": {c: sum(r["label"] == c for r in rs) for c in classes},
                             "seconds": round(sum(r["duration"] for r in rs), 2)}
    return split_info, files


def resolve_duplicates(good: list[dict]) -> tuple[list[dict], list[dict], list[dict]]:
    """Identical decoded audio: keep the first copy under one label, reject it under two labels."""
    by_hash = defaultdict(list)
    for r in sorted(good, key=lambda r: r["source"]):
        by_hash[r["pcm_sha256"]].append(r)
    keep, rejects, report = [], [], []
    for rs in by_hash.values():
        if len(rs) == 1:
            keep.append(rs[0])
            continue
        labels = sorted({r["label"] for r in rs})
        report.append({"sources": [r["source"] for r in rs], "labels": labels})
        if len(labels) > 1:
            for r in rs:
                rejects.append(_reject(r["source"], "label_conflict",
                                       f"same audio appears under labels {', '.join(labels)}"))
        else:
            keep.append(rs[0])
            for r in rs[1:]:
                rejects.append(_reject(r["source"], "duplicate", f"same audio as {rs[0]['source']}"))
    return keep, rejects, report


def verify(out: str) -> list[str]:
    """Check every byte of a shard folder, local or remote (s3://, gs://, http(s)://), against its
    manifest; one line per problem.

    Each tar and index must have the sha256 the manifest records. Where a tar differs, its
    samples are compared member by member with the bytes the manifest implies (the WAV by its
    sha256, the label, class, uid and metadata rebuilt from the sample record), so the problem
    names the shard, the sample and the member. A remote folder's files are downloaded one at a
    time into a temporary folder (storage/upload.py) and checked the same way. A remote folder
    that cannot be read raises storage.store.StorageError (one line).
    """
    try:
        m = read_manifest(out, allow_unverified=True)  # a file without a checksum is one of the problems named
    except (FileNotFoundError, ValueError) as e:
        raise UsageError(str(e)) from None
    if m.version < 2:
        raise UsageError(f"{m.path}: manifest version {m.version} records no file checksums; rerun make_shards")
    if is_remote(out):
        from storage.folder import remote_files
        with remote_files(out, m.sizes) as open_file:
            return check_files(m, open_file)
    return check_files(m, lambda name: _local_file(out, name))


@contextlib.contextmanager
def _local_file(folder: str, name: str) -> Iterator[str | None]:
    path = os.path.join(folder, check_name(name, os.path.join(folder, MANIFEST)))
    yield path if os.path.isfile(path) else None


def summary_line(m: dict) -> str:
    names = [s for s in (*SPLITS, UNLABELED_SPLIT) if s in m["splits"]]
    n_ok = sum(m["splits"][s]["count"] for s in names)
    reasons = Counter(r["reason"] for r in m["rejects"])
    rej = ", ".join(f"{k} {v}" for k, v in sorted(reasons.items())) or "none"
    counts = " / ".join(f"{m['splits'][s]['count']} {s}" for s in names)
    n_warn = sum(bool(smp.get("warnings")) for smp in m["samples"])
    warn = f", {n_warn} with warnings (see manifest)" if n_warn else ""
    if m.get("outside_source"):
        warn += (f", {len(m['outside_source'])} from outside the source folder (manifest outside_source; "
                 f"--strict refuses them)")
    return (f"accepted {n_ok} ({counts}), rejected {len(m['rejects'])} ({rej}), "
            f"{m['total_seconds'] / 3600:.2f} h of audio, "
            f"{'unlabeled' if m.get('unlabeled') else str(len(m['classes'])) + ' classes'}{warn}")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, like every other input error
        print(f"make_shards: error: {message} (see --help)", file=sys.stderr)
        sys.exit(2)


def verify_main(folder: str) -> int:
    """make_shards.py --verify OUT: one line per problem, then OK or the count; exit 0, 1 or 2."""
    try:
        problems = verify(folder)
    except (UsageError, StorageError) as e:
        print(f"make_shards: error: {printable(str(e))}", file=sys.stderr)
        return 2
    for line in problems:
        print(f"verify: {printable(line)}", file=sys.stderr)
    print(f"verify: {folder}: {'OK' if not problems else f'{len(problems)} problem(s)'}")
    return 1 if problems else 0


def parse_args(argv: list[str]) -> argparse.Namespace:
    """The build's arguments, checked; args.src and args.out resolved from the positional paths."""
    p = _Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                usage="make_shards.py SRC [OUT|s3://bucket/prefix/] [options]\n       make_shards.py --list FILE [SRC] [OUT] [options]"
                      "\n       make_shards.py --unlabeled SRC [OUT] [options]\n       make_shards.py --verify OUT")
    p.add_argument("paths", nargs="*", metavar="[SRC] OUT",
                   help="SRC: folder of class folders (or GTZAN's genres_original/); with --list, optional base "
                        "folder for the list's relative paths. OUT: output folder (default: shards/), or "
                        "s3://bucket/prefix/ or gs://bucket/prefix/ (built in --staging, then uploaded)")
    p.add_argument("--list", dest="list_file", metavar="FILE",
                   help="CSV/TSV of path,label[,split] rows instead of class folders")
    p.add_argument("--split", choices=SPLIT_METHODS, default=None,
                   help="random (stratified, seeded; default), list (the list's split column; default when "
                        "it has one) or gtzan-filtered (the published fault-filtered GTZAN split)")
    p.add_argument("--val", type=float, default=0.1, help="fraction of each class for validation (--split random)")
    p.add_argument("--test", type=float, default=0.1, help="fraction of each class for test (--split random)")
    p.add_argument("--seed", type=int, default=0, help="split seed")
    p.add_argument("--workers", type=int, default=None, help="decode processes (default: all cores)")
    p.add_argument("--min-seconds", type=float, default=MIN_SECONDS, help="reject shorter clips")
    p.add_argument("--max-seconds", type=float, default=MAX_SECONDS,
                   help="keep only the first N seconds of longer tracks (0: only the decoder's own cap, "
                        "600 s at 192 kHz)")
    p.add_argument("--max-per-shard", type=int, default=256, help="samples per tar at most")
    p.add_argument("--min-shards", type=int, default=8, help="tars per split at least (if enough samples)")
    p.add_argument("--sample-rate", type=int, default=FeatureSpec.sample_rate, help="stored sample rate")
    p.add_argument("--unlabeled", action="store_true",
                   help="SRC is a collection without class folders: every file in one split ('all'), no labels "
                        "(for predict.py --shards)")
    p.add_argument("--strict", action="store_true",
                   help="reject files whose real path lies outside SRC (a list's absolute or ../ paths, symlinked "
                        "folders or files); without it they are kept and listed in the manifest's outside_source")
    p.add_argument("--staging", metavar="DIR", default=None,
                   help="remote OUT only: where the shards are built before the upload (default: "
                        "~/.cache/parallel_tunes/staging/<hash of OUT>); a rerun resumes there")
    p.add_argument("--version", action="version", version=f"ParallelTunes {version()}")
    args = p.parse_intermixed_args(argv)
    if args.list_file is None and not 1 <= len(args.paths) <= 2:
        p.error("give SRC [OUT], or --list FILE [SRC] [OUT]")
    if len(args.paths) > 2:
        p.error(f"too many paths: {' '.join(args.paths)}")
    if args.list_file is not None:
        args.src, args.out = (None, args.paths[0] if args.paths else "shards") if len(args.paths) < 2 else args.paths
    else:
        args.src, args.out = args.paths[0], (args.paths[1] if len(args.paths) == 2 else "shards")
    if not (0 <= args.val < 1 and 0 <= args.test < 1 and args.val + args.test < 1):
        p.error("--val and --test must be fractions with val + test < 1")
    for name in ("workers", "max_per_shard", "min_shards", "sample_rate"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.min_seconds < 0 or args.max_seconds < 0:
        p.error("--min-seconds and --max-seconds must not be negative")
    if args.staging is not None and not is_remote(args.out):
        p.error("--staging is for a remote OUT (s3://, gs://) only")
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--verify"]:
        if len(argv) != 2:
            print("usage: make_shards.py --verify OUT", file=sys.stderr)
            return 2
        return verify_main(argv[1])
    args = parse_args(argv)
    remote, uploaded = is_remote(args.out), ""
    try:
        if remote:  # build locally in the staging folder, then upload (storage/upload.py)
            from tqdm import tqdm

            from storage.store import Store
            from storage.upload import check_destination, clear_staging, default_staging, upload
            log = lambda line: tqdm.write(f"make_shards: {line}", file=sys.stderr)  # noqa: E731 - retries
            check_destination(args.out, log)
            store = Store(args.out, log=log)
        build = (args.staging or default_staging(args.out)) if remote else args.out
        if remote:  # its files are uploaded as they are: a private state folder (core.folders)
            from core.folders import UnsafeFolder, state_folder
            try:
                state_folder(build, "staging folder")
            except UnsafeFolder as e:
                raise UsageError(str(e)) from None
        manifest = make_shards(args.src, build, list_file=args.list_file, split=args.split, val=args.val,
                               test=args.test, seed=args.seed, workers=args.workers, min_seconds=args.min_seconds,
                               max_seconds=args.max_seconds or None, max_per_shard=args.max_per_shard,
                               min_shards=args.min_shards, spec=FeatureSpec(sample_rate=args.sample_rate),
                               unlabeled=args.unlabeled, keep_work=remote, strict=args.strict)
        if remote:
            n, size, kept = upload(build, store, after_each=lambda i: fault_point("uploads", i))
            clear_staging(build)
            uploaded = f"{store.shown_root}: uploaded {n} file(s), {size / 1e6:.1f} MB ({kept} already there)"
    except (UsageError, StorageError, OSError) as e:  # OSError: e.g. disk full or OUT not writable; names the file
        print(f"make_shards: error: {printable(str(e))}", file=sys.stderr)
        return 2
    if uploaded:
        print(uploaded)
    print(summary_line(manifest))
    return 0


if __name__ == "__main__":
    sys.exit(main())
