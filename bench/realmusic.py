"""A labelled development set of real recordings, built from Debian's packaged game music (issue #21).

    .venv/bin/python -m bench.realmusic OUT                  # e.g. /work/realmusic (outside git)
    .venv/bin/python -m bench.realmusic OUT --cache DIR      # share downloads between builds
    python preprocess/make_shards.py --list OUT/list.csv OUT/shards --split list

Each class is one package (one style). The packages are downloaded with `apt-get download` and
unpacked with `dpkg-deb -x` into the cache (default OUT/cache), never installed (root or not, no
apt state changes). Their recordings of at least --min-seconds are grouped with their variants and
split by group (bench/realmusic_set.py has the rules), decoded and resampled to 22,050 Hz mono
with features/audio.py (the same decoder and Kaiser-sinc resampler as make_shards), cut into
excerpts of --excerpt-seconds and written as 16-bit PCM WAV:

    OUT/audio/<package>/<file>_<hash>_<nn>_<offset ms>.wav   the excerpts
    OUT/list.csv          path,label,split (for make_shards --list --split list)
    OUT/provenance.csv    each excerpt's package, version, file in the package, its sha256, group, offset
    OUT/summary.json      options, versions, classes, counts per class and split, dropped packages,
                          files skipped (per package and reason: short, same_bytes, unreadable, module)
                          and recordings left out after decoding

A package with fewer than --min-recordings groups is dropped (a line says why): before decoding
by the file headers, after it by what is audible for --min-seconds. Deterministic: the
same packages and options give the same bytes (no timestamps, fixed offsets, a deterministic
resampler). Idempotent: a recording whose excerpts are already there with the recorded hashes is
not decoded again (OUT/.state/); excerpts no longer planned are removed; --force decodes all.
A package apt does not know, or a failed download, is a one-line error and exit status 2.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time

from bench.realmusic_debian import ALIASES, PACKAGES, PackageError, fetch
from bench.realmusic_set import (Excerpt, Recording, audible_span, counts, file_sha256, find_recordings,
                                 list_csv, plan_excerpts, provenance_csv, split_groups, wav_bytes)

RATE = 22_050


def log(line: str) -> None:
    """A progress line; file names from packages are shown escaped (core/text.py: printable)."""
    from tqdm import tqdm

    from core.text import printable
    tqdm.write(f"realmusic: {printable(line)}", file=sys.stderr)


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.realmusic", description=__doc__.split("\n\n")[0])
    p.add_argument("out", metavar="OUT", help="output folder (outside any git tree)")
    p.add_argument("--cache", default=None, help="downloads and extracted packages (default: OUT/cache)")
    p.add_argument("--packages", default=",".join(PACKAGES), help="comma-separated Debian packages, one class each")
    p.add_argument("--min-seconds", type=float, default=40.0, help="shortest file that counts as a recording")
    p.add_argument("--min-recordings", type=int, default=10,
                   help="a package with fewer groups (recordings with their variants) is dropped")
    p.add_argument("--excerpt-seconds", type=float, default=30.0)
    p.add_argument("--max-excerpts", type=int, default=6, help="excerpts per recording at most")
    p.add_argument("--val", type=float, default=0.2, help="share of each class's groups for validation")
    p.add_argument("--test", type=float, default=0.2, help="share of each class's groups for test")
    p.add_argument("--min-per-split", type=int, default=2, help="val and test groups per class at least")
    p.add_argument("--seed", type=int, default=0, help="the split's seed")
    p.add_argument("--force", action="store_true", help="decode every recording again")
    a = p.parse_args(argv)
    if a.excerpt_seconds <= 0 or a.min_seconds < a.excerpt_seconds:
        p.error("--min-seconds must be at least --excerpt-seconds, which must be positive")
    return a


def fetch_all(packages: list[str], cache: str) -> tuple[dict[str, tuple[str, str]], list[str]]:
    """(package -> (version, extracted tree), errors) for the packages that could be had."""
    sources: dict[str, tuple[str, str]] = {}
    errors: list[str] = []
    for pkg in packages:
        try:
            sources[pkg] = fetch(pkg, cache)
        except PackageError as e:
            errors.append(f"{pkg}: {e}")
            log(f"{pkg}: {e}")
    return sources, errors


def survey(sources: dict[str, tuple[str, str]],
           a: argparse.Namespace) -> tuple[dict[str, list[Recording]], list[dict], dict[str, dict[str, int]]]:
    """Each class's recordings (one progress line per package), the packages dropped for too few
    groups, and per package how many files were skipped for which reason."""
    recs: dict[str, list[Recording]] = {}
    dropped: list[dict] = []
    skipped_counts: dict[str, dict[str, int]] = {}
    for pkg, (version, root) in sources.items():
        found, skipped = find_recordings(pkg, root, a.min_seconds, ALIASES.get(pkg))
        why: dict[str, int] = {}
        for s in skipped:
            why[s["reason"]] = why.get(s["reason"], 0) + 1
        skipped_counts[pkg] = dict(sorted(why.items()))
        groups = len({r.group for r in found})
        minutes = sum(r.seconds for r in found) / 60
        log(f"{pkg} {version}: {len(found)} recordings >= {a.min_seconds:g} s in {groups} groups, "
            f"{minutes:.1f} min; skipped {', '.join(f'{n} {k}' for k, n in sorted(why.items())) or 'none'}")
        for s in skipped:
            if s["reason"] in ("module", "unreadable"):
                log(f"  {pkg}: {s['file']}: not decoded ({s['detail']})")
        if groups < a.min_recordings:
            dropped.append({"package": pkg, "version": version, "groups": groups, "recordings": len(found),
                            "reason": f"{groups} groups of files >= {a.min_seconds:g} s, needs {a.min_recordings}"})
            log(f"drop {pkg}: {dropped[-1]['reason']}")
            continue
        recs[pkg] = found
    return recs, dropped, skipped_counts


def _state_path(out: str, rec: Recording, options: dict) -> str:
    key = hashlib.sha1(json.dumps([rec.sha256, rec.relpath, rec.label, options], sort_keys=True).encode(
        "utf-8", "surrogateescape")).hexdigest()
    return os.path.join(out, ".state", key + ".json")


def cut_excerpts(out: str, recs: dict[str, list[Recording]],
                 a: argparse.Namespace) -> tuple[list[Excerpt], list[dict]]:
    """Decode each recording (unless its excerpts are there already, OUT/.state/) and write its
    excerpts. Returns (excerpts, recordings left out: audible for less than --min-seconds or not
    decodable)."""
    from tqdm import tqdm

    from core.atomic import atomic_write
    from features.audio import AudioError, decode
    options = {"rate": RATE, "excerpt_seconds": a.excerpt_seconds, "max_excerpts": a.max_excerpts,
               "min_seconds": a.min_seconds, "v": 3}
    excerpts: list[Excerpt] = []
    left_out: list[dict] = []
    used: set[str] = set()
    todo = [r for label in sorted(recs) for r in recs[label]]
    for rec in tqdm(todo, desc="excerpts", unit="rec"):
        state = _state_path(out, rec, options)
        if not a.force and os.path.exists(state):
            with open(state, encoding="utf-8") as f:
                saved = json.load(f)
            span = tuple(saved["span"])
            planned = _plan(rec, span, a)
            if [e.name for e in planned] == [x["name"] for x in saved["excerpts"]] and all(
                    os.path.exists(os.path.join(out, x["name"]))
                    and file_sha256(os.path.join(out, x["name"])) == x["sha256"] for x in saved["excerpts"]):
                for e, x in zip(planned, saved["excerpts"]):
                    e.wav_sha256 = x["sha256"]
                if not planned:
                    left_out.append(_short(rec, span))
                excerpts.extend(planned)
                used.add(state)
                continue
        try:
            d = decode(rec.path, RATE)
        except AudioError as e:
            left_out.append({"package": rec.label, "file": rec.relpath, "reason": f"{e.reason}: {e.message}"})
            continue
        span = audible_span(d.samples)
        planned = _plan(rec, span, a)
        if not planned:
            left_out.append(_short(rec, span))
        for e in planned:
            data = wav_bytes(d.samples[e.offset:e.offset + e.frames], RATE)
            path = os.path.join(out, e.name)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            atomic_write(path, data, fsync=False)
            e.wav_sha256 = hashlib.sha256(data).hexdigest()
        excerpts.extend(planned)
        os.makedirs(os.path.dirname(state), exist_ok=True)
        atomic_write(state, json.dumps({"frames": len(d.samples), "span": span, "excerpts": [
            {"name": e.name, "sha256": e.wav_sha256} for e in planned]}).encode(), fsync=False)
        used.add(state)
    for x in left_out:
        log(f"  {x['package']}: {x['file']}: left out ({x['reason']})")
    for name in os.listdir(os.path.join(out, ".state")) if os.path.isdir(os.path.join(out, ".state")) else []:
        if os.path.join(out, ".state", name) not in used:  # an earlier build's (other options, files)
            os.remove(os.path.join(out, ".state", name))
    return excerpts, left_out


def _plan(rec: Recording, span: tuple[int, int], a: argparse.Namespace) -> list[Excerpt]:
    """The excerpts of a recording audible for at least --min-seconds; none otherwise."""
    if span[1] - span[0] < int(round(a.min_seconds * RATE)):
        return []
    return plan_excerpts(rec, span, RATE, a.excerpt_seconds, a.max_excerpts)


def _short(rec: Recording, span: tuple[int, int]) -> dict:
    return {"package": rec.label, "file": rec.relpath,
            "reason": f"audible for {(span[1] - span[0]) / RATE:.1f} s of {rec.seconds:.1f} s"}


def remove_stale(out: str, excerpts: list[Excerpt]) -> int:
    """Delete WAVs under OUT/audio that this build did not plan (an earlier build's, other options)."""
    keep = {os.path.normpath(os.path.join(out, e.name)) for e in excerpts}
    n = 0
    for folder, _, files in os.walk(os.path.join(out, "audio")):
        for name in files:
            path = os.path.normpath(os.path.join(folder, name))
            if name.endswith(".wav") and path not in keep:
                os.remove(path)
                n += 1
    return n


def build(out: str, sources: dict[str, tuple[str, str]], a: argparse.Namespace) -> dict:
    """The set in OUT from each class's (version, folder of files); returns the summary. Raises
    ValueError when fewer than 2 classes remain or a class has too few groups to split."""
    from core.atomic import atomic_write
    from core.text import json_bytes
    recs, dropped, skipped = survey(sources, a)  # by the headers: a package short of groups is not even decoded
    if len(recs) < 2:
        raise ValueError(f"{len(recs)} class(es) left after dropping packages; a set needs 2")
    excerpts, left_out = cut_excerpts(out, recs, a)
    groups = {label: sorted({e.recording.group for e in excerpts if e.recording.label == label}) for label in recs}
    for label in sorted(recs):  # again by what is audible
        if len(groups[label]) < a.min_recordings:
            dropped.append({"package": label, "version": sources[label][0], "groups": len(groups[label]),
                            "recordings": len({e.recording.sha256 for e in excerpts if e.recording.label == label}),
                            "reason": f"{len(groups[label])} groups audible for >= {a.min_seconds:g} s, "
                                      f"needs {a.min_recordings}"})
            log(f"drop {label}: {dropped[-1]['reason']}")
            del recs[label]
    if len(recs) < 2:
        raise ValueError(f"{len(recs)} class(es) left after dropping packages; a set needs 2")
    splits: dict[tuple[str, str], str] = {}
    for label in recs:
        for g, s in split_groups(groups[label], label, a.val, a.test, a.seed, a.min_per_split).items():
            splits[(label, g)] = s
    excerpts = sorted((e for e in excerpts if e.recording.label in recs), key=lambda e: e.name)
    for e in excerpts:
        e.split = splits[(e.recording.label, e.recording.group)]
    stale = remove_stale(out, excerpts)
    versions = {label: v for label, (v, _) in sources.items()}
    atomic_write(os.path.join(out, "list.csv"), list_csv(excerpts).encode("utf-8", "surrogateescape"))
    atomic_write(os.path.join(out, "provenance.csv"),
                 provenance_csv(excerpts, versions).encode("utf-8", "surrogateescape"))
    summary = {
        "options": {k: getattr(a, k) for k in ("min_seconds", "min_recordings", "excerpt_seconds", "max_excerpts",
                                               "val", "test", "min_per_split", "seed")} | {"rate": RATE},
        "packages": list(sources), "versions": versions, "classes": sorted(recs), "dropped": dropped,
        "skipped_files": skipped, "left_out": left_out,
        "counts": counts(excerpts), "excerpts": len(excerpts),
        "hours": round(sum(e.frames for e in excerpts) / RATE / 3600, 3),
    }
    atomic_write(os.path.join(out, "summary.json"), json_bytes(summary, indent=1, sort_keys=True) + b"\n")
    per_split = {s: sum(c.get(s, {}).get("excerpts", 0) for c in summary["counts"].values())
                 for s in ("train", "val", "test")}
    log(f"{len(recs)} classes, {len(excerpts)} excerpts ({', '.join(f'{s} {n}' for s, n in per_split.items())}), "
        f"{summary['hours']:.2f} h; {stale} stale excerpt(s) removed")
    return summary


def main(argv: list[str] | None = None) -> int:
    a = parse_args(sys.argv[1:] if argv is None else argv)
    t0 = time.monotonic()
    out = os.path.abspath(a.out)
    cache = os.path.abspath(a.cache or os.path.join(out, "cache"))
    os.makedirs(out, exist_ok=True)
    sources, errors = fetch_all([p.strip() for p in a.packages.split(",") if p.strip()], cache)
    if errors:
        print(f"realmusic: error: {'; '.join(errors)}", file=sys.stderr)
        return 2
    try:
        build(out, sources, a)
    except ValueError as e:
        print(f"realmusic: error: {e}", file=sys.stderr)
        return 2
    log(f"done in {time.monotonic() - t0:.0f} s -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
