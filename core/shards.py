"""The shard format: the one contract between make_shards (the writer) and every reader.

A shard folder holds

    {split}-NNNNNN.tar   WebDataset tar (split in SPLITS, or UNLABELED_SPLIT); per sample, under a dot-free key:
                           <key>.wav   16-bit PCM mono WAV at the FeatureSpec's sample rate
                           <key>.cls   class index as ASCII text (the WebDataset convention)
                           <key>.lab   class index, int32 little-endian (what DALI reads)
                           <key>.uid   sample id, int64 little-endian (manifest "uid")
                           <key>.json  {"source", "label", "duration", "pcm_sha256"}
    {split}-NNNNNN.idx   DALI's index of that tar
    manifest.json        the Manifest below, written last: a folder without one is unfinished

An unlabeled collection (`make_shards.py --unlabeled`: a folder to predict, not to train on) has
one split, UNLABELED_SPLIT ("all"), and a manifest with `"unlabeled": true`, `"classes": []` and
`"label": null` in every sample; its .lab members hold NO_LABEL (-1) and its .cls members "-1".
Labeled manifests carry no "unlabeled" field, so their bytes are what they were before it existed.

Every byte is accounted for: the manifest records the sha256 and size of each tar and index file
and the sha256 of each sample's WAV member; the other members are rebuilt from the manifest's
sample records, so `make_shards.py --verify` names the shard, sample and member of any changed byte.

A manifest is untrusted input (it may come from a bucket or server other people write to):
`Manifest()` checks its whole structure before anything uses it. Every file name it gives is a
plain name of this format's pattern (`{split}-NNNNNN.tar|idx`: no separator, no `..`, nothing
absolute or encoded), every count, size, duration and FeatureSpec value has its type and a sane
range, and the parts agree with each other (each sample's shard is listed in its split, counts
match). Anything else is one ManifestError line naming the manifest and the field.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import tarfile
from collections import defaultdict
from dataclasses import MISSING, dataclass, fields
from functools import cached_property
from typing import Any, Callable, ContextManager

import numpy as np

from core.faults import fault_point
from core.spec import FeatureSpec
from core.text import json_bytes

SPLITS = ("train", "val", "test")
UNLABELED_SPLIT = "all"                    # the one split of an unlabeled collection
ALL_SPLITS = SPLITS + (UNLABELED_SPLIT,)   # every split name a shard folder may hold, in order
NO_LABEL = -1                              # .lab / .cls of an unlabeled sample
MANIFEST = "manifest.json"
MANIFEST_VERSION = 3          # 3: + the size of every tar and index; 2: sha256 of every tar, index and WAV member
READABLE_VERSIONS = (1, 2, 3)  # readers take all; --verify needs >= 2; remote folders need 3 (or an explicit opt-out)
MAX_MANIFEST_BYTES = 256 << 20
MAX_FILE_BYTES = 1 << 44      # 16 TiB: no shard file is larger

# Members of a sample, by extension. DALI's reader takes AUDIO, LABEL and UID with these dtypes.
AUDIO, CLASS, LABEL, UID, META = "wav", "cls", "lab", "uid", "json"
LABEL_DTYPE, UID_DTYPE = np.dtype("<i4"), np.dtype("<i8")
STORAGE = "wav/pcm16"

SHARD_FILE = re.compile(r"(train|val|test|all)-\d{6}\.(tar|idx)")   # every name a manifest may give
KEY = re.compile(r"[A-Za-z0-9_-]{1,128}")                             # a sample key: dot-free (DALI), plain
HEX64 = re.compile(r"[0-9a-f]{64}")
OUTPUT_FILE = re.compile(r"(?:(?:train|val|test|all)-\d{6}\.(?:tar|idx)(?:\.partial)?|manifest\.json(?:\.tmp\w+)?)")


class ManifestError(ValueError):
    """A manifest that is not a well-formed shard-folder manifest; str() is one line naming it."""


def check_name(name: object, where: str) -> str:
    """`name` if it is a plain shard or index file name of this format, else ManifestError. The one
    check every reader relies on before it joins a manifest's name to a folder or a URL."""
    if not isinstance(name, str) or not SHARD_FILE.fullmatch(name):
        raise ManifestError(f"{where}: {_show(name)} is not a shard file name ({{split}}-NNNNNN.tar or .idx); "
                            "refusing a manifest that names other paths")
    return name


def _show(value: object) -> str:
    """A value from an untrusted file, for a one-line message: repr (escapes control characters), cut short."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def shard_name(split: str, i: int) -> str:
    return f"{split}-{i:06d}.tar"


def index_name(tar_name: str) -> str:
    """The DALI index beside a tar: train-000000.tar -> train-000000.idx (also for full paths)."""
    return tar_name[:-4] + ".idx"


WAV_HEAD = 512  # a member's chunks before its audio must fit here (soundfile writes 44 bytes)


def wav_member_frames(member: bytes | memoryview, rate: int, max_frames: int, where: str) -> int:
    """The frame count of a sample's WAV member, checked to be this format's audio: RIFF/WAVE,
    16-bit PCM, mono, at `rate`, its samples inside the member, at most `max_frames` of them.

    What the DALI graph is handed is bounded by this: a member that holds anything else (a FLAC,
    another rate, a header claiming more than the bytes) is ValueError, one line naming `where`.
    Reads only the member's first WAV_HEAD bytes."""
    head = bytes(member[:WAV_HEAD])
    size = len(member)
    if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        raise ValueError(f"{where}: .{AUDIO} member is not a RIFF/WAVE file")
    pos, fmt = 12, None
    while pos + 8 <= len(head):
        cid, csize = head[pos:pos + 4], int.from_bytes(head[pos + 4:pos + 8], "little")
        body = pos + 8
        if cid == b"fmt ":
            fmt = head[body:body + 16]
            if len(fmt) < 16:
                break
            tag, channels, got_rate = int.from_bytes(fmt[0:2], "little"), int.from_bytes(fmt[2:4], "little"), \
                int.from_bytes(fmt[4:8], "little")
            bits = int.from_bytes(fmt[14:16], "little")
            if (tag, channels, bits) != (1, 1, 16) or got_rate != rate:
                raise ValueError(f"{where}: .{AUDIO} member is format {tag}, {channels} channel(s), {bits} bit, "
                                 f"{got_rate} Hz; the shard format is 16-bit PCM mono at {rate} Hz")
        elif cid == b"data":
            if fmt is None:
                break
            if csize % 2 or body + csize > size:
                raise ValueError(f"{where}: .{AUDIO} member's data chunk ({csize} bytes) does not fit its "
                                 f"{size - body} bytes")
            if csize // 2 > max_frames:
                raise ValueError(f"{where}: .{AUDIO} member holds {csize // 2} frames, more than the "
                                 f"{max_frames} its manifest allows")
            return csize // 2
        pos = body + csize + (csize & 1)
    raise ValueError(f"{where}: .{AUDIO} member has no fmt and data chunks in its first {WAV_HEAD} bytes")


def sha256_file(path: str, block: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            h.update(chunk)
    return h.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class Sample:
    """One accepted track, as the manifest records it."""
    uid: int
    key: str
    source: str
    label: str
    split: str
    shard: str
    duration: float
    pcm_sha256: str
    source_rate: int
    source_channels: int
    source_format: str
    clipped: bool
    wav_sha256: str | None = None     # version >= 2
    warnings: tuple[str, ...] = ()

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Sample":
        known = {f.name for f in fields(cls)}
        return cls(**{k: (tuple(v) if k == "warnings" else v) for k, v in d.items() if k in known})

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        if not self.warnings:
            del d["warnings"]
        else:
            d["warnings"] = list(self.warnings)
        if self.wav_sha256 is None:
            del d["wav_sha256"]
        return d

    def members(self, class_index: int, wav: bytes) -> dict[str, bytes]:
        """The exact bytes of this sample's tar members (with its WAV bytes given)."""
        meta = {"source": self.source, "label": self.label, "duration": self.duration, "pcm_sha256": self.pcm_sha256}
        return {AUDIO: wav, CLASS: str(class_index).encode(), LABEL: np.array(class_index, LABEL_DTYPE).tobytes(),
                UID: np.array(self.uid, UID_DTYPE).tobytes(),
                META: json_bytes(meta, sort_keys=True)}


REQUIRED_SAMPLE_FIELDS = tuple(f.name for f in fields(Sample) if f.default is MISSING)


@dataclass(frozen=True)
class Split:
    shards: tuple[str, ...]
    count: int
    per_class: dict[str, int]
    seconds: float


class Manifest:
    """manifest.json, typed: `m.classes`, `m.splits["train"].count`, `m.samples`, `m.spec`, ...

    `m["field"]` gives the JSON document's fields by name, as written (the schema: build_manifest
    below writes it, _Checker checks it).
    """

    def __init__(self, doc: dict[str, Any], path: str = MANIFEST):
        if not isinstance(doc, dict):
            raise ManifestError(f"{path}: not a manifest (a JSON {type(doc).__name__}, not an object)")
        version = doc.get("version")
        if type(version) is not int or version not in READABLE_VERSIONS:
            raise ManifestError(f"{path}: manifest version {_show(version)} is not supported "
                                f"(want one of {READABLE_VERSIONS})")
        _Checker(path).manifest(doc)
        self.doc, self.path = doc, path

    def __getitem__(self, field: str) -> Any:
        return self.doc[field]

    def get(self, field: str, default: Any = None) -> Any:
        return self.doc.get(field, default)

    @property
    def version(self) -> int:
        return self.doc["version"]

    @property
    def classes(self) -> list[str]:
        return self.doc["classes"]

    @property
    def unlabeled(self) -> bool:
        """A collection sharded with --unlabeled: one split (UNLABELED_SPLIT), no classes, no labels."""
        return bool(self.doc.get("unlabeled", False))

    @property
    def split_names(self) -> list[str]:
        """The splits this folder holds, in ALL_SPLITS order (train, val, test; or all)."""
        return [s for s in ALL_SPLITS if s in self.doc["splits"]]

    @property
    def spec(self) -> FeatureSpec:
        return FeatureSpec.from_dict(self.doc["feature_spec"])

    @cached_property
    def splits(self) -> dict[str, Split]:
        return {s: Split(tuple(v["shards"]), v["count"], v["per_class"], v["seconds"]) for s, v in self.doc["splits"].items()}

    @cached_property
    def samples(self) -> list[Sample]:
        return [Sample.from_dict(d) for d in self.doc["samples"]]

    @property
    def files(self) -> dict[str, str]:
        """{tar or index name: sha256} (version >= 2)."""
        return self.doc.get("files", {})

    @property
    def sizes(self) -> dict[str, int]:
        """{tar or index name: bytes} (version >= 3)."""
        return self.doc.get("sizes", {})

    @property
    def listed_files(self) -> list[str]:
        """Every tar and index file the splits list, in order."""
        return [n for s in self.split_names for tar in self.splits[s].shards for n in (tar, index_name(tar))]

    def unverifiable(self) -> list[str]:
        """The listed files this manifest gives no checksum for (a reader could not verify them)."""
        return [n for n in self.listed_files if n not in self.files]

    def unsized(self) -> list[str]:
        """The listed files this manifest gives no size for (version < 3: a fetch is bounded by the
        cache limit and the free disk space only)."""
        return [n for n in self.listed_files if n not in self.sizes]

    def shard_paths(self, folder: str, split: str) -> tuple[list[str], list[str]]:
        """(tar paths, index paths) of a split, in order."""
        tars = [os.path.join(folder, n) for n in self.splits[split].shards]
        return tars, [index_name(t) for t in tars]

    def key_of(self) -> dict[int, str]:
        return {s.uid: s.key for s in self.samples}


def parse_manifest(data: bytes, where: str, sha256: str | None = None) -> Manifest:
    """A manifest from its file's bytes (read, at most MAX_MANIFEST_BYTES of them, by
    storage.folder.read_manifest, local or remote): ManifestError (one line) for anything but a
    well-formed manifest, or bytes whose sha256 is not the pinned `sha256`."""
    if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256.lower():
        raise ManifestError(f"{where}: sha256 {hashlib.sha256(data).hexdigest()[:16]}... is not the pinned "
                            f"{sha256[:16]}... (--manifest-sha256): the folder changed or is not the one meant")
    try:
        doc = json.loads(data)
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise ManifestError(f"{where}: not valid JSON ({str(e)[:100]})") from None
    return Manifest(doc, where)


def manifest_bytes(doc: dict[str, Any]) -> bytes:
    """The manifest as written: sorted keys, so the same shards give the same bytes."""
    return json_bytes(doc, indent=1, sort_keys=True)


# ------------------------------------------------------------------------------------------ writing

def write_shard(path: str, samples: list[dict], wav_of: Callable[[str], bytes], class_index: dict[str, int]) -> dict[str, str]:
    """Write one tar and its DALI index atomically; fixed tar metadata makes the bytes reproducible.

    `samples` are sample records (Sample's fields; label None when unlabeled), `wav_of(key)` a
    sample's WAV bytes. The members are Sample.members (the format's one definition). Sets each
    record's "wav_sha256"; returns {tar name: sha256, index name: sha256} for the manifest."""
    import webdataset as wds
    from wds2idx import IndexCreator

    tmp = path + ".partial"
    with open(tmp, "wb") as f:  # "wb" truncates a .partial left by a killed run
        tw = wds.TarWriter(f, user="", group="", mode=0o444, mtime=0)
        for r in samples:
            wav = wav_of(r["key"])
            r["wav_sha256"] = sha256_bytes(wav)
            smp = Sample.from_dict({**r, "split": "", "shard": ""})
            label = NO_LABEL if r["label"] is None else class_index[r["label"]]
            tw.write({"__key__": r["key"], **smp.members(label, wav)})
        tw.close()
        f.flush()
        os.fsync(f.fileno())
    folder = os.path.dirname(os.path.abspath(path))
    fault_point("shards", lambda: sum(n.endswith(".tar") for n in os.listdir(folder)))
    idx, idx_tmp = index_name(path), index_name(path) + ".partial"
    with IndexCreator(tmp, idx_tmp, verbose=False) as ic:
        ic.create_index()
    sums = {os.path.basename(path): sha256_file(tmp), os.path.basename(idx): sha256_file(idx_tmp)}
    os.replace(idx_tmp, idx)
    os.replace(tmp, path)  # the tar appears last: a .tar present means its .idx is complete
    return sums


def build_manifest(*, classes: list[str], spec: FeatureSpec, folder: str, files: dict[str, str],
                   splits: dict[str, dict], samples: list[dict], options: dict, inputs: int,
                   empty_class_folders: list[str], duplicates: list[dict], rejects: list[dict],
                   unlabeled: bool) -> dict[str, Any]:
    """The manifest document (version MANIFEST_VERSION) of shards written into `folder`: the one
    place its schema is spelled out. `samples` are sample records (Sample's fields)."""
    doc = {
        "version": MANIFEST_VERSION,
        "classes": classes,
        "feature_spec": spec.to_dict(),
        "sample_rate": spec.sample_rate,
        "storage": STORAGE,
        "files": files,
        "sizes": {name: os.path.getsize(os.path.join(folder, name)) for name in files},
        "splits": splits,
        "total_seconds": round(sum(r["duration"] for r in samples), 2),
        "options": options,
        "inputs": inputs,
        "empty_class_folders": empty_class_folders,
        "duplicates": duplicates,
        "samples": [Sample.from_dict(r).to_dict() for r in samples],
        "rejects": sorted(rejects, key=lambda r: (r["path"], r["reason"], r["message"])),
    }
    if unlabeled:  # labeled manifests carry no such field
        doc["unlabeled"] = True
    return doc


# ---------------------------------------------------------------------------------------- verifying

def check_files(m: Manifest, open_file: Callable[[str], ContextManager[str | None]]) -> list[str]:
    """verify()'s checks, with the files from `open_file(name)`: a context manager giving a local
    path to the file's bytes, or None when it does not exist."""
    class_index = {c: i for i, c in enumerate(m.classes)}
    by_shard: dict[str, dict[str, Sample]] = defaultdict(dict)
    for smp in m.samples:
        by_shard[smp.shard][smp.key] = smp
    problems = []
    for split in m.split_names:
        seen = 0
        for name in m.splits[split].shards:
            with open_file(name) as tar, open_file(index_name(name)) as idx:
                seen += _check_shard(m, name, tar, idx, by_shard.get(name, {}), class_index, problems)
        if seen != m.splits[split].count:
            problems.append(f"{split}: {seen} samples in shards, manifest says {m.splits[split].count}")
    return problems


def _check_shard(m: Manifest, name: str, tar: str | None, idx: str | None, want: dict[str, Sample],
                 class_index: dict[str, int], problems: list[str]) -> int:
    """One tar and its index (local paths, None if missing) against the manifest: problems are
    appended; returns the number of samples the tar holds."""
    if tar is None or idx is None:
        problems.append(f"{name}: tar or index file missing")
        return 0
    for n in (name, index_name(name)):
        if n not in m.files:
            problems.append(f"{n}: the manifest gives no checksum for it: it cannot be verified")
    if index_name(name) in m.files and sha256_file(idx) != m.files[index_name(name)]:
        problems.append(f"{index_name(name)}: index differs from the one written with its shard")
    if name in m.files and sha256_file(tar) == m.files[name]:  # the bytes that were written: its samples are the manifest's
        return len(want)
    try:  # only a tar that differs is read member by member, to name what changed
        found = read_shard_members(tar)
    except (tarfile.TarError, OSError, EOFError, ValueError) as e:
        problems.append(f"{name}: unreadable tar ({e})")
        return 0
    before = len(problems)
    for key in sorted(set(want) ^ set(found)):
        problems.append(f"{name}: sample {key} is {'missing' if key in want else 'not in the manifest'}")
    for key in sorted(set(want) & set(found)):
        smp, got = want[key], found[key]
        label = NO_LABEL if smp.label is None else class_index[smp.label]
        expect = smp.members(label, b"")
        for ext in sorted(set(expect) | set(got)):
            if ext not in got:
                problems.append(f"{name}: sample {key} member .{ext} is missing")
            elif ext not in expect:
                problems.append(f"{name}: sample {key} member .{ext} is not part of the format")
            elif ext == AUDIO:
                if got[ext][0] != smp.wav_sha256:
                    problems.append(f"{name}: sample {key} member .{ext} differs from the manifest (audio checksum)")
            elif got[ext][1] != expect[ext]:
                held = got[ext][1][:40] if got[ext][1] is not None else "more than 1 MB"
                problems.append(f"{name}: sample {key} member .{ext} differs from the manifest "
                                f"(holds {held!r}, should hold {expect[ext][:40]!r})")
    if len(problems) == before and name in m.files:
        problems.append(f"{name}: file checksum differs from the manifest, outside the samples' members "
                        "(tar headers or padding)")
    return len(found)


SMALL_MEMBER = 1 << 20  # label, class, uid and metadata members are far smaller; their bytes are compared


def read_shard_members(tar: str) -> dict[str, dict[str, tuple[str, bytes | None]]]:
    """{key: {ext: (sha256, the bytes if at most SMALL_MEMBER)}}, hashed as streams: a member is never
    held whole in memory. A sparse member, or one that claims more bytes than the tar holds, is
    refused (ValueError): a few KB of tar can declare terabytes."""
    samples: dict[str, dict[str, tuple[str, bytes | None]]] = defaultdict(dict)
    size = os.path.getsize(tar)
    with tarfile.open(tar) as tf:
        for member in tf:
            if member.issparse():
                raise ValueError(f"member {member.name!r} is a sparse file, which shards never hold")
            if member.size > size:
                raise ValueError(f"member {member.name!r} claims {member.size:,} bytes, more than the whole tar")
            if not member.isfile():
                continue
            key, _, ext = member.name.partition(".")
            h, small, f = hashlib.sha256(), bytearray(), tf.extractfile(member)
            while chunk := f.read(1 << 20):
                h.update(chunk)
                if len(small) <= SMALL_MEMBER:
                    small += chunk
            samples[key][ext] = (h.hexdigest(), bytes(small) if len(small) <= SMALL_MEMBER else None)
    return samples


class _Checker:
    """Manifest() 's structural checks (module docstring), one ManifestError line at the first problem."""

    def __init__(self, path: str):
        self.path = path

    def fail(self, where: str, what: str) -> None:
        raise ManifestError(f"{self.path}: {where}: {what}")

    def typed(self, value: Any, kind: type | tuple[type, ...], where: str) -> Any:
        if isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
            self.fail(where, f"{_show(value)} is not a {getattr(kind, '__name__', kind)}")
        if not isinstance(value, kind):
            self.fail(where, f"{_show(value)} is not a {getattr(kind, '__name__', kind)}")
        return value

    def number(self, value: Any, where: str, lo: float, hi: float, integer: bool = False) -> Any:
        self.typed(value, int if integer else (int, float), where)
        if not lo <= value <= hi:  # NaN fails too
            self.fail(where, f"{_show(value)} is outside [{lo:g}, {hi:g}]")
        return value

    def text(self, value: Any, where: str, limit: int = 4096, pattern: re.Pattern | None = None) -> str:
        self.typed(value, str, where)
        if len(value) > limit or (pattern is not None and not pattern.fullmatch(value)):
            self.fail(where, f"{_show(value)} is not an allowed value")
        return value

    def manifest(self, doc: dict[str, Any]) -> None:
        version = doc["version"]
        unlabeled = self.typed(doc.get("unlabeled", False), bool, "unlabeled")
        classes = self.typed(doc.get("classes"), list, "classes")
        if len(classes) > 100_000 or len(set(map(str, classes))) != len(classes):
            self.fail("classes", "too many, or repeated")
        for i, c in enumerate(classes):
            self.text(c, f"classes[{i}]", 256)
            if not c or any(ord(ch) < 32 or ord(ch) == 127 for ch in c):
                self.fail(f"classes[{i}]", f"{_show(c)} is empty or holds control characters")
        try:
            FeatureSpec.from_dict(doc.get("feature_spec"))
        except (TypeError, ValueError) as e:
            self.fail("feature_spec", str(e))
        splits = self.typed(doc.get("splits"), dict, "splits")
        if not splits or not set(splits) <= set(ALL_SPLITS):
            self.fail("splits", f"{_show(sorted(map(str, splits)))} is not a set of {ALL_SPLITS}")
        listed: dict[str, str] = {}
        for name, sp in splits.items():
            self.split(name, sp, classes, listed)
        self.files(doc, version, set(listed) | {index_name(n) for n in listed})
        self.samples(doc.get("samples"), classes, unlabeled, splits, listed)
        if "total_seconds" in doc:
            self.number(doc["total_seconds"], "total_seconds", 0, 1e12)
        for i, r in enumerate(self.typed(doc.get("rejects", []), list, "rejects")):
            self.typed(r, dict, f"rejects[{i}]")
            for k in ("path", "reason", "message"):
                self.text(r.get(k), f"rejects[{i}].{k}")
        for i, path in enumerate(self.typed(doc.get("outside_source", []), list, "outside_source")):
            self.text(path, f"outside_source[{i}]")  # sources from outside SRC (make_shards' outside_source)

    def split(self, name: str, sp: Any, classes: list[str], listed: dict[str, str]) -> None:
        where = f"splits.{name}"
        self.typed(sp, dict, where)
        shards = self.typed(sp.get("shards"), list, f"{where}.shards")
        for i, tar in enumerate(shards):
            check_name(tar, f"{self.path}: {where}.shards[{i}]")
            if not tar.startswith(name + "-") or not tar.endswith(".tar"):
                self.fail(f"{where}.shards[{i}]", f"{_show(tar)} is not a tar of split {name}")
            if tar in listed:
                self.fail(f"{where}.shards[{i}]", f"{_show(tar)} is listed twice")
            listed[tar] = name
        self.number(sp.get("count"), f"{where}.count", 0, 1e12, integer=True)
        self.number(sp.get("seconds"), f"{where}.seconds", 0, 1e12)
        per_class = self.typed(sp.get("per_class"), dict, f"{where}.per_class")
        for c, n in per_class.items():
            if c not in classes:
                self.fail(f"{where}.per_class", f"{_show(c)} is not one of the classes")
            self.number(n, f"{where}.per_class.{c}", 0, 1e12, integer=True)

    def files(self, doc: dict[str, Any], version: int, listed: set[str]) -> None:
        for field, value_ok in (("files", lambda v: isinstance(v, str) and HEX64.fullmatch(v)),
                                ("sizes", lambda v: type(v) is int and 0 <= v <= MAX_FILE_BYTES)):
            table = self.typed(doc.get(field, {}), dict, field)
            for name, value in table.items():
                check_name(name, f"{self.path}: {field}")
                if name not in listed:
                    self.fail(field, f"{_show(name)} is not a file of any split")
                if not value_ok(value):
                    self.fail(f"{field}.{name}", f"{_show(value)} is not a "
                                                 f"{'sha256 (64 hex digits)' if field == 'files' else 'size in bytes'}")

    def samples(self, samples: Any, classes: list[str], unlabeled: bool, splits: dict, listed: dict[str, str]) -> None:
        self.typed(samples, list, "samples")
        class_set, uids, per_split = set(classes), set(), dict.fromkeys(splits, 0)
        for i, d in enumerate(samples):
            where = f"samples[{i}]"
            self.typed(d, dict, where)
            missing = [k for k in REQUIRED_SAMPLE_FIELDS if k not in d]
            if missing:
                self.fail(where, f"lacks {', '.join(missing)}")
            uid = self.number(d["uid"], f"{where}.uid", 0, 2**62, integer=True)
            if uid in uids:
                self.fail(f"{where}.uid", f"{uid} is used twice")
            uids.add(uid)
            self.text(d["key"], f"{where}.key", pattern=KEY)
            self.text(d["source"], f"{where}.source")
            if unlabeled:
                if d["label"] is not None:
                    self.fail(f"{where}.label", "an unlabeled collection's samples have no label")
            elif d["label"] not in class_set:
                self.fail(f"{where}.label", f"{_show(d['label'])} is not one of the classes")
            shard = d["shard"]
            if listed.get(shard) is None or listed[shard] != d["split"]:
                self.fail(f"{where}.shard", f"{_show(shard)} is not a listed tar of split {_show(d['split'])}")
            per_split[d["split"]] += 1
            self.number(d["duration"], f"{where}.duration", 0, 1e7)
            for k in ("pcm_sha256", "wav_sha256"):
                if k in d and not (isinstance(d[k], str) and HEX64.fullmatch(d[k])):
                    self.fail(f"{where}.{k}", f"{_show(d[k])} is not a sha256")
            for k in ("source_rate", "source_channels"):
                self.number(d[k], f"{where}.{k}", 0, 1e9, integer=True)
            for k, kind in (("source_format", str), ("clipped", bool), ("warnings", list)):
                if k in d:
                    self.typed(d[k], kind, f"{where}.{k}")
            for w in d.get("warnings", ()):
                self.text(w, f"{where}.warnings")
        for name, sp in splits.items():
            if per_split[name] != sp["count"]:
                self.fail(f"splits.{name}.count", f"{sp['count']}, but {per_split[name]} samples name this split")
