"""The node-local shard cache: remote shards fetched once per node, verified, shared by its ranks.

A remote shard folder (s3://, gs://, http(s)://) is mirrored, file by file and on demand, into
`CACHE_DIR/<name>-<hash of the URL, credentials and query removed>/`. Entries are keyed by content:
`train-000003.tar` whose manifest records sha256 H is cached as `train-000003.H.tar`, so a file
let in under one manifest is never served for another manifest that records other bytes under
the same name. The ranks of one node are separate processes that share it through the file system:
- every name is checked first (core.shards.check_name): a plain shard file name, so the
  cache never writes or reads outside its folder, whatever the manifest says;
- a file without a checksum in the manifest is refused unless the cache was opened with
  `allow_unverified` (then it is cached as `<stem>.unverified.<ext>` and taken as served);
- a fetch holds an flock on `.locks/<file>`, so two ranks that want the same shard fetch it once:
  the second waits and then finds it (a hit; a hit's size is checked against the manifest);
- before a fetch, the file's recorded size must fit the cache limit and the free disk space; the
  transfer stops at that size (or, for a manifest without sizes, at the limit or the free space);
- a fetch streams into a temp file, checks its sha256 against the manifest (one more try on a
  mismatch, then a StorageError naming the URL) and renames it into place: a file in the cache
  is always whole and verified;
- with a size limit, the least recently used files are deleted before a fetch (room for it) and
  after it until the cache fits. A rank that still reads a deleted file keeps it open (Linux frees it at the last
  close); one that needs it again fetches it again (a miss). The limit must hold each rank's
  working set (shuffle window + lookahead), or the cache overshoots it, said once in the log.

A local shard folder needs none of this: `LocalFiles` hands out its paths.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import shutil
import threading
import time
from dataclasses import asdict, dataclass, fields

from core.folders import UnsafeFolder, state_folder
from core.shards import MANIFEST, check_name
from storage.store import Store, StorageError

DISK_RESERVE = 256 << 20   # bytes a fetch leaves free on the cache's disk


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True


def default_cache_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "parallel_tunes", "shards")


@dataclass
class CacheStats:
    """One rank's traffic since the last reset (the loader resets it every epoch)."""
    hits: int = 0            # files found in the node cache (fetched earlier, or by another rank)
    misses: int = 0          # files this rank fetched
    bytes_fetched: int = 0
    fetch_seconds: float = 0.0   # summed over fetches (they overlap: fetch threads)
    evictions: int = 0
    retries: int = 0         # transient storage errors retried

    @property
    def hit_rate(self) -> float | None:
        n = self.hits + self.misses
        return self.hits / n if n else None

    def __add__(self, other: "CacheStats") -> "CacheStats":
        return CacheStats(*(getattr(self, f.name) + getattr(other, f.name) for f in fields(self)))

    def as_dict(self) -> dict:
        return {**asdict(self), "hit_rate": self.hit_rate}


class LocalFiles:
    """A local shard folder: files are where they are; nothing is fetched or counted."""
    remote = False

    def __init__(self, root: str):
        self.root = root

    def path(self, name: str) -> str:
        return os.path.join(self.root, check_name(name, os.path.join(self.root, MANIFEST)))

    def url(self, name: str) -> str:
        return self.path(name)

    def reset_stats(self) -> CacheStats:
        return CacheStats()


class NodeCache:
    """Fetch-on-demand mirror of a remote shard folder in a node-local folder (module docstring)."""
    remote = True

    def __init__(self, store: Store, cache_dir: str | None, checksums: dict[str, str],
                 limit_bytes: int | None = None, log=print, *, sizes: dict[str, int] | None = None,
                 allow_unverified: bool = False):
        self.store, self.checksums, self.limit, self.log = store, checksums, limit_bytes, log
        self.sizes, self.allow_unverified = sizes or {}, allow_unverified
        slug = re.sub(r"[^A-Za-z0-9]+", "-", store.shown_root.split("://", 1)[-1]).strip("-")[-48:]
        digest = hashlib.sha256(store.shown_root.encode()).hexdigest()[:12]
        self.dir = os.path.join(cache_dir or default_cache_dir(), f"{slug}-{digest}")
        try:  # its name is derivable from the URL: another local user could have made it first
            state_folder(self.dir, "node cache folder")
        except UnsafeFolder as e:
            raise StorageError(str(e)) from None
        self._remove_orphans()
        self.stats = CacheStats()
        self._lock = threading.Lock()
        self._retried_before = store.retried
        self._warned_over = False

    def url(self, name: str) -> str:
        """`name`'s address for messages (no credentials)."""
        return self.store.shown(name)

    def reset_stats(self) -> CacheStats:
        """This rank's figures since the last reset; starts counting afresh."""
        with self._lock:
            self.stats.retries = self.store.retried - self._retried_before
            self._retried_before = self.store.retried
            done, self.stats = self.stats, CacheStats()
        return done

    def local_name(self, name: str) -> str:
        """The cache's file for `name`: keyed by the manifest's checksum (module docstring)."""
        stem, ext = os.path.splitext(check_name(name, self.store.shown(MANIFEST)))
        want = self.checksums.get(name)
        if want is None and not self.allow_unverified:
            raise StorageError(f"{self.store.shown(name)}: the manifest gives no checksum for it: refusing to fetch a "
                               "file that cannot be verified (rebuild the folder with make_shards, or pass "
                               "--allow-unverified to take it as served)")
        return f"{stem}.{want or 'unverified'}{ext}"

    def path(self, name: str) -> str:
        """The local path of `name`, fetched (and verified) first if the node does not hold it."""
        local = os.path.join(self.dir, self.local_name(name))
        if os.path.dirname(os.path.realpath(local)) != os.path.realpath(self.dir):
            raise StorageError(f"{self.store.shown(name)}: its cache entry would lie outside {self.dir}; refused")
        size = self.sizes.get(name)
        if self._touch(local, size):
            self._count(hits=1)
            return local
        with self._file_lock(local):
            if self._touch(local, size):  # another rank fetched it while this one waited
                self._count(hits=1)
                return local
            self._fetch(name, local, size)
        self._count(misses=1)
        self._evict(keep=local)
        return local

    # -- internals ----------------------------------------------------------------------------------
    def _remove_orphans(self) -> None:
        """Partial downloads of processes that died mid-fetch (kill -9, a lost node): their pid is gone."""
        for e in os.scandir(self.dir):
            m = re.search(r"\.part(\d+)\.\d+$", e.name)
            if m and not _alive(int(m.group(1))):
                with contextlib.suppress(FileNotFoundError):
                    os.remove(e.path)

    @staticmethod
    def _touch(local: str, size: int | None = None) -> bool:
        """True if the file is there (with the manifest's size, if known); marks it used now
        (eviction is least recently used first)."""
        try:  # an explicit time: the file system's own clock ticks too coarsely to order recent uses
            if size is not None and os.path.getsize(local) != size:
                return False  # not what was verified: fetched again, and replaced
            now = time.time_ns()
            os.utime(local, ns=(now, now))
            return True
        except FileNotFoundError:
            return False

    def _count(self, **kw) -> None:
        with self._lock:
            for k, v in kw.items():
                setattr(self.stats, k, getattr(self.stats, k) + v)

    @contextlib.contextmanager
    def _file_lock(self, local: str):
        locks = os.path.join(self.dir, ".locks")
        os.makedirs(locks, exist_ok=True)
        with open(os.path.join(locks, os.path.basename(local)), "a") as lk:
            fcntl.flock(lk, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lk, fcntl.LOCK_UN)

    def _room(self, name: str, size: int | None) -> tuple[int, str]:
        """The most bytes a fetch of `name` may write (and what bounds it), after evicting to make room
        for its recorded size; StorageError if it cannot fit."""
        shown = self.store.shown(name)
        if size is not None and self.limit is not None and size > self.limit:
            raise StorageError(f"{shown}: {size / 1e9:.3f} GB (the manifest's size) is larger than --cache-limit "
                               f"{self.limit / 1e9:.3f} GB")
        self._evict(keep=None, incoming=size or 0)
        free = shutil.disk_usage(self.dir).free - DISK_RESERVE
        if size is not None:
            if size > free:
                raise StorageError(f"{shown}: needs {size / 1e9:.3f} GB (the manifest's size); {self.dir} has "
                                   f"{max(free, 0) / 1e9:.3f} GB free")
            return size, "the manifest records"
        if self.limit is not None and self.limit < free:
            return self.limit, "--cache-limit allows"
        return max(free, 0), "fit on the cache's disk"

    def _fetch(self, name: str, local: str, size: int | None) -> None:
        want = self.checksums.get(name)
        tmp = f"{local}.part{os.getpid()}.{threading.get_ident()}"
        limit, what = self._room(name, size)
        try:
            for attempt in (1, 2):
                t0 = time.perf_counter()
                n, digest = self.store.get(name, tmp, max_bytes=limit, what=what)
                self._count(bytes_fetched=n, fetch_seconds=time.perf_counter() - t0)
                if want is None or digest == want:
                    os.replace(tmp, local)
                    self._touch(local)
                    return
                if attempt == 2:
                    raise StorageError(f"{self.store.shown(name)}: sha256 {digest[:16]}... differs from the "
                                       f"manifest's {want[:16]}...: the shard was changed or damaged after "
                                       "make_shards wrote it (make_shards.py --verify names what changed)")
                self.log(f"warning: {self.store.shown(name)}: checksum mismatch, fetching it once more")
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.remove(tmp)

    def _evict(self, keep: str | None, incoming: int = 0) -> None:
        """Delete least recently used files until the cache plus `incoming` bytes fits the limit."""
        if self.limit is None:
            return
        with open(os.path.join(self.dir, ".evict.lock"), "a") as lk:
            fcntl.flock(lk, fcntl.LOCK_EX)
            files = []
            for e in os.scandir(self.dir):
                if e.is_file() and ".part" not in e.name and not e.name.startswith("."):
                    with contextlib.suppress(FileNotFoundError):
                        st = e.stat()
                        files.append((st.st_mtime_ns, st.st_size, e.path))
            total = sum(f[1] for f in files) + incoming
            for _, size, path in sorted(files):
                if total <= self.limit:
                    break
                if path == keep:
                    continue
                with contextlib.suppress(FileNotFoundError):
                    os.remove(path)
                    total -= size
                    self._count(evictions=1)
            if keep is not None and total > self.limit and not self._warned_over:
                self._warned_over = True
                self.log(f"warning: {self.dir}: {total / 1e9:.3f} GB in use is above --cache-limit "
                         f"{self.limit / 1e9:.3f} GB: the files being read do not fit it; raise the limit "
                         "or lower --shuffle-window")
