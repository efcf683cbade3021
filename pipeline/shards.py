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

Every byte is accounted for: the manifest records the sha256 of each tar and index file and of
each sample's WAV member; the other members are rebuilt from the manifest's sample records, so
`make_shards.py --verify` names the shard, sample and member of any changed byte.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, fields
from functools import cached_property
from typing import Any

import numpy as np

from pipeline.spec import FeatureSpec

SPLITS = ("train", "val", "test")
UNLABELED_SPLIT = "all"                    # the one split of an unlabeled collection
ALL_SPLITS = SPLITS + (UNLABELED_SPLIT,)   # every split name a shard folder may hold, in order
NO_LABEL = -1                              # .lab / .cls of an unlabeled sample
MANIFEST = "manifest.json"
MANIFEST_VERSION = 2          # 2: sha256 of every tar, index and WAV member (1: PCM checksums only)
READABLE_VERSIONS = (1, 2)    # readers take both; --verify needs 2

# Members of a sample, by extension. DALI's reader takes AUDIO, LABEL and UID with these dtypes.
AUDIO, CLASS, LABEL, UID, META = "wav", "cls", "lab", "uid", "json"
MEMBERS = (AUDIO, CLASS, LABEL, UID, META)
LABEL_DTYPE, UID_DTYPE = np.dtype("<i4"), np.dtype("<i8")
META_FIELDS = ("source", "label", "duration", "pcm_sha256")
STORAGE = "wav/pcm16"

OUTPUT_FILE = re.compile(r"(?:(?:train|val|test|all)-\d{6}\.(?:tar|idx)(?:\.partial)?|manifest\.json(?:\.tmp\d+)?)")


def shard_name(split: str, i: int) -> str:
    return f"{split}-{i:06d}.tar"


def index_name(tar_name: str) -> str:
    """The DALI index beside a tar: train-000000.tar -> train-000000.idx (also for full paths)."""
    return tar_name[:-4] + ".idx"


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
                META: json.dumps(meta, sort_keys=True, ensure_ascii=False).encode()}


@dataclass(frozen=True)
class Split:
    shards: tuple[str, ...]
    count: int
    per_class: dict[str, int]
    seconds: float


class Manifest:
    """manifest.json, typed: `m.classes`, `m.splits["train"].count`, `m.samples`, `m.spec`, ...

    `m["field"]` gives the JSON document's fields by name, as written (the schema is documented in
    the README and preprocess/make_shards.py).
    """

    def __init__(self, doc: dict[str, Any], path: str = MANIFEST):
        version = doc.get("version")
        if version not in READABLE_VERSIONS:
            raise ValueError(f"{path}: manifest version {version} is not supported (want one of {READABLE_VERSIONS})")
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

    def shard_paths(self, folder: str, split: str) -> tuple[list[str], list[str]]:
        """(tar paths, index paths) of a split, in order."""
        tars = [os.path.join(folder, n) for n in self.splits[split].shards]
        return tars, [index_name(t) for t in tars]

    def key_of(self) -> dict[int, str]:
        return {s.uid: s.key for s in self.samples}


def read_manifest(folder: str) -> Manifest:
    """The manifest of a shard folder, local or remote (s3://, gs://, http(s)://: pipeline.storage).

    FileNotFoundError (one line) when the folder has none; a remote one that cannot be read
    raises pipeline.storage.StorageError (one line).
    """
    from pipeline.storage import Store, StorageError, is_remote
    if is_remote(folder):
        store = Store(folder)
        try:
            data = store.read_bytes(MANIFEST)
        except StorageError as e:
            if str(e).endswith(": not found"):
                raise FileNotFoundError(f"{store.url(MANIFEST)}: no manifest; run preprocess/make_shards.py "
                                        "first (a prefix without one is unfinished)") from None
            raise
        return Manifest(json.loads(data), store.url(MANIFEST))
    path = os.path.join(folder, MANIFEST)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no manifest; run preprocess/make_shards.py first")
    with open(path, encoding="utf-8") as f:
        return Manifest(json.load(f), path)


def manifest_bytes(doc: dict[str, Any]) -> bytes:
    """The manifest as written: sorted keys, so the same shards give the same bytes."""
    return json.dumps(doc, indent=1, sort_keys=True, ensure_ascii=False).encode("utf-8")
