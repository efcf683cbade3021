"""predict.py's collection mode: the genre of every track of a collection, through the sharded DALI
path, on every rank, into one JSONL or CSV file.

    python predict.py --shards SHARDS --out predictions.jsonl [--timeline] [--format csv]
    python predict.py FOLDER --out predictions.jsonl        # shards FOLDER first (make_shards --unlabeled)
    python predict.py --nproc N --shards SHARDS --out ...   # or: torchrun --nproc-per-node N predict.py ...

How it works:
- Features: the DALI evaluation graph (audio_pipeline train=False: whole tracks, padded to the
  batch, and their lengths) with the checkpoint's FeatureSpec; windows cut and averaged by
  features.windows.track_logits, as evaluation does; --timeline windows as predict.py cuts them.
  On the GPU when there is one (local rank i on cuda:i, never two ranks on one GPU); --cpu stays
  on the CPU, where the model is frozen with TorchScript (conv + BatchNorm folded, oneDNN layouts;
  --eager not) and fed 8 windows at a time (README, "A whole collection", for the figures).
- Shares: DaliLoader(rank, world_size) gives each rank its part of every split; the repeats that
  fill shards and last batches have weight 0 and are skipped: each track is predicted by one rank.
- Journal: each rank appends one complete JSON line per finished track to OUT.parts/rank-NNNNN.jsonl,
  flushed line by line, after a header line holding what the lines depend on (checkpoint sha256,
  classes, timeline hop). A torn last line (a kill mid-write) is cut off when the rank reopens it.
- Merge: after the ranks meet, rank 0 takes every track of the manifest from the parts (or from a
  finished OUT), refuses to write if one is missing, writes OUT atomically in uid (= source path)
  order, then OUT-stem.summary.json and OUT-stem.genres.png, and removes the parts. Labeled shards
  (make_shards without --unlabeled) also get each split's track accuracy in the summary.
- Ensembles: several --checkpoint are one model (model/ensemble.py); the header names them all.
- Resume: a rerun with the same --out predicts only the tracks in neither the parts nor a finished
  OUT (tracks are matched by source path, so a re-sharded folder with new files resumes too); tars
  whose tracks are all done are not read at all. Other options than the first run's (checkpoint,
  --timeline/--hop) are refused in one line.

Errors are one line, `predict: error: <file or folder>: <reason>`, exit 2.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from core.faults import fault_point
from core.shards import sha256_file
from core.text import csv_cell, csv_value, json_bytes, json_text, one_or_list, printable
from storage.store import StorageError, is_remote, redact

DIGITS = 6             # probabilities in the output: 6 decimals (predict.py's single-file mode prints 4)
CLIP_UNIT_S = 30.0     # throughput is reported in clips of 30 s per second
GPU_WINDOWS = 256      # model windows per forward pass on a GPU
CPU_WINDOWS = 8        # ... on a CPU: small batches stay in cache (faster than 256 there: README)
DEFAULT_GPU_BATCH = 32 # tracks per DALI batch on a GPU; on a CPU 1 (see run's --batch-size help)
HEADER = "parallel-tunes-predictions"


class CollectionError(Exception):
    """A user error: printed as one line, exit 2."""


# ------------------------------------------------------------------------------------------ files

@dataclass(frozen=True)
class Paths:
    """Every file and folder the collection mode writes, named after OUT (`Paths.of(out)`)."""
    out: str
    parts: str         # the ranks' journals (rank-NNNNN.jsonl), removed once OUT is complete
    summary: str       # OUT-stem.summary.json
    png: str           # OUT-stem.genres.png
    timeline_csv: str  # OUT-stem.timeline.csv (--timeline with a CSV OUT)
    shards: str        # where a folder given without --shards is sharded; removed once OUT is complete

    @classmethod
    def of(cls, out: str) -> "Paths":
        root, ext = os.path.splitext(out)
        stem = root if ext else out
        return cls(out, out + ".parts", stem + ".summary.json", stem + ".genres.png", stem + ".timeline.csv",
                   out + ".shards")

    def part(self, rank: int) -> str:
        return os.path.join(self.parts, f"rank-{rank:05d}.jsonl")


def format_of(out: str, fmt: str | None) -> str:
    return fmt or ("csv" if out.lower().endswith(".csv") else "jsonl")


def read_part(path: str) -> tuple[dict | None, list[dict], int]:
    """(header, track records, bytes of complete lines) of one rank's part file.

    Only lines ending in a newline count; the first undecodable line and everything after it is a
    torn tail (a kill mid-write)."""
    with open(path, "rb") as f:
        data = f.read()
    header, records, good = None, [], 0
    for i, line in enumerate(data.split(b"\n")[:-1]):
        try:
            obj = json.loads(line)
        except ValueError:
            break
        if i == 0:
            if not isinstance(obj, dict) or "header" not in obj:
                break
            header = obj["header"]
        else:
            records.append(obj)
        good += len(line) + 1
    return header, records, good


def read_parts(paths: Paths) -> tuple[list[tuple[str, dict | None, list[dict]]], int]:
    """[(part file, header, records)] of every part file, and the number of torn bytes seen."""
    out, torn = [], 0
    if os.path.isdir(paths.parts):
        for name in sorted(os.listdir(paths.parts)):
            if name.startswith("rank-") and name.endswith(".jsonl"):
                full = os.path.join(paths.parts, name)
                header, records, good = read_part(full)
                torn += os.path.getsize(full) - good
                out.append((full, header, records))
    return out, torn


class PartWriter:
    """This rank's part file: reopened after a kill with its torn tail cut off, then appended to,
    one flushed line per track."""

    def __init__(self, path: str, header: dict):
        from core.folders import state_folder
        state_folder(os.path.dirname(path), "part-file folder")  # checked by prepare() if it existed
        good, has_header, self.cut = 0, False, 0
        if os.path.exists(path):
            h, _, good = read_part(path)
            has_header = h is not None
            self.cut = os.path.getsize(path) - good  # a torn last line, from a kill mid-write
        self.f = open(path, "r+b" if os.path.exists(path) else "wb")
        self.f.truncate(good)
        self.f.seek(good)
        if not has_header:
            self.f.truncate(0)
            self._line({"header": header})
        self.written = 0

    def _line(self, obj: dict) -> None:
        self.f.write(json_bytes(obj) + b"\n")  # one write per line
        self.f.flush()

    def write(self, record: dict) -> None:
        self._line(record)
        self.written += 1

    def close(self) -> None:
        self.f.flush()
        os.fsync(self.f.fileno())
        self.f.close()


# -------------------------------------------------------------------- the output file, both formats

def csv_columns(classes: list[str], labeled: bool) -> list[str]:
    return (["uid", "source", "seconds", "windows", "genre"] + (["label", "split"] if labeled else [])
            + ["clipped", "warnings"] + [f"p_{c}" for c in classes])


def write_output(paths: Paths, fmt: str, records: list[dict], classes: list[str], labeled: bool,
                 timeline: bool) -> None:
    """OUT (and with --timeline in CSV, OUT-stem.timeline.csv), each written atomically."""
    from core.atomic import atomic_open

    if fmt == "jsonl":
        with atomic_open(paths.out, "w", encoding="utf-8", newline="\n") as f:
            for r in records:
                f.write(json_text(r) + "\n")
        return
    rows = [[r["uid"], r["source"], r["seconds"], r["windows"], r["genre"]]
            + ([r.get("label", ""), r.get("split", "")] if labeled else [])
            + [int(r.get("clipped", False)), " | ".join(r.get("warnings", []))]
            + [r["probabilities"][c] for c in classes] for r in records]
    _write_csv(paths.out, csv_columns(classes, labeled), rows)
    if timeline:
        _write_csv(paths.timeline_csv, ["uid", "source", "start", "end", "genre"] + [f"p_{c}" for c in classes],
                   [[r["uid"], r["source"], t["start"], t["end"], t["genre"]] + [t["probabilities"][c] for c in classes]
                    for r in records for t in r["timeline"]])


def _write_csv(path: str, header: list[str], rows: list[list]) -> None:
    """A CSV other tools may open: cells a spreadsheet would run as formulas escaped (core.text.csv_cell);
    a file name's undecodable bytes written as they are (surrogateescape), so a resumed run matches them.
    _read_csv reads it back."""
    from core.atomic import atomic_open

    with atomic_open(path, "w", encoding="utf-8", errors="surrogateescape", newline="") as f:
        w = csv.writer(f)
        for row in [header, *rows]:
            w.writerow([csv_cell(v) for v in row])


def _read_csv(path: str) -> list[dict[str, str]]:
    with open(path, encoding="utf-8", errors="surrogateescape", newline="") as f:
        return [{csv_value(k): csv_value(v) for k, v in row.items()} for row in csv.DictReader(f)]


def _ranked_dict(probs: dict[str, float]) -> dict[str, float]:
    return dict(sorted(probs.items(), key=lambda kv: -kv[1]))


def read_output(paths: Paths, fmt: str, classes: list[str]) -> list[dict]:
    """The records of a finished OUT (as write_output wrote them), for a resumed run."""
    if fmt == "jsonl":
        with open(paths.out, encoding="utf-8") as f:
            return [json.loads(line) for line in f if line.strip()]
    rows = _read_csv(paths.out)
    records = []
    for row in rows:
        r: dict[str, Any] = {"uid": int(row["uid"]), "source": row["source"], "seconds": float(row["seconds"]),
                             "windows": int(row["windows"]), "genre": row["genre"],
                             "probabilities": _ranked_dict({c: float(row[f"p_{c}"]) for c in classes}),
                             "warnings": row["warnings"].split(" | ") if row["warnings"] else []}
        if "label" in row:
            r["label"], r["split"] = row["label"], row["split"]
        if row["clipped"] == "1":
            r["clipped"] = True
        records.append(r)
    if os.path.exists(paths.timeline_csv):
        by_source = {r["source"]: r for r in records}
        for row in _read_csv(paths.timeline_csv):
            by_source[row["source"]].setdefault("timeline", []).append(
                {"start": float(row["start"]), "end": float(row["end"]), "genre": row["genre"],
                 "probabilities": _ranked_dict({c: float(row[f"p_{c}"]) for c in classes})})
    return records


# ------------------------------------------------------------------------------------- the job

@dataclass
class Job:
    """What every rank needs, decided once (in the launching process) and checked the same way in each rank."""
    out: str
    fmt: str
    shard_dir: str                       # the shard folder read (--shards, or the one made for a folder)
    checkpoint: list[str]                # one, or an ensemble's members
    source_root: str | None
    timeline_hop: float | None
    batch_size: int | None
    threads: int | None
    cpu: bool
    eager: bool
    amp: bool
    allow_unverified: bool = False       # --allow-unverified: a remote folder's files without checksums
    manifest_sha256: str | None = None   # --manifest-sha256: the manifest's pinned checksum
    folder: str | None = None            # the audio folder sharded into paths.shards (removed when done)
    min_seconds: float | None = None     # a folder's make_shards --min-seconds
    max_seconds: float | None = None     # and --max-seconds (None: no limit but the decoder's own cap)
    up_to_date: bool = False             # a folder whose finished OUT is current: nothing to do
    identity: dict = field(default_factory=dict)   # what the records depend on: parts' header, summary
    manifest: object = None              # the shard folder's Manifest, read once per process by prepare()

    @property
    def paths(self) -> Paths:
        return Paths.of(self.out)


def _source(root: str | None, source: str) -> str:
    return os.path.normpath(os.path.join(root, source)) if root else source


def prepare(args: argparse.Namespace, ckpt: list[str], *, may_shard: bool) -> Job:
    """Check the request and resolve the shard folder (sharding a plain folder first when
    `may_shard`); raise CollectionError naming the file or folder."""
    from core.checkpoint import CheckpointError
    from inference.classifier import load_classifier

    if not args.out:
        raise CollectionError("--shards needs --out FILE (where the predictions go)")
    out = args.out
    fmt = format_of(out, args.format)
    if os.path.isdir(out):
        raise CollectionError(f"{out}: --out is a folder; give a file name, e.g. {os.path.join(out, 'predictions.' + fmt)}")
    parent = os.path.dirname(os.path.abspath(out))
    if not os.path.isdir(parent):
        raise CollectionError(f"{parent}: no such folder (for --out {out})")
    if not os.access(parent, os.W_OK):
        raise CollectionError(f"{parent}: folder is not writable (for --out {out})")
    if args.batch_size is not None and args.batch_size < 1:
        raise CollectionError(f"--batch-size {args.batch_size}: must be at least 1")
    hop = args.hop if args.timeline else None
    if hop is not None and hop <= 0:
        raise CollectionError(f"--hop {hop}: must be positive")
    try:
        _, classes, spec = load_classifier(ckpt)
    except CheckpointError as e:
        raise CollectionError(str(e)) from None
    folder = getattr(args, "sharded_from", None)  # set for the ranks a folder's launcher started
    if args.shards:
        if args.paths:
            raise CollectionError(f"{args.paths[0]}: give --shards DIR or an audio folder, not both")
        shards = args.shards
        if not is_remote(shards) and not os.path.isdir(shards):
            raise CollectionError(f"{shards}: no such folder (--shards)")
    else:
        if len(args.paths) != 1 or not os.path.isdir(args.paths[0]):
            what = args.paths[0] if len(args.paths) == 1 else " ".join(args.paths) or "(nothing)"
            raise CollectionError(f"{what}: --out without --shards takes one folder of audio files")
        folder = args.paths[0]
        if os.path.abspath(out).startswith(os.path.join(os.path.abspath(folder), "")):
            raise CollectionError(f"{out}: --out lies inside {folder}, whose files are read as audio; write it elsewhere")
        shards = Paths.of(out).shards
    job = Job(out=out, fmt=fmt, shard_dir=shards, checkpoint=ckpt, source_root=args.source_root or folder,
              timeline_hop=hop, batch_size=args.batch_size, threads=args.threads, cpu=args.cpu, eager=args.eager, amp=args.amp,
              folder=folder, min_seconds=args.min_seconds, max_seconds=args.max_seconds or None, allow_unverified=args.allow_unverified,
              manifest_sha256=args.manifest_sha256)
    job.identity = {"format": HEADER, "version": 1, "checkpoint_sha256": one_or_list([sha256_file(c) for c in ckpt]),
                    "classes": classes, "timeline_hop": hop}
    check_state_folders(job)
    check_resumable(job)  # before any sharding: a refused rerun costs nothing
    if not args.shards and may_shard:
        if folder_unchanged(job):
            job.up_to_date = True
            return job
        shard_folder(folder, shards, spec, args.min_seconds, args.max_seconds or None)
    try:
        manifest = job.manifest = read_job_manifest(job)
    except (FileNotFoundError, ValueError, StorageError) as e:
        raise CollectionError(str(e)) from None
    from training.distributed import launch
    if launch().is_main:
        from storage.folder import trust_warnings
        for line in trust_warnings(shards, manifest, pinned=job.manifest_sha256 is not None):
            print(f"predict: {line}", file=sys.stderr)
    if manifest.spec.sample_rate != spec.sample_rate:
        raise CollectionError(
            f"{manifest.path}: shards hold audio at {manifest.spec.sample_rate} Hz, the checkpoint {ckpt[0]} expects "
            f"{spec.sample_rate} Hz; reshard with make_shards.py --sample-rate {spec.sample_rate}")
    return job


def read_job_manifest(job: Job):
    """The job's manifest, with the user's trust options (storage.folder.read_manifest)."""
    from storage.folder import read_manifest
    return read_manifest(job.shard_dir, allow_unverified=job.allow_unverified, sha256=job.manifest_sha256)


def _folder_files(folder: str, shards: str) -> list:
    from preprocess.make_shards import find_unlabeled
    return find_unlabeled(folder, exclude=shards)


def folder_unchanged(job: Job) -> bool:
    """A finished OUT made from this folder, which has had no file added, removed or changed since
    (and the same --min-seconds and --max-seconds): nothing to shard or predict."""
    paths = job.paths
    summary = _summary_of(paths) if os.path.exists(paths.out) else None
    if (summary is None or summary.get("folder") != job.folder or summary.get("min_seconds") != job.min_seconds
            or summary.get("max_seconds") != job.max_seconds):
        return False
    items = _folder_files(job.folder, paths.shards)
    known = {r["source"] for r in read_output(paths, summary["format_written"], job.identity["classes"])}
    known |= {_source(job.folder, r["path"]) for r in summary["rejects"]["files"]}
    newest = max((os.path.getmtime(it.path) for it in items), default=0.0)
    return {_source(job.folder, it.rel) for it in items} == known and newest < os.path.getmtime(paths.summary)


def shard_folder(folder: str, shards: str, spec, min_seconds: float, max_seconds: float | None) -> None:
    """make_shards --unlabeled FOLDER into `shards`, unless an earlier run's shards there still
    match the folder (same files, none newer than the manifest): a rerun after a kill in the
    prediction stage does not decode again (make_shards itself resumes a killed sharding)."""
    from preprocess.make_shards import UsageError, make_shards, summary_line
    from core.shards import MANIFEST

    manifest = os.path.join(shards, MANIFEST)
    if os.path.exists(manifest):
        with open(manifest, encoding="utf-8") as f:
            m = json.load(f)
        items = _folder_files(folder, shards)
        known = {s["source"] for s in m["samples"]} | {r["path"] for r in m["rejects"]}
        newest = max((os.path.getmtime(it.path) for it in items), default=0.0)
        if ({it.rel for it in items} == known and newest < os.path.getmtime(manifest) and m.get("unlabeled")
                and m["options"].get("min_seconds") == min_seconds and m["options"].get("max_seconds") == max_seconds
                and m["sample_rate"] == spec.sample_rate):
            return
    try:
        m = make_shards(folder, shards, unlabeled=True, min_seconds=min_seconds, max_seconds=max_seconds, spec=spec,
                        progress=sys.stderr.isatty())
    except UsageError as e:
        shutil.rmtree(shards, ignore_errors=True)
        raise CollectionError(str(e)) from None
    print(f"sharded {folder} into {shards}: {summary_line(m)}", file=sys.stderr)


def check_state_folders(job: Job) -> None:
    """OUT.parts and (for a folder) OUT.shards are trusted when a rerun resumes from them: refuse, in
    one line, ones another user owns or can write to; make OUT.shards private (core.folders)."""
    from core.folders import UnsafeFolder, check_folder, state_folder
    paths = job.paths
    try:
        if os.path.lexists(paths.parts):
            check_folder(paths.parts, "part-file folder")
        if job.folder is not None:
            state_folder(paths.shards, "collection's shard folder")
    except UnsafeFolder as e:
        raise CollectionError(str(e)) from None


def check_resumable(job: Job) -> None:
    """Refuse, in one line, a rerun whose parts or finished OUT were made with other options."""
    paths = job.paths
    parts, _ = read_parts(paths)
    for path, header, _ in parts:
        if header is not None and header != job.identity:
            raise CollectionError(f"{path}: {_differs(header, job.identity)}; rerun with the first run's options, "
                                  f"or remove {paths.parts} to start over")
    if os.path.exists(paths.out):
        summary = _summary_of(paths)
        if summary is None:
            if not parts:
                raise CollectionError(f"{paths.out}: exists and is not a finished predict.py --out (no matching "
                                      f"{paths.summary}); remove it or choose another --out")
        elif summary["identity"] != job.identity:
            raise CollectionError(f"{paths.out}: {_differs(summary['identity'], job.identity)}; rerun with the first "
                                  f"run's options, or choose another --out")


def _differs(was: dict, now: dict) -> str:
    names = {"checkpoint_sha256": "another checkpoint", "classes": "other classes",
             "timeline_hop": "another --timeline/--hop", "format": "another tool", "version": "another version"}
    diff = [names.get(k, k) for k in now if was.get(k) != now[k]]
    return "written with " + (", ".join(diff) or "other options")


def _summary_of(paths: Paths) -> dict | None:
    """The summary of a finished OUT: present, readable, and naming OUT's exact bytes."""
    try:
        with open(paths.summary, encoding="utf-8") as f:
            s = json.load(f)
        return s if s.get("out_sha256") == sha256_file(paths.out) else None
    except (OSError, ValueError):
        return None


def done_records(job: Job, classes: list[str]) -> tuple[dict[str, dict], int, int]:
    """{source: record} of the tracks already predicted (finished OUT first, then the parts),
    the number of tracks found twice in the parts (0 unless something is wrong) and torn bytes."""
    paths = job.paths
    done: dict[str, dict] = {}
    summary = _summary_of(paths) if os.path.exists(paths.out) else None
    if summary is not None:
        for r in read_output(paths, summary["format_written"], classes):
            done[r["source"]] = r
    in_out = set(done)
    dups = 0
    parts, torn = read_parts(paths)
    for _, _, records in parts:
        for r in records:
            if r["source"] in done:
                dups += r["source"] not in in_out  # OUT and the parts overlap only after a kill in the merge
                continue
            done[r["source"]] = r
    return done, dups, torn


# -------------------------------------------------------------------------------- the ranks' work

def optimise(model, spec, device, eager: bool):
    """The model as inference runs it: channels_last on a GPU; on a CPU frozen with TorchScript
    (conv + BatchNorm folded, oneDNN layouts; README for its speed and logit differences), unless
    `eager` or tracing fails."""
    import warnings

    import torch

    model = model.eval().requires_grad_(False)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        return model.to(memory_format=torch.channels_last)
    if eager:
        return model
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.jit's deprecation notices
            example = torch.zeros(2, 1, spec.n_mels, spec.clip_frames)
            traced = torch.jit.trace(model, example, check_trace=False)  # the check reruns the model: 1.6 s
            return torch.jit.optimize_for_inference(torch.jit.freeze(traced))
    except Exception as e:  # noqa: BLE001 - an exotic model still predicts, eagerly
        print(f"predict: warning: TorchScript freezing failed ({type(e).__name__}: {e}); running eagerly",
              file=sys.stderr)
        return model


def pending_loaders(job: Job, env, manifest, spec, done: dict[str, dict]) -> list:
    """This rank's evaluation loaders over the tars that still hold a track without a prediction
    (tars whose tracks are all done are not read again)."""
    from loading.loader import DaliLoader

    todo_tars: dict[str, list[str]] = {}
    for split in manifest.split_names:
        pending = {s.shard for s in manifest.samples
                   if s.split == split and _source(job.source_root, s.source) not in done}
        tars = [t for t in manifest.splits[split].shards if t in pending]
        if tars:
            todo_tars[split] = tars
    threads = job.threads or max(1, (os.cpu_count() or 1) // env.local_world_size)
    batch = job.batch_size or (DEFAULT_GPU_BATCH if env.device.type == "cuda" else 1)
    return [DaliLoader(job.shard_dir, split, spec, batch, train=False, rank=env.rank, world_size=env.world_size,
                       device=env.device, num_threads=threads, shards=tars, manifest=manifest,
                       allow_unverified=job.allow_unverified)
            for split, tars in todo_tars.items()]


def predict_share(job: Job, env, done: dict[str, dict]) -> tuple[int, float, int]:
    """This rank's tracks that are not done yet, appended to its part file.
    Returns (tracks, seconds of audio, torn bytes cut off its part file)."""

    from inference.classifier import load_classifier
    from training.amp import Amp

    manifest = job.manifest or read_job_manifest(job)
    model, classes, spec = load_classifier(job.checkpoint, str(env.device))
    amp = Amp.create(env.device, job.amp)
    model = optimise(model, spec, env.device, job.eager or (job.amp and env.device.type == "cpu"))
    samples = {s.uid: s for s in manifest.samples}
    loaders = pending_loaders(job, env, manifest, spec, done)
    writer = PartWriter(job.paths.part(env.rank), job.identity)
    windows = Windows(model, spec, classes, amp, job.timeline_hop,
                      GPU_WINDOWS if env.device.type == "cuda" else CPU_WINDOWS)
    bar = None
    if env.is_main:
        from tqdm import tqdm
        bar = tqdm(total=sum(len(ld) for ld in loaders), desc="predict", unit="batch", leave=False,
                   dynamic_ncols=True, disable=None)
    n_new, seconds = 0, 0.0

    def emit(results: list[tuple[Any, int, dict]]) -> None:
        nonlocal n_new, seconds
        for s, n, fields in results:
            r = {"uid": s.uid, "source": _source(job.source_root, s.source), **fields}
            if not manifest.unlabeled:
                r["label"], r["split"] = s.label, s.split
            if s.clipped:
                r["clipped"] = True
            r["warnings"] = list(s.warnings)
            if "timeline" in fields:
                r["timeline"] = r.pop("timeline")  # last: the long field
            writer.write(r)
            n_new += 1
            seconds += n / spec.sample_rate
            fault_point("tracks", writer.written, env.rank)

    try:
        for loader in loaders:
            for b in loader:
                for i, (u, counted) in enumerate(zip(b.uid.tolist(), b.counted.tolist())):
                    s = samples[u]
                    if counted and _source(job.source_root, s.source) not in done:
                        n = int(b.n_samples[i])
                        valid = min(spec.valid_frames(n), b.x.shape[-1])
                        windows.add(s, n, b.x[i, :, :, :valid].clone())
                        if windows.full:
                            emit(windows.flush())
                if bar is not None:
                    bar.update()
        emit(windows.flush())
    finally:
        writer.close()
        if bar is not None:
            bar.close()
    return n_new, seconds, writer.cut


class Windows:
    """Tracks' features gathered across DALI batches until `chunk` windows are waiting, then one
    model pass: the model sees full batches of windows, whatever the DALI batch size.

    Each track keeps only its own frames (1 + n // hop; DALI pads the batch's audio to its longest
    track) and is padded here with the FeatureSpec's floor value, as predict.py and the training
    crops pad a short track; windows are then cut and averaged by features.windows.track_logits."""

    def __init__(self, model, spec, classes: list[str], amp, timeline_hop: float | None, chunk: int):
        from inference.scoring import hop_frames
        self.model, self.spec, self.classes, self.amp, self.chunk = model, spec, classes, amp, chunk
        self.hop_frames = hop_frames(spec, timeline_hop) if timeline_hop else None
        self.items: list[tuple[Any, int, Any]] = []
        self.count = 0

    def add(self, sample, n: int, feats) -> None:
        from features.windows import window_starts
        self.items.append((sample, n, feats))
        self.count += len(window_starts(feats.shape[-1], self.spec.clip_frames))

    @property
    def full(self) -> bool:
        return self.count >= self.chunk

    def flush(self) -> list[tuple[Any, int, dict]]:
        """[(sample, n_samples, {seconds, windows, genre, probabilities[, timeline]})] of the waiting tracks."""
        import torch
        import torch.nn.functional as F

        from features.windows import cut_windows, track_logits, window_logits, window_starts
        from inference.scoring import ranked, timeline

        if not self.items:
            return []
        spec, clip, floor = self.spec, self.spec.clip_frames, self.spec.floor_value
        width = max(clip, max(f.shape[-1] for _, _, f in self.items))
        padded = [f if f.shape[-1] == width else F.pad(f, (0, width - f.shape[-1]), value=floor) for _, _, f in self.items]
        feats = padded[0][None] if len(padded) == 1 else torch.stack(padded)
        n = torch.tensor([n for _, n, _ in self.items])
        with torch.inference_mode(), self.amp.autocast():
            mean_logits, per_track = track_logits(self.model, feats, n, spec, max_windows=self.chunk)
            probs = torch.softmax(mean_logits.float(), dim=1).cpu()
            timelines = None
            if self.hop_frames:  # as predict.py --timeline: windows every hop over the track's own frames
                wins = [cut_windows(f, f.shape[-1], clip, floor, self.hop_frames) for _, _, f in self.items]
                wl = window_logits(self.model, torch.cat(wins), self.chunk)
                timelines = torch.split(torch.softmax(wl, dim=1).cpu(), [len(w) for w in wins])
        out = []
        for k, (s, n_k, f) in enumerate(self.items):
            secs = round(n_k / spec.sample_rate, 2)
            fields = {"seconds": secs, "windows": len(per_track[k]), **ranked(self.classes, probs[k], DIGITS)}
            if timelines is not None:
                starts = window_starts(f.shape[-1], clip, self.hop_frames)
                fields["timeline"] = timeline(spec, starts, timelines[k], secs, self.classes, DIGITS)
            out.append((s, n_k, fields))
        self.items, self.count = [], 0
        return out


# ---------------------------------------------------------------------------- merge and summary

def merge(job: Job, classes: list[str], stats: dict) -> dict:
    """Rank 0, after every rank has finished: OUT from the parts (and a finished OUT), the summary
    and its PNG; then the parts go. Raises CollectionError (parts kept) if a track is missing."""
    from training import report

    paths = job.paths
    manifest = job.manifest or read_job_manifest(job)
    done, dups, torn = done_records(job, classes)
    records, missing = [], []
    for s in sorted(manifest.samples, key=lambda s: s.uid):
        r = done.get(_source(job.source_root, s.source))
        if r is None:
            missing.append(s.source)
            continue
        records.append({**r, "uid": s.uid})
    if missing:
        raise CollectionError(f"{paths.parts}: {len(missing)} track(s) have no prediction (first: {missing[0]}); "
                              "rerun the same command to finish them")
    if dups:
        print(f"predict: warning: {dups} track(s) were predicted twice (the first kept)", file=sys.stderr)
    write_output(paths, job.fmt, records, classes, not manifest.unlabeled, job.timeline_hop is not None)
    genres = Counter(r["genre"] for r in records)
    rejects = manifest["rejects"]
    total_s = sum(r["seconds"] for r in records)
    summary = {
        "out": paths.out, "summary": paths.summary, "format_written": job.fmt, "out_sha256": sha256_file(paths.out),
        "identity": job.identity, "checkpoint": one_or_list(job.checkpoint),
        "shards": None if job.folder else redact(job.shard_dir), "folder": job.folder,
        "min_seconds": job.min_seconds if job.folder else None,
        "max_seconds": job.max_seconds if job.folder else None,
        "tracks": len(records), "seconds": round(total_s, 2),
        "new_tracks": stats["tracks"], "new_seconds": round(stats["seconds"], 2),
        "wall_s": round(stats["wall_s"], 3),
        "clips_per_s": round(stats["seconds"] / CLIP_UNIT_S / stats["wall_s"], 3) if stats["wall_s"] > 0 else None,
        "world_size": stats["world_size"], "device": stats["device"],
        "genres": {g: genres.get(g, 0) for g in classes},
        "accuracy": None if manifest.unlabeled else split_accuracy(records),
        "duplicates": dups, "torn_bytes_dropped": stats["torn_bytes"] + torn,
        "rejects": {"count": len(rejects), "by_reason": dict(Counter(r["reason"] for r in rejects)), "files": rejects},
    }
    report.write_json(paths.summary, summary)
    plot_genres(summary, classes, paths.png)
    shutil.rmtree(paths.parts, ignore_errors=True)
    return summary


def split_accuracy(records: list[dict]) -> dict[str, dict]:
    """Labeled shards: per split, the tracks whose predicted genre is their label (a checkpoint's or an
    ensemble's track-level accuracy, judged as training's evaluation judges a track)."""
    out: dict[str, dict] = {}
    for r in records:
        a = out.setdefault(r["split"], {"tracks": 0, "correct": 0})
        a["tracks"] += 1
        a["correct"] += r["genre"] == r["label"]
    return {k: {**a, "accuracy": round(a["correct"] / a["tracks"], 6)} for k, a in sorted(out.items())}


def plot_genres(summary: dict, classes: list[str], path: str) -> None:
    from training.report import pyplot, save_figure
    plt = pyplot()
    counts = [summary["genres"][c] for c in classes]
    fig, ax = plt.subplots(figsize=(max(5.0, 0.6 * len(classes) + 2), 3.5))
    ax.bar(range(len(classes)), counts, color="tab:blue")
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_ylabel("tracks")
    ax.set_title(f"{summary['tracks']} tracks, {summary['seconds'] / 3600:.2f} h of audio")
    fig.tight_layout()
    save_figure(fig, path)


def summary_text(s: dict, classes: list[str]) -> str:
    h = s["seconds"]
    lines = [f"{s['out']}: {s['tracks']} tracks, {h / 3600:.2f} h of audio ({h:.0f} s); {s['new_tracks']} predicted "
             f"now in {s['wall_s']:.1f} s on {s['world_size']} rank(s) ({s['device']}): "
             f"{s['clips_per_s'] or 0:.1f} clips of 30 s/s"]
    top = max(s["genres"].values(), default=0) or 1
    width = max((len(c) for c in classes), default=0)
    for c in sorted(classes, key=lambda c: -s["genres"][c]):
        k = s["genres"][c]
        lines.append(f"  {c:<{width}} {k:6d} {100 * k / max(s['tracks'], 1):5.1f}%  {'#' * round(30 * k / top)}")
    if s.get("accuracy"):
        lines.append("accuracy: " + ", ".join(f"{k} {a['accuracy']:.3f} ({a['correct']}/{a['tracks']})"
                                              for k, a in s["accuracy"].items()))
    rej = s["rejects"]
    reasons = ", ".join(f"{k} {v}" for k, v in sorted(rej["by_reason"].items()))
    lines.append(f"rejects: {rej['count']}" + (f" ({reasons}; listed in {s['summary']})" if rej["count"] else ""))
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------- main

def run(args: argparse.Namespace, ckpt: list[str]) -> int:
    """predict.py --out / --shards, with predict.py's parsed arguments."""
    from training import distributed

    here = distributed.launch()
    world, rank = here.world_size, here.rank
    launching = world == 1 and args.nproc > 1
    try:
        if world > 1 and not args.shards:
            raise CollectionError(f"{args.paths[0] if args.paths else '(no folder)'}: under torchrun give --shards DIR "
                                  "(make_shards.py --unlabeled FOLDER DIR first), or use python predict.py --nproc N "
                                  "FOLDER --out ...")
        job = prepare(args, ckpt, may_shard=world == 1)
        if launching:
            distributed.check_placement(args.nproc, args.cpu)
    except (CollectionError, distributed.PlacementError) as e:
        if rank == 0:
            print(f"predict: error: {printable(str(e))}", file=sys.stderr)
        return 2
    t0 = time.perf_counter()  # the prediction stage: sharding a folder is timed by make_shards' own line
    if job.up_to_date:
        summary = _summary_of(job.paths)
        print(summary_text({**summary, "new_tracks": 0, "wall_s": time.perf_counter() - t0, "clips_per_s": 0.0},
                           job.identity["classes"]))
        print(f"(up to date: no file in {job.folder} was added, removed or changed since {job.paths.summary})")
        return 0
    if launching:
        from importlib.util import find_spec
        script = find_spec("predict").origin
        rc = distributed.launch_local(args.nproc, script, rank_args(job))
        if rc == 0:
            _cleanup(job)
        return 2 if rc else 0

    try:
        env = distributed.setup(force_cpu=job.cpu)
    except distributed.PlacementError as e:  # under torchrun, every rank of the machine: its first reports
        if here.local_rank == 0:
            print(f"predict: error: {printable(str(e))}", file=sys.stderr)
        return 2
    try:
        classes = job.identity["classes"]
        done, _, _ = done_records(job, classes)
        distributed.barrier(env)  # every rank has read the journal before any rank appends to it
        per_rank = distributed.all_gather_object(predict_share(job, env, done), env)
        if not env.is_main:
            return 0
        stats = {"tracks": sum(r[0] for r in per_rank), "seconds": sum(r[1] for r in per_rank),
                 "torn_bytes": sum(r[2] for r in per_rank),
                 "wall_s": time.perf_counter() - t0, "world_size": env.world_size, "device": env.device.type}
        try:
            summary = merge(job, classes, stats)
        except CollectionError as e:
            print(f"predict: error: {printable(str(e))}", file=sys.stderr)
            return 2
        print(summary_text(summary, classes))
        if world == 1:
            _cleanup(job)
        return 0
    finally:
        distributed.teardown(env)


def _cleanup(job: Job) -> None:
    """A folder's temporary shards go once OUT is finished."""
    if job.folder and _summary_of(job.paths) is not None:
        shutil.rmtree(job.paths.shards, ignore_errors=True)


def rank_args(job: Job) -> list[str]:
    """predict.py's arguments for the launched ranks: the same job, on the resolved shard folder."""
    args = ["--shards", job.shard_dir, "--out", job.out, "--format", job.fmt]
    for c in job.checkpoint:
        args += ["--checkpoint", c]
    if job.batch_size:
        args += ["--batch-size", str(job.batch_size)]
    if job.source_root:
        args += ["--source-root", job.source_root]
    if job.folder:
        args += ["--sharded-from", job.folder, "--min-seconds", repr(job.min_seconds),
                 "--max-seconds", repr(job.max_seconds or 0)]  # 0: no limit (predict.py's spelling)
    if job.timeline_hop is not None:
        args += ["--timeline", "--hop", repr(job.timeline_hop)]
    if job.threads:
        args += ["--threads", str(job.threads)]
    if job.manifest_sha256:
        args += ["--manifest-sha256", job.manifest_sha256]
    args += [flag for flag, on in (("--cpu", job.cpu), ("--eager", job.eager), ("--amp", job.amp),
                                   ("--allow-unverified", job.allow_unverified)) if on]
    return args
