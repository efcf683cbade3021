"""The dataset report of a shard folder: what it holds, how hard it is, what leaks between splits.

    python preprocess/explore.py SHARDS [--out DIR]      # SHARDS: a folder, or s3:// gs:// http(s)://

Writes DIR/index.html (default DIR: reports/explore-<folder name>/), its PNG figures and example
WAVs beside it, and the same numbers in DIR/report.json (analysis/dataset_report.py says what is
in it). Features come from the training DALI graph with the folder's FeatureSpec. Prints the
linear baseline at the end. A folder that is not a shard set: one line, exit 2.
"""
from __future__ import annotations

import argparse
import os
import re
import sys

from core import version
from core.text import printable

PROG = "explore"


def default_out(shards: str) -> str:
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", os.path.basename(shards.rstrip("/")) or "shards").strip("-.") or "shards"
    return os.path.join("reports", f"explore-{name}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"ParallelTunes {version()}")
    p.add_argument("shards", help="shard folder written by make_shards (local, s3://, gs:// or http(s)://)")
    p.add_argument("--out", default=None, help="report folder (default: reports/explore-<folder name>/)")
    p.add_argument("--threads", type=int, default=None, help="DALI threads (default: all cores)")
    p.add_argument("--cache-dir", default=None, help="node-local cache for remote shards (as train.py)")
    p.add_argument("--allow-unverified", action="store_true", help="read a remote folder whose manifest lacks checksums")
    args = p.parse_args(argv)
    out = args.out or default_out(args.shards)

    from tqdm import tqdm

    from analysis.dataset_report import build
    from storage.folder import read_manifest, trust_warnings
    from storage.store import StorageError, redact

    def fail(msg: str) -> int:
        print(f"{PROG}: error: {printable(redact(msg))}", file=sys.stderr)
        return 2

    try:
        if not args.shards.startswith(("s3://", "gs://", "gcs://", "http://", "https://")) and not os.path.isdir(args.shards):
            return fail(f"{args.shards}: not a folder")
        manifest = read_manifest(args.shards, allow_unverified=args.allow_unverified)
        if manifest.unlabeled:
            return fail(f"{manifest.path}: an unlabeled collection (make_shards --unlabeled) has no classes to "
                        "explore; predict it with predict.py --shards")
        if not manifest.splits.get("train") or not manifest.splits["train"].count:
            return fail(f"{manifest.path}: no training tracks (the statistics are standardised on the train split)")
    except (FileNotFoundError, ValueError, StorageError) as e:
        return fail(str(e))
    for line in trust_warnings(args.shards, manifest):
        print(line, file=sys.stderr)
    if os.path.exists(out) and not os.path.isdir(out):
        return fail(f"{out}: exists and is not a folder")
    bar = tqdm(total=len(manifest.samples), desc="log-mel statistics", unit="track", dynamic_ncols=True)
    try:
        report = build(args.shards, manifest, out, progress=bar.update, num_threads=args.threads or os.cpu_count() or 1,
                       cache_dir=args.cache_dir, allow_unverified=args.allow_unverified,
                       log=lambda line: print(line, file=sys.stderr))
    except (ValueError, StorageError, OSError) as e:
        bar.close()
        return fail(str(e))
    bar.close()
    d = report.data
    print(f"{d['tracks']} tracks ({d['hours']:.2f} h) in {len(d['classes'])} classes; features in "
          f"{report.feature_seconds:.1f} s ({d['tracks_per_s']:.1f} tracks/s, {report.feature_cpu_seconds:.1f} s of CPU time)")
    lk = d["leaks"]
    print(f"leak check: {len(lk['near_copies'])} near copies (envelope correlation >= {lk['threshold']}), "
          f"{len(lk['exact_copies'])} exact copies across splits")
    print(f"report: {printable(os.path.join(out, 'index.html'))}")
    print(report.baseline.line())
    return 0


if __name__ == "__main__":
    sys.exit(main())
