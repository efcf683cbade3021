"""The clips every benchmark reads: a folder of class folders (or generated ones), packed into shards.

`prepare` does it all: the source (--src, or synthetic 30 s clips generated once into the cache),
a class-balanced subset of --clips files, their shards (preprocess.make_shards, cached by the files'
names, sizes, mtimes and the FeatureSpec), one row per clip that every method reads, and a warm
page cache. Without DALI or webdataset the shards cannot be made: the file-based methods still run.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from bench.harness import log as _log

SPLIT = "train"  # make_shards(val=0, test=0) puts every clip in 'train'


def _synth_genre(out: str, per_class: int, genre: str) -> int:
    from preprocess.synth import generate
    return len(generate(out, per_class=per_class, seconds=30.0, genres=[genre], progress=False))


def synth_source(cache: str, clips: int, log: Callable[[str], None] = _log) -> str:
    """Generate (once) the default data: 30 s synthetic clips, at least 20 per class, one process per
    genre up to the cores (each clip's random stream depends on its genre and index only, so the
    clips are the same as one process makes; on the GPU check's clock this matters)."""
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    from preprocess.synth import GENRES
    per_class = max(20, math.ceil(clips / len(GENRES)))
    out = os.path.join(cache, f"synth-pc{per_class}-30s")
    done = os.path.join(out, ".done")
    if not os.path.exists(done):
        workers = min(len(GENRES), os.cpu_count() or 1)
        log(f"generating {per_class * len(GENRES)} synthetic clips of 30 s into {out} (once, {workers} processes)")
        t = time.perf_counter()
        with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:  # spawn: no forked threads
            n = sum(pool.map(_synth_genre, [out] * len(GENRES), [per_class] * len(GENRES), GENRES))
        if n != per_class * len(GENRES):
            raise RuntimeError(f"generated {n} clips, expected {per_class * len(GENRES)}")
        with open(done, "w") as f:
            f.write("ok\n")
        log(f"  generated in {time.perf_counter() - t:.0f} s")
    return out


def select_clips(src: str, n: int) -> list[Any]:
    """Up to n input files of SRC, taken round-robin across classes so a subset stays balanced."""
    from preprocess.make_shards import find_inputs
    items, _, _ = find_inputs(src)
    by_class: dict[str, list[Any]] = {}
    for it in items:
        by_class.setdefault(it.label, []).append(it)
    queues = [by_class[c] for c in sorted(by_class)]
    chosen: list[Any] = []
    i = 0
    while len(chosen) < n and any(i < len(q) for q in queues):
        chosen.extend(q[i] for q in queues if i < len(q))
        i += 1
    return sorted(chosen[:n], key=lambda it: it.rel)


def build_shards(src: str, chosen: list[Any], cache: str, spec: Any, log: Callable[[str], None] = _log
                 ) -> tuple[str, dict]:
    """Pack exactly the chosen files into shards (cached by their names, sizes, mtimes and spec).

    make_shards takes a folder, so the chosen files are linked into a selection folder first.
    """
    from preprocess.make_shards import make_shards
    sig = [(it.rel, os.path.getsize(it.path), os.stat(it.path).st_mtime_ns) for it in chosen]
    key = hashlib.sha1(json.dumps([os.path.abspath(src), sig, spec.to_dict()]).encode()).hexdigest()[:12]
    shard_dir = os.path.join(cache, f"shards-{key}")
    manifest_path = os.path.join(shard_dir, "manifest.json")
    if os.path.exists(manifest_path):
        with open(manifest_path, encoding="utf-8") as f:
            return shard_dir, json.load(f)
    sel = os.path.join(cache, f"sel-{key}")
    for it in chosen:
        link = os.path.join(sel, it.rel)
        os.makedirs(os.path.dirname(link), exist_ok=True)
        if not os.path.lexists(link):
            os.symlink(os.path.abspath(it.path), link)
    log(f"packing {len(chosen)} clips into shards in {shard_dir} (once)")
    t = time.perf_counter()
    manifest = make_shards(sel, shard_dir, val=0, test=0, seed=0, workers=os.cpu_count(), spec=spec,
                           progress=False)
    log(f"  packed in {time.perf_counter() - t:.0f} s")
    return shard_dir, manifest


def clip_table(chosen: list[Any], manifest: dict | None) -> tuple[list[dict], list[str], list[str]]:
    """Per clip: idx, file path, rel, DALI uid, seconds, label (index into the classes). Returns
    (rows, classes, notes). Clips make_shards rejected are dropped everywhere."""
    notes = []
    if manifest is None:
        import soundfile as sf
        classes = sorted({it.label for it in chosen})
        rows = []
        for it in chosen:
            try:
                info = sf.info(it.path)
            except Exception:  # noqa: BLE001 - unreadable input: leave it out of every method
                continue
            rows.append({"path": it.path, "rel": it.rel, "uid": None, "seconds": info.frames / info.samplerate,
                         "label": classes.index(it.label)})
        return [dict(r, idx=i) for i, r in enumerate(rows)], classes, notes
    classes = manifest["classes"]
    by_rel = {it.rel: it for it in chosen}
    rows = [{"path": by_rel[s["source"]].path, "rel": s["source"], "uid": s["uid"], "seconds": s["duration"],
             "label": classes.index(s["label"])} for s in sorted(manifest["samples"], key=lambda s: s["source"])]
    if manifest["rejects"]:
        notes.append(f"{len(manifest['rejects'])} input files rejected by make_shards and left out of every method")
    return [dict(r, idx=i) for i, r in enumerate(rows)], classes, notes


def warm_page_cache(paths: list[str]) -> float:
    """Read every input once, so no method pays the first disk read. Returns MB read."""
    total = 0
    for p in paths:
        with open(p, "rb") as f:
            while chunk := f.read(1 << 22):
                total += len(chunk)
    return total / 1e6


@dataclass
class DataSet:
    src: str
    synthetic: bool
    items: list[dict]                 # clip_table rows: what every method reads
    classes: list[str]
    shard_dir: str | None = None      # None: make_shards could not run (shard_error says why)
    shard_error: str | None = None
    manifest: dict | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def total_seconds(self) -> float:
        return sum(it["seconds"] for it in self.items)

    @property
    def other_rate(self) -> int:
        """Clips whose source is not at the shards' rate: the file methods resample them every pass."""
        m = self.manifest
        return sum(s["source_rate"] != m["sample_rate"] for s in m["samples"]) if m else 0


def prepare(src: str | None, clips: int, cache: str, spec: Any, *, log: Callable[[str], None] = _log,
            warm: bool = True) -> DataSet:
    """The clips (SRC, or synthetic ones in CACHE), their cached shards, their table; exits with status 2
    and a message when SRC holds no audio in class folders."""
    cache = os.path.abspath(cache)  # shard paths go into jobs for children that run in the repository root
    os.makedirs(cache, exist_ok=True)
    src_dir = os.path.abspath(src) if src else synth_source(cache, clips, log)
    chosen = select_clips(src_dir, clips)
    if not chosen:
        log(f"error: no audio files in class folders under {src_dir}")
        raise SystemExit(2)
    ds = DataSet(src_dir, src is None, [], [])
    if len(chosen) < clips:
        ds.notes.append(f"--clips {clips} asked, {len(chosen)} available in {src_dir}")
    try:
        ds.shard_dir, ds.manifest = build_shards(src_dir, chosen, cache, spec, log)
    except Exception as e:  # noqa: BLE001 - e.g. no DALI (wds2idx) or webdataset: the file methods still run
        ds.shard_error = f"{type(e).__name__}: {e}"
        log(f"make_shards failed, the DALI methods will be skipped: {ds.shard_error}")
    ds.items, ds.classes, more = clip_table(chosen, ds.manifest)
    ds.notes += more
    log(f"{len(ds.items)} clips, {ds.total_seconds / 60:.1f} min of audio, {len(ds.classes)} classes, from {src_dir}")
    if warm:
        shard_files = [os.path.join(ds.shard_dir, f) for f in os.listdir(ds.shard_dir)] if ds.shard_dir else []
        t = time.perf_counter()
        mb = warm_page_cache([it["path"] for it in ds.items] + [f for f in shard_files if os.path.isfile(f)])
        log(f"page cache warmed: {mb:.0f} MB read in {time.perf_counter() - t:.1f} s")
    return ds
