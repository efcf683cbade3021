"""A shard folder, local or remote: its manifest read with the user's trust options, its files opened.

    read_manifest(folder)   the folder's Manifest (core.shards checks it), local or s3:// gs:// http(s)://
    open_files(...)         a local folder's files as they are, a remote one's through the node cache
    trust_warnings(...)     what a reader of a remote folder should be told (unverified, plain http)
    remote_files(url)       make_shards --verify's staging: one remote file at a time, bounded, deleted after
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from typing import Callable, Iterator

from core.shards import MANIFEST, MAX_MANIFEST_BYTES, Manifest, ManifestError, check_name, parse_manifest
from storage.cache import LocalFiles, NodeCache
from storage.store import NotFound, Store, StorageError, is_remote


def read_manifest(folder: str, *, allow_unverified: bool = False, sha256: str | None = None) -> Manifest:
    """The manifest of a shard folder, local or remote (s3://, gs://, http(s)://: storage.store).

    FileNotFoundError (one line) when the folder has none; ManifestError (one line) when it is
    malformed, differs from the pinned `sha256`, or is remote and
    lacks a checksum for a file it lists (unless `allow_unverified`: then its files are fetched as
    served). One that cannot be read, or is larger than MAX_MANIFEST_BYTES, raises
    storage.store.StorageError.
    """
    store = Store(folder)  # local or remote: one bounded read
    where = store.shown(MANIFEST)
    try:
        data = store.read_bytes(MANIFEST, max_bytes=MAX_MANIFEST_BYTES)
    except NotFound:
        unfinished = " (a prefix without one is unfinished)" if is_remote(folder) else ""
        raise FileNotFoundError(f"{where}: no manifest; run preprocess/make_shards.py first{unfinished}") from None
    m = parse_manifest(data, where, sha256)
    missing = m.unverifiable()
    if is_remote(folder) and missing and not allow_unverified:
        raise ManifestError(
            f"{where}: version {m.version} manifest gives no checksum for {len(missing)} of its "
            f"{len(m.listed_files)} files (e.g. {missing[0]}): refusing to fetch files that cannot be verified. "
            "Rebuild it with make_shards (version 3), or pass --allow-unverified to take them as served")
    return m


def open_files(shard_dir: str, manifest: Manifest, cache_dir: str | None, cache_limit: int | None,
               log=print, *, allow_unverified: bool = False) -> LocalFiles | NodeCache:
    """A local folder's files as they are, or a remote folder's through the node cache (which
    refuses a file the manifest gives no checksum for, unless `allow_unverified`)."""
    if not is_remote(shard_dir):
        return LocalFiles(shard_dir)
    return NodeCache(Store(shard_dir, log=log), cache_dir, manifest.files, cache_limit, log,
                     sizes=manifest.sizes, allow_unverified=allow_unverified)


def trust_warnings(shard_dir: str, manifest: Manifest, pinned: bool = False) -> list[str]:
    """What a user reading `shard_dir` should know about trusting it (one line each, no secrets):
    files taken unverified or unbounded, and a manifest sent over plain HTTP."""
    if not is_remote(shard_dir):
        return []
    out = []
    unverifiable = manifest.unverifiable()
    if unverifiable:
        out.append(f"warning: {manifest.path}: {len(unverifiable)} files have no checksum in this version "
                   f"{manifest.version} manifest and are taken as served (--allow-unverified); rebuild the folder "
                   "with make_shards to verify every byte")
    elif manifest.unsized():
        out.append(f"warning: {manifest.path}: version {manifest.version} records no file sizes: a fetch is bounded only "
                   "by --cache-limit and the free disk space; rebuild with make_shards to record them")
    if shard_dir.startswith("http://") and not pinned:
        out.append(f"warning: {manifest.path}: plain http: the manifest (and so every checksum) is unauthenticated: "
                   "anyone on the network path can change what is read; use https:// or pin it with --manifest-sha256")
    return out


@contextlib.contextmanager
def remote_files(url: str, sizes: dict[str, int] | None = None
                 ) -> Iterator[Callable[[str], contextlib.AbstractContextManager[str | None]]]:
    """For make_shards.verify: `with remote_files(url) as open_file: with open_file(name) as path:` gives a
    local copy of object `name` (downloaded into a temporary folder, deleted after use), or None when
    the object does not exist. Other storage failures raise StorageError.

    `name` must be a plain shard file name (core.shards.check_name) and the copy stays inside
    the temporary folder; a download stops at `sizes[name]` bytes (the manifest's record), or, for
    a manifest without sizes, at the free space of the temporary folder's disk."""
    store = Store(url)
    with tempfile.TemporaryDirectory(prefix="pt-verify-") as tmp:
        @contextlib.contextmanager
        def open_file(name: str) -> Iterator[str | None]:
            path = os.path.join(tmp, check_name(name, store.shown(MANIFEST)))
            if os.path.dirname(os.path.realpath(path)) != os.path.realpath(tmp):
                raise StorageError(f"{store.shown(name)}: would be written outside {tmp}; refused")
            limit = (sizes or {}).get(name)
            what = "the manifest records"
            if limit is None:
                limit, what = shutil.disk_usage(tmp).free - (64 << 20), "free on the disk"
            try:
                store.get(name, path, max_bytes=limit, what=what)
            except NotFound:
                with contextlib.suppress(FileNotFoundError):
                    os.remove(path)
                yield None
                return
            try:
                yield path
            finally:
                os.remove(path)
        yield open_file
