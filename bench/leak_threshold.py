"""How the leak check's threshold was chosen: nearest cross-split similarities of a clean collection
against those of planted copies.

    python -m bench.leak_threshold SRC [--copies 40] [--out bench/results/leak-threshold-<host>-<date>.json]

SRC is a folder of class folders (preprocess/synth.py output). It is sharded twice with the same
split (make_shards --list): as it is, and with `--copies` training tracks copied under another
name into val or test, each re-encoded (OGG Vorbis or FLAC, alternately) with a gain drawn from
-6..+6 dB. For both, the per-track statistics and loudness envelopes come from the DALI graph
(analysis.logmel_stats) and analysis.leaks compares every candidate pair. Printed and written: the
clean set's highest candidate correlation per track (the threshold must lie above all of it) and
each planted copy's correlation with its original (the threshold must lie below), and the same for
the statistics' cosine alone (why statistics only pick the candidates).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np


def list_rows(src: str, seed: int) -> list[tuple[str, str, str]]:
    """(relative path, label, split) of every WAV below SRC/<class>/, split 80/10/10 per class, seeded."""
    rng = np.random.default_rng(seed)
    rows = []
    for label in sorted(os.listdir(src)):
        folder = os.path.join(src, label)
        if not os.path.isdir(folder):
            continue
        names = sorted(n for n in os.listdir(folder) if n.endswith(".wav"))
        order = rng.permutation(len(names))
        n_val = n_test = max(1, len(names) // 10)
        for k, i in enumerate(order):
            split = "val" if k < n_val else "test" if k < n_val + n_test else "train"
            rows.append((f"{label}/{names[i]}", label, split))
    return rows


def plant(src: str, rows: list[tuple[str, str, str]], copies: int, out_dir: str, seed: int) -> list[tuple]:
    """Write `copies` re-encoded, re-levelled copies of training tracks into out_dir; return their rows
    (absolute path, label, split, the original's relative path, format, gain dB)."""
    import soundfile as sf

    rng = np.random.default_rng(seed + 1)
    train = [r for r in rows if r[2] == "train"]
    picks = rng.choice(len(train), size=min(copies, len(train)), replace=False)
    os.makedirs(out_dir, exist_ok=True)
    planted = []
    for k, i in enumerate(picks):
        rel, label, _ = train[i]
        audio, sr = sf.read(os.path.join(src, rel), dtype="float32")
        gain = float(rng.uniform(-6, 6))
        fmt, ext = (("OGG", "ogg") if k % 2 == 0 else ("FLAC", "flac"))
        path = os.path.join(out_dir, f"copy-{k:03d}.{ext}")
        sf.write(path, np.clip(audio * 10 ** (gain / 20), -1, 1), sr, format=fmt)
        planted.append((path, label, "val" if k % 4 < 2 else "test", rel, fmt, round(gain, 2)))
    return planted


def shard_and_measure(list_path: str, out: str) -> tuple:
    from analysis import leaks
    from analysis.logmel_stats import collect
    from preprocess.make_shards import make_shards
    from storage.folder import read_manifest

    make_shards(None, out, list_file=list_path, split="list", progress=False)
    m = read_manifest(out)
    t0 = time.perf_counter()
    stats, _ = collect(out, m, num_threads=os.cpu_count() or 1)
    seconds = time.perf_counter() - t0
    return m, stats, leaks.near_copies(stats, m.spec, threshold=-2.0), seconds  # every candidate pair listed


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("src")
    p.add_argument("--copies", type=int, default=40)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work", default=os.path.join("bench", ".cache", "leak-threshold"))
    p.add_argument("--out", default=None)
    a = p.parse_args(argv)
    from analysis.leaks import THRESHOLD, leak_features
    from bench.host import host_info, today

    src = os.path.abspath(a.src)
    rows = list_rows(src, a.seed)
    planted = plant(src, rows, a.copies, os.path.join(a.work, "copies"), a.seed)
    clean_list, dirty_list = os.path.join(a.work, "clean.csv"), os.path.join(a.work, "planted.csv")
    with open(clean_list, "w") as f:
        f.writelines(f"{os.path.join(src, r)},{l},{s}\n" for r, l, s in rows)
    with open(dirty_list, "w") as f:
        f.writelines(f"{os.path.join(src, r)},{l},{s}\n" for r, l, s in rows)
        f.writelines(f"{path},{l},{s}\n" for path, l, s, *_ in planted)
    _, clean, near_clean, sec_clean = shard_and_measure(clean_list, os.path.join(a.work, "clean"))
    m, dirty, near_dirty, sec_dirty = shard_and_measure(dirty_list, os.path.join(a.work, "planted"))
    # each planted copy against its original: statistics cosine, envelope correlation, and whether the
    # statistics stage made it a candidate at all
    x = leak_features(dirty)
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    row_of = {int(u): i for i, u in enumerate(dirty.uid)}
    uid_of = {s.source: s.uid for s in m.samples}
    found = {(a_, b_): r for a_, b_, r, _ in near_dirty.pairs}
    pairs = []
    for path, label, split, rel, fmt, gain in planted:
        ua, ub = uid_of[os.path.join(src, rel)], uid_of[path]
        r = found.get((ua, ub), found.get((ub, ua)))
        pairs.append({"original": rel, "format": fmt, "gain_db": gain, "split": split,
                      "statistics_cosine": round(float(x[row_of[ua]] @ x[row_of[ub]]), 5),
                      "candidate": r is not None, "correlation": None if r is None else round(r, 5)})
    clean_stats = leak_features(clean)
    clean_stats = clean_stats / np.linalg.norm(clean_stats, axis=1, keepdims=True)
    cross = clean.split[:, None] != clean.split[None, :]
    stats_nearest = np.where(cross, clean_stats @ clean_stats.T, -1).max(1)
    nearest = near_clean.nearest
    q = {k: round(float(np.quantile(nearest, v)), 4) for k, v in (("median", .5), ("p99", .99), ("max", 1.0))}
    qs = {k: round(float(np.quantile(stats_nearest, v)), 4) for k, v in (("median", .5), ("p99", .99), ("max", 1.0))}
    corr = np.array([p["correlation"] if p["correlation"] is not None else -1.0 for p in pairs])
    cos = np.array([p["statistics_cosine"] for p in pairs])
    result = {"tracks": len(clean.uid), "copies": len(pairs),
              "clean_nearest_candidate_correlation": q, "clean_nearest_statistics_cosine": qs,
              "planted_correlation": {"min": round(float(corr.min()), 5), "median": round(float(np.median(corr)), 5)},
              "planted_statistics_cosine": {"min": round(float(cos.min()), 5), "median": round(float(np.median(cos)), 5)},
              "planted_found_as_candidates": int(sum(p["candidate"] for p in pairs)),
              "threshold": THRESHOLD, "feature_seconds": {"clean": round(sec_clean, 1), "planted": round(sec_dirty, 1)},
              "pairs": pairs}
    print(f"{len(clean.uid)} clean tracks: highest envelope correlation among each track's candidates: median "
          f"{q['median']}, p99 {q['p99']}, max {q['max']}; nearest statistics cosine median {qs['median']}, "
          f"max {qs['max']}")
    print(f"{len(pairs)} planted copies (OGG/FLAC, -6..+6 dB): {result['planted_found_as_candidates']} were candidates; "
          f"envelope correlation min {corr.min():.4f}, median {np.median(corr):.4f}; statistics cosine min "
          f"{cos.min():.4f}; threshold {THRESHOLD}")
    out = a.out or os.path.join("bench", "results", f"leak-threshold-{host_info()['kind']}-{today()}.json")
    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    with open(out, "w") as f:
        json.dump(result, f, indent=1)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
