"""Pack a folder-per-class audio collection into WebDataset tar shards for DALI.

    python preprocess/make_shards.py SRC OUT [--val 0.1] [--test 0.1] [--seed 0] [--workers N]
    python preprocess/make_shards.py --verify OUT     # re-read shards, check against the manifest

SRC is GTZAN's layout or any folder-per-class tree (SRC/<class>/**/<file>; a single
`genres_original/` or `genres/` folder inside SRC is entered). Every file is decoded (format
detected by content), validated, downmixed, resampled to the feature rate with an anti-aliasing
filter and stored as 16-bit PCM WAV. Output:

    OUT/{train,val,test}-NNNNNN.tar   samples <key>.wav/.cls/.lab/.uid/.json
    OUT/{train,val,test}-NNNNNN.idx   DALI index for each shard
    OUT/manifest.json                 classes, counts, FeatureSpec, samples, rejects

Each input file ends up either in one shard or in the manifest's reject list with a reason.
Decoded clips are staged in OUT/.work/ first, so an interrupted run continues where it stopped.
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import math
import os
import re
import shutil
import sys
import tarfile
import unicodedata
from collections import Counter, defaultdict
from dataclasses import dataclass
from multiprocessing import get_context

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pipeline.spec import FeatureSpec  # noqa: E402

SPLITS = ("train", "val", "test")
MANIFEST_VERSION = 1


@dataclass
class Item:
    path: str            # absolute path
    rel: str             # path relative to SRC, as shown to users
    label: str | None


def find_inputs(src: str) -> tuple[list[Item], list[str], list[dict]]:
    """Walk SRC. Returns (items with a class folder, empty class folders, rejects)."""
    root = src
    subdirs = [d for d in os.listdir(src) if not d.startswith(".")]
    for name in ("genres_original", "genres"):
        if subdirs == [name] and os.path.isdir(os.path.join(src, name)):
            root = os.path.join(src, name)
    items, empty, rejects = [], [], []
    for entry in sorted(os.listdir(root)):
        full = os.path.join(root, entry)
        if entry.startswith("."):
            continue
        if os.path.isfile(full):
            rejects.append(_reject(os.path.relpath(full, src), "no_class_folder",
                                   "file is not inside a class folder"))
            continue
        found = []
        for dirpath, dirnames, filenames in os.walk(full):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for fn in sorted(filenames):
                if fn.startswith("."):
                    continue
                p = os.path.join(dirpath, fn)
                found.append(Item(p, os.path.relpath(p, src), entry))
        if not found:
            empty.append(entry)
        items.extend(found)
    return items, empty, rejects


def _reject(rel: str, reason: str, message: str) -> dict:
    return {"path": rel, "reason": reason, "message": message}


def sample_key(item: Item) -> str:
    """WebDataset key: readable, unique, and free of dots (DALI splits names at the first dot)."""
    stem = unicodedata.normalize("NFKD", os.path.splitext(os.path.basename(item.rel))[0])
    slug = re.sub(r"[^A-Za-z0-9_-]+", "_", stem.encode("ascii", "ignore").decode()).strip("_")[:48]
    digest = hashlib.sha1(item.rel.encode("utf-8")).hexdigest()[:10]
    return f"{slug or 'clip'}_{digest}"


# ---------------------------------------------------------------- decode stage (parallel, cached)

def _work_paths(work: str, key: str) -> tuple[str, str]:
    return os.path.join(work, key + ".wav"), os.path.join(work, key + ".json")


def _atomic_write(path: str, data: bytes) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _init_worker() -> None:
    import torch
    torch.set_num_threads(1)


def decode_one(job: tuple[Item, str, str, float, float | None, int]) -> dict:
    """Decode one input into OUT/.work (or reuse a previous run's result). Returns its record."""
    item, key, work, min_seconds, max_seconds, rate = job
    wav_path, meta_path = _work_paths(work, key)
    if os.path.exists(meta_path):  # finished by an earlier, interrupted run
        with open(meta_path, encoding="utf-8") as f:
            return json.load(f)
    import soundfile as sf
    from pipeline.audio import AudioError, decode, to_pcm16

    record: dict = {"key": key, "source": item.rel, "label": item.label}
    try:
        d = decode(item.path, rate, max_seconds)
        pcm = to_pcm16(d.samples)
        duration = len(pcm) / rate
        if duration < min_seconds:
            raise AudioError("too_short", f"{duration:.2f} s is shorter than --min-seconds {min_seconds:g}")
        buf = io.BytesIO()
        sf.write(buf, pcm, rate, format="WAV", subtype="PCM_16")
        _atomic_write(wav_path, buf.getvalue())
        record.update(ok=True, duration=round(duration, 4), frames=len(pcm),
                      pcm_sha256=hashlib.sha256(pcm.tobytes()).hexdigest(),
                      source_rate=d.source_rate, source_channels=d.channels, source_format=d.source_format,
                      clipped=max_seconds is not None and d.source_frames > int(max_seconds * d.source_rate))
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
    for s in SPLITS:  # interleave classes: DALI shards by sample position across ranks
        rs = sorted(out[s], key=lambda r: r["key"])
        out[s] = [rs[i] for i in np.random.default_rng([seed, 99, SPLITS.index(s)]).permutation(len(rs))]
    return out


def shard_count(n: int, max_per_shard: int, min_shards: int) -> int:
    if n == 0:
        return 0
    return max(math.ceil(n / max_per_shard), min(min_shards, n))


def write_shard(path: str, samples: list[dict], work: str, class_index: dict[str, int]) -> None:
    """Write one tar + DALI index atomically; fixed tar metadata makes the bytes reproducible."""
    import webdataset as wds
    from wds2idx import IndexCreator

    tmp = path + ".partial"
    with open(tmp, "wb") as f:
        tw = wds.TarWriter(f, user="", group="", mode=0o444, mtime=0)
        for r in samples:
            wav_path, _ = _work_paths(work, r["key"])
            with open(wav_path, "rb") as w:
                wav = w.read()
            label = class_index[r["label"]]
            meta = {k: r[k] for k in ("source", "label", "duration", "pcm_sha256")}
            tw.write({"__key__": r["key"], "wav": wav, "cls": str(label).encode(),
                      "lab": np.int32(label).tobytes(), "uid": np.int64(r["uid"]).tobytes(),
                      "json": json.dumps(meta, sort_keys=True, ensure_ascii=False).encode()})
        tw.close()
        f.flush()
        os.fsync(f.fileno())
    idx, idx_tmp = path[:-4] + ".idx", path[:-4] + ".idx.partial"
    with IndexCreator(tmp, idx_tmp, verbose=False) as ic:
        ic.create_index()
    os.replace(idx_tmp, idx)
    os.replace(tmp, path)  # the tar appears last: a .tar present means its .idx is complete


# ---------------------------------------------------------------- main

def make_shards(src: str, out: str, *, val: float = 0.1, test: float = 0.1, seed: int = 0,
                workers: int | None = None, min_seconds: float = 1.0, max_seconds: float | None = 600.0,
                max_per_shard: int = 256, min_shards: int = 8, spec: FeatureSpec | None = None,
                progress: bool = True) -> dict:
    """Build the shards and manifest; returns the manifest. Raises SystemExit(2) if nothing usable."""
    from tqdm import tqdm

    spec = spec or FeatureSpec()
    if not os.path.isdir(src):
        raise UsageError(f"{src}: not a directory")
    items, empty_classes, rejects = find_inputs(src)
    os.makedirs(out, exist_ok=True)
    work = os.path.join(out, ".work")
    os.makedirs(work, exist_ok=True)
    keys = [sample_key(it) for it in items]
    jobs = [(it, k, work, min_seconds, max_seconds, spec.sample_rate) for it, k in zip(items, keys)]
    workers = workers or os.cpu_count() or 1
    records = []
    bar = tqdm(total=len(jobs), desc="decode", unit="file", disable=not progress)
    if workers > 1 and len(jobs) > 1:
        with get_context("spawn").Pool(workers, initializer=_init_worker) as pool:
            for r in pool.imap(decode_one, jobs, chunksize=2):
                records.append(r)
                bar.update()
    else:
        for j in jobs:
            records.append(decode_one(j))
            bar.update()
    bar.close()

    good = []
    for r in records:
        if r["ok"]:
            good.append(r)
        else:
            rejects.append(_reject(r["source"], r["reason"], r["message"]))
    good, dup_rejects, duplicates = resolve_duplicates(good)
    rejects.extend(dup_rejects)
    classes = sorted({r["label"] for r in good})
    if not good:
        raise UsageError(f"{src}: no usable audio found ({len(rejects)} files rejected)")
    class_index = {c: i for i, c in enumerate(classes)}
    good.sort(key=lambda r: r["source"])
    for uid, r in enumerate(good):
        r["uid"] = uid

    splits = split_tracks(good, classes, val, test, seed)
    for name in os.listdir(out):  # shards of an earlier, different run must not mix with these
        if re.fullmatch(r"(train|val|test)-\d{6}\.(tar|idx)(\.partial)?", name):
            os.remove(os.path.join(out, name))
    split_info = {}
    n_total_shards = sum(shard_count(len(splits[s]), max_per_shard, min_shards) for s in SPLITS)
    sbar = tqdm(total=n_total_shards, desc="shards", unit="shard", disable=not progress)
    for s in SPLITS:
        rs = splits[s]
        n_sh = shard_count(len(rs), max_per_shard, min_shards)
        bounds = np.linspace(0, len(rs), n_sh + 1).round().astype(int) if n_sh else [0]
        names = []
        for i in range(n_sh):
            name = f"{s}-{i:06d}.tar"
            part = rs[bounds[i]:bounds[i + 1]]
            write_shard(os.path.join(out, name), part, work, class_index)
            for r in part:
                r["split"], r["shard"] = s, name
            names.append(name)
            sbar.update()
        split_info[s] = {"shards": names, "count": len(rs),
                         "per_class": {c: sum(r["label"] == c for r in rs) for c in classes},
                         "seconds": round(sum(r["duration"] for r in rs), 2)}
    sbar.close()

    manifest = {
        "version": MANIFEST_VERSION,
        "classes": classes,
        "feature_spec": spec.to_dict(),
        "sample_rate": spec.sample_rate,
        "storage": "wav/pcm16",
        "splits": split_info,
        "total_seconds": round(sum(r["duration"] for r in good), 2),
        "options": {"val": val, "test": test, "seed": seed, "min_seconds": min_seconds,
                    "max_seconds": max_seconds, "max_per_shard": max_per_shard, "min_shards": min_shards},
        "inputs": len(items) + sum(r["reason"] == "no_class_folder" for r in rejects),
        "empty_class_folders": empty_classes,
        "duplicates": duplicates,
        "samples": [{k: r[k] for k in ("uid", "key", "source", "label", "split", "shard", "duration",
                                       "pcm_sha256", "source_rate", "source_channels", "source_format", "clipped")}
                    for r in good],
        "rejects": sorted(rejects, key=lambda r: r["path"]),
    }
    _atomic_write(os.path.join(out, "manifest.json"),
                  json.dumps(manifest, indent=1, sort_keys=True, ensure_ascii=False).encode("utf-8"))
    shutil.rmtree(work, ignore_errors=True)
    return manifest


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


class UsageError(Exception):
    pass


def verify(out: str) -> list[str]:
    """Re-read every shard and index; compare keys, counts and PCM checksums with the manifest."""
    import soundfile as sf

    path = os.path.join(out, "manifest.json")
    if not os.path.isfile(path):
        raise UsageError(f"{path}: no manifest")
    with open(path, encoding="utf-8") as f:
        m = json.load(f)
    expected = defaultdict(dict)
    for smp in m["samples"]:
        expected[smp["shard"]][smp["key"]] = smp
    problems = []
    for split in SPLITS:
        seen = 0
        for name in m["splits"][split]["shards"]:
            tar, idx = os.path.join(out, name), os.path.join(out, name[:-4] + ".idx")
            if not os.path.isfile(tar) or not os.path.isfile(idx):
                problems.append(f"{name}: tar or index file missing")
                continue
            try:
                found = _read_shard(tar)
            except (tarfile.TarError, OSError, EOFError) as e:
                problems.append(f"{name}: unreadable tar ({e})")
                continue
            want = expected.get(name, {})
            for key in sorted(set(want) ^ set(found)):
                problems.append(f"{name}: sample {key} is {'missing' if key in want else 'not in the manifest'}")
            for key in sorted(set(want) & set(found)):
                try:
                    pcm, _ = sf.read(io.BytesIO(found[key]["wav"]), dtype="int16")
                except (sf.LibsndfileError, RuntimeError, KeyError) as e:
                    problems.append(f"{name}: sample {key} audio unreadable ({e})")
                    continue
                if hashlib.sha256(pcm.tobytes()).hexdigest() != want[key]["pcm_sha256"]:
                    problems.append(f"{name}: sample {key} audio checksum differs from the manifest")
            idx_lines = open(idx, encoding="utf-8").read().split("\n")
            header = idx_lines[0].split()
            if len(header) != 2 or int(header[1]) != len(found):
                problems.append(f"{name[:-4]}.idx: index lists {header[1:] or '?'} samples, tar holds {len(found)}")
            seen += len(found)
        if seen != m["splits"][split]["count"]:
            problems.append(f"{split}: {seen} samples in shards, manifest says {m['splits'][split]['count']}")
    return problems


def _read_shard(tar: str) -> dict[str, dict[str, bytes]]:
    samples: dict[str, dict[str, bytes]] = defaultdict(dict)
    with tarfile.open(tar) as tf:
        for member in tf:
            if member.isfile():
                key, ext = member.name.split(".", 1)
                samples[key][ext] = tf.extractfile(member).read()
    return samples


def summary_line(m: dict) -> str:
    n_ok = sum(m["splits"][s]["count"] for s in SPLITS)
    reasons = Counter(r["reason"] for r in m["rejects"])
    rej = ", ".join(f"{k} {v}" for k, v in sorted(reasons.items())) or "none"
    counts = " / ".join(f"{m['splits'][s]['count']} {s}" for s in SPLITS)
    return (f"accepted {n_ok} ({counts}), rejected {len(m['rejects'])} ({rej}), "
            f"{m['total_seconds'] / 3600:.2f} h of audio, {len(m['classes'])} classes")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    if argv is None:
        argv = sys.argv[1:]
    if argv[:1] == ["--verify"]:
        if len(argv) != 2:
            print("usage: make_shards.py --verify OUT", file=sys.stderr)
            return 2
        try:
            problems = verify(argv[1])
        except UsageError as e:
            print(f"make_shards: error: {e}", file=sys.stderr)
            return 2
        for line in problems:
            print(f"verify: {line}", file=sys.stderr)
        print(f"verify: {argv[1]}: {'OK' if not problems else f'{len(problems)} problem(s)'}")
        return 1 if problems else 0
    p.add_argument("src", help="folder of class folders (or GTZAN's genres_original/)")
    p.add_argument("out", nargs="?", default="shards", help="output folder (default: shards/)")
    p.add_argument("--val", type=float, default=0.1, help="fraction of each class for validation")
    p.add_argument("--test", type=float, default=0.1, help="fraction of each class for test")
    p.add_argument("--seed", type=int, default=0, help="split seed")
    p.add_argument("--workers", type=int, default=None, help="decode processes (default: all cores)")
    p.add_argument("--min-seconds", type=float, default=1.0, help="reject shorter clips")
    p.add_argument("--max-seconds", type=float, default=600.0,
                   help="keep only the first N seconds of longer tracks (0: no limit)")
    p.add_argument("--max-per-shard", type=int, default=256, help="samples per tar at most")
    p.add_argument("--min-shards", type=int, default=8, help="tars per split at least (if enough samples)")
    p.add_argument("--sample-rate", type=int, default=FeatureSpec.sample_rate, help="stored sample rate")
    a = p.parse_args(argv)
    if not (0 <= a.val < 1 and 0 <= a.test < 1 and a.val + a.test < 1):
        print("make_shards: error: --val and --test must be fractions with val + test < 1", file=sys.stderr)
        return 2
    try:
        m = make_shards(a.src, a.out, val=a.val, test=a.test, seed=a.seed, workers=a.workers,
                        min_seconds=a.min_seconds, max_seconds=a.max_seconds or None,
                        max_per_shard=a.max_per_shard, min_shards=a.min_shards,
                        spec=FeatureSpec(sample_rate=a.sample_rate))
    except UsageError as e:
        print(f"make_shards: error: {e}", file=sys.stderr)
        return 2
    print(summary_line(m))
    return 0


if __name__ == "__main__":
    sys.exit(main())
