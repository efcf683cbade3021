"""make_shards with OUT in object storage (s3://bucket/prefix/, gs://bucket/prefix/).

The shards are built in a local staging folder by make_shards' own code path (resumable, byte for
byte), then uploaded with storage.store.Store:

1. if neither the remote manifest nor the marker `manifest.json.uploading` holds the new manifest's
   bytes (another build is there, or none), the remote manifest is deleted first (from then on the
   prefix reads as unfinished, as a local folder without manifest.json does), then every object
   of the new manifest's names that exists, then the marker is written (the new manifest's bytes);
2. every tar and index the manifest lists is uploaded, unless the remote already holds it with the
   right size: after step 1 only this build's own uploads can be there, so a rerun after a crash
   skips what was uploaded, and a same-sized file of an earlier build is never taken for it;
3. manifest.json is uploaded last, then the marker is deleted.

A rerun after a crash (while building or while uploading) resumes and ends with the same bytes
remotely. Objects under the prefix that the manifest does not list (an earlier, larger run's
shards) are left alone: readers go by the manifest. After a complete upload the staging folder's
files are deleted.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from typing import Callable

from core.shards import MANIFEST, MAX_MANIFEST_BYTES, OUTPUT_FILE, Manifest, index_name
from storage.store import NotFound, Store, StorageError

UPLOADING = MANIFEST + ".uploading"   # the manifest being uploaded; present while an upload is unfinished


def default_staging(url: str) -> str:
    """~/.cache/parallel_tunes/staging/<hash of the URL> (XDG_CACHE_HOME honoured)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "parallel_tunes", "staging", hashlib.sha256(url.rstrip("/").encode()).hexdigest()[:16])


def check_destination(url: str, log: Callable[[str], None] | None = None) -> None:
    """Fail early, before hours of decoding, on a URL that cannot work: a read-only scheme, a missing
    client, bucket or credential, an unreachable endpoint (StorageError, one line). A few quick
    tries only (about 2 s): an endpoint that does not answer now is most likely a wrong one."""
    if url.startswith(("http://", "https://")):
        raise StorageError(f"{url.rstrip('/')}: HTTP(S) locations are read-only; write to s3://, gs:// or a folder")
    Store(url, retries=4, log=log).size(MANIFEST)  # a real request: bucket, credentials and endpoint


def _read_or_none(store: Store, name: str) -> bytes | None:
    try:
        return store.read_bytes(name, max_bytes=MAX_MANIFEST_BYTES)
    except NotFound:
        return None


def upload(staging: str, store: Store, *, progress: bool = True,
           after_each: Callable[[int], None] | None = None) -> tuple[int, int, int]:
    """Upload a finished staging folder (module docstring). Returns (files uploaded, their bytes, files kept).

    `after_each(n)` is called after the n-th upload (make_shards' test-only crash hook)."""
    from tqdm import tqdm

    with open(os.path.join(staging, MANIFEST), "rb") as f:
        new = f.read()
    m = Manifest(json.loads(new), os.path.join(staging, MANIFEST))
    names = [n for s in m.split_names for tar in m.splits[s].shards for n in (tar, index_name(tar))]
    remote_manifest = _read_or_none(store, MANIFEST)
    marker = _read_or_none(store, UPLOADING)
    same_build = new in (remote_manifest, marker)  # whatever of these names exists was uploaded by this build
    if remote_manifest is not None and remote_manifest != new:
        store.remove(MANIFEST)
    if not same_build:
        for name in names:
            if store.size(name) is not None:
                store.remove(name)
        store.put_bytes(new, UPLOADING)
    todo = []
    for name in names:
        size = os.path.getsize(os.path.join(staging, name))
        if not (same_build and store.size(name) == size):
            todo.append((name, size))
    bar = tqdm(total=sum(s for _, s in todo), desc="upload", unit="B", unit_scale=True, unit_divisor=1024,
               disable=not progress or not todo)
    for i, (name, size) in enumerate(todo, 1):
        store.put(os.path.join(staging, name), name)
        bar.update(size)
        if after_each:
            after_each(i)
    bar.close()
    if remote_manifest != new:
        store.put_bytes(new, MANIFEST)
    if marker is not None or not same_build:
        store.remove(UPLOADING)
    return len(todo), sum(s for _, s in todo), len(names) - len(todo)


def clear_staging(staging: str) -> None:
    """Delete what make_shards wrote into the staging folder (and the folder, if that leaves it empty)."""
    shutil.rmtree(os.path.join(staging, ".work"), ignore_errors=True)
    for name in os.listdir(staging):
        if OUTPUT_FILE.fullmatch(name):
            os.remove(os.path.join(staging, name))
    with contextlib.suppress(OSError):
        os.rmdir(staging)
