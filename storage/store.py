"""Where shards live: a local folder, an S3-compatible bucket (s3://), Google Cloud Storage (gs://)
or a read-only HTTP(S) server (http://, https://), behind one small interface.

The clients are the ecosystem's (fsspec with s3fs / gcsfs / aiohttp), configured the way their
own tools are: AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_PROFILE / AWS_ENDPOINT_URL for S3
and S3-compatible stores, GOOGLE_APPLICATION_CREDENTIALS for GCS. This module adds what training
needs on top of them:
- transient failures (connection refused or reset, timeouts, 5xx, throttling) are retried with
  exponential backoff and counted (`Store.retries`);
- everything else becomes one StorageError line that names the URL and the reason: a missing
  object (NotFound), a wrong or missing credential, a bucket that does not exist;
- what a server sends is bounded: a read stops at the size the caller expects (a manifest's
  record, or a cap), every read has a socket timeout, and a transfer has an overall deadline
  that its retries count against, so a server that lies about sizes or trickles bytes ends in
  one line instead of a full disk or a hung job;
- secrets stay out of every line: `redact()` removes user:password@ and query strings (presigned
  tokens) from URLs in messages, log lines, folder names and saved arguments. A folder URL's query
  string is sent with every object under it.
"""
from __future__ import annotations

import hashlib
import os
import random
import re
import threading
import time
from dataclasses import dataclass
from typing import Callable, TypeVar
from urllib.parse import urlsplit, urlunsplit

REMOTE_SCHEMES = ("s3://", "gs://", "gcs://", "http://", "https://")
T = TypeVar("T")


class StorageError(Exception):
    """A storage failure that retrying will not fix; str() is one line naming the URL (redacted)."""


class NotFound(StorageError):
    """The object (or bucket) does not exist."""


_USERINFO = re.compile(r"(?<=://)[^/@\s'\"]*@")
_URL_QUERY = re.compile(r"(\b[a-z][a-z0-9+.-]*://[^\s'\"?#]*)\?[^\s'\"#]*", re.IGNORECASE)


def redact(text: str) -> str:
    """`text` with every URL's user:password@ and query string (tokens, signatures) replaced by ***."""
    return _URL_QUERY.sub(r"\1?***", _USERINFO.sub("***@", text))


@dataclass(frozen=True)
class Limits:
    """How long a server may take. A transfer of n expected bytes must finish, retries included,
    within `deadline + n / min_rate` seconds; a read that receives nothing for `read_timeout`
    seconds fails (and is retried, within the deadline)."""
    read_timeout: float = 30.0
    connect_timeout: float = 10.0
    deadline: float = 120.0
    min_rate: float = 1 << 20    # bytes/s

    def budget(self, nbytes: int | None) -> float:
        return self.deadline + (nbytes or 0) / self.min_rate


MAX_SMALL_READ = 256 << 20   # read_bytes' default cap: manifests, indexes, markers


def is_remote(path: str) -> bool:
    return path.startswith(REMOTE_SCHEMES)


def _is_http(path: str) -> bool:
    return path.startswith(("http://", "https://"))


def _status(err: BaseException) -> int | None:
    """The HTTP status behind an exception from botocore, aiohttp or fsspec's http, if any."""
    for obj in (err, getattr(err, "__cause__", None), getattr(err, "__context__", None)):
        if obj is None:
            continue
        status = getattr(obj, "status", None) or getattr(obj, "code", None)
        if isinstance(status, int):
            return status
        resp = getattr(obj, "response", None)
        if isinstance(resp, dict):
            code = resp.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if isinstance(code, int):
                return code
    return None


_CREDENTIAL_WORDS = ("credential", "accessdenied", "access denied", "invalidaccesskeyid", "signaturedoesnotmatch",
                     "forbidden", "unauthorized", "not authorized", "expiredtoken")
_TRANSIENT_WORDS = ("connect", "timed out", "timeout", "reset", "broken pipe", "temporarily", "slowdown",
                    "throttl", "service unavailable", "internal error", "internalerror", "server disconnected",
                    "payload", "remote end closed", "eof occurred", "incomplete read", "response ended")


def classify(err: BaseException) -> str:
    """'missing', 'denied', 'transient' or 'fatal' for an exception raised by a storage client."""
    text = f"{type(err).__name__} {err}".lower()
    status = _status(err)
    if isinstance(err, FileNotFoundError) or status == 404 or "nosuchkey" in text or "nosuchbucket" in text:
        return "missing"
    if isinstance(err, PermissionError) or status in (401, 403) or any(w in text for w in _CREDENTIAL_WORDS):
        # "connect" in a credential message (e.g. "unable to connect to the metadata service") stays denied
        return "denied"
    if status is not None and (status >= 500 or status in (408, 429)):
        return "transient"
    if isinstance(err, (ConnectionError, TimeoutError)) or any(w in text for w in _TRANSIENT_WORDS):
        return "transient"
    if isinstance(err, OSError) and not isinstance(err, (IsADirectoryError, NotADirectoryError)):
        return "transient"
    return "fatal"


def describe(url: str, err: BaseException, kind: str) -> str:
    reason = redact(" ".join(str(err).split()) or type(err).__name__)
    if kind == "missing":
        if "bucket does not exist" in reason.lower() or "nosuchbucket" in reason.lower():
            return f"{url}: no such bucket"
        return f"{url}: not found"
    if kind == "denied":
        hint = ("check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_PROFILE (and AWS_ENDPOINT_URL for an "
                "S3-compatible store)" if url.startswith("s3://") else
                "check GOOGLE_APPLICATION_CREDENTIALS" if url.startswith(("gs://", "gcs://")) else
                "the server refused the request")
        return f"{url}: access denied ({reason[:200]}): {hint}"
    return f"{url}: {reason[:300]}"


class Store:
    """A shard folder, local or remote: read, fetch and write its files by name.

    Reads and writes are retried on transient errors (`retries` attempts, backoff doubling from
    `backoff` seconds, capped at 10 s, with jitter). `self.retried` counts the retries made, across
    threads; `log` (if given) is called with one line per retry.
    """

    def __init__(self, root: str, *, retries: int = 8, backoff: float = 0.25,
                 log: Callable[[str], None] | None = None, limits: Limits = Limits()):
        self.remote = is_remote(root)
        self.query = ""
        if self.remote:  # a folder URL's query string (a token) goes with every object under it
            parts = urlsplit(root)
            self.query = parts.query
            root = urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))
        self.root = root.rstrip("/") if self.remote else root
        self.shown_root = redact(root.rstrip("/")) if self.remote else root   # for messages and folder names
        self.attempts, self.backoff, self.log, self.limits = retries, backoff, log, limits
        self.retried = 0
        self._lock = threading.Lock()
        self._fs = None

    # -- plumbing ---------------------------------------------------------------------------------
    @property
    def fs(self):
        if self._fs is None:
            if not self.remote:
                from fsspec.implementations.local import LocalFileSystem
                self._fs = LocalFileSystem()
            else:
                import fsspec
                protocol = self.root.split("://", 1)[0]
                try:
                    self._fs = fsspec.filesystem(protocol, **self._options(protocol))
                except ImportError as e:
                    raise StorageError(f"{self.shown_root}: no client for {protocol}:// installed ({e})") from None
                if protocol == "s3":
                    self._fs.retries = 1  # s3fs retries dropped connections and read timeouts 5 times itself
        return self._fs

    def _options(self, protocol: str) -> dict:
        lim = self.limits
        if protocol == "s3":
            # botocore reads AWS_ENDPOINT_URL itself; passing it keeps older clients working too.
            # The store's own retry loop is the one that counts: botocore's (several attempts with
            # backoff, seconds a call) is off; s3fs's own is set to one try in `fs`.
            endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
            opts: dict = {"config_kwargs": {"retries": {"total_max_attempts": 1}, "read_timeout": lim.read_timeout,
                                            "connect_timeout": lim.connect_timeout}}
            if endpoint:
                opts["client_kwargs"] = {"endpoint_url": endpoint}
            return opts
        if protocol in ("http", "https"):
            import aiohttp
            timeout = aiohttp.ClientTimeout(total=None, sock_connect=lim.connect_timeout, sock_read=lim.read_timeout)
            # whole-object streaming GETs (no HEAD-then-range dance); the store's deadline bounds the total
            return {"block_size": 0, "client_kwargs": {"timeout": timeout}}
        return {}

    def url(self, name: str) -> str:
        """The object's address, as requested (with the folder's credentials and query, if any)."""
        if not self.remote:
            return os.path.join(self.root, name)
        return f"{self.root}/{name}" + (f"?{self.query}" if self.query else "")

    def shown(self, name: str) -> str:
        """The object's address for messages: no credentials, no query."""
        return f"{self.shown_root}/{name}" if self.remote else os.path.join(self.root, name)

    def call(self, name: str, what: Callable[[], T], deadline: float | None = None) -> T:
        """Run `what` (one storage request about `name`), retrying transient failures, all of it
        before the monotonic time `deadline` (default: Limits.budget of an empty transfer)."""
        deadline = deadline or time.monotonic() + self.limits.budget(0)
        shown, delay = self.shown(name), self.backoff
        for attempt in range(1, self.attempts + 1):
            try:
                return what()
            except StorageError:
                raise
            except Exception as err:  # noqa: BLE001 - every client error is classified below
                kind = classify(err)
                wait = delay * (0.5 + random.random())
                out_of_time = time.monotonic() + wait > deadline
                if kind != "transient" or attempt == self.attempts or out_of_time:
                    if kind == "transient":
                        why = "out of time" if out_of_time and attempt < self.attempts else "still failing"
                        raise StorageError(f"{shown}: {why} after {attempt} tries: "
                                           f"{describe(shown, err, 'fatal').split(': ', 1)[1]}") from None
                    message = describe(shown, err, kind)
                    # a missing bucket is a wrong location, not a missing object (NotFound)
                    missing_object = kind == "missing" and not message.endswith(": no such bucket")
                    raise (NotFound if missing_object else StorageError)(message) from None
                with self._lock:
                    self.retried += 1
                if self.log:
                    self.log(f"retry {attempt}/{self.attempts - 1} in {wait:.2f}s: {shown}: "
                             f"{type(err).__name__}: {redact(' '.join(str(err).split()))[:160]}")
                time.sleep(wait)
                delay = min(delay * 2, 10.0)
        raise AssertionError("unreachable")

    # -- reads --------------------------------------------------------------------------------------
    def read_bytes(self, name: str, max_bytes: int = MAX_SMALL_READ) -> bytes:
        """The whole object, refused (StorageError) if it is larger than `max_bytes`."""
        if not self.remote:
            size = os.path.getsize(self.url(name)) if os.path.exists(self.url(name)) else None
            if size is not None and size > max_bytes:
                raise StorageError(f"{self.shown(name)}: {size:,} bytes, more than the {max_bytes:,} this file may have")
            return self.call(name, lambda: self.fs.cat_file(self.url(name)))
        chunks: list[bytes] = []
        self._stream(name, chunks.append, max_bytes, "this file may have", restart=chunks.clear)
        return b"".join(chunks)

    def exists(self, name: str) -> bool:
        if _is_http(self.root):
            try:
                self.call(name, lambda: self.fs.info(self.url(name)))
                return True
            except NotFound:
                return False
        return self.call(name, lambda: self.fs.exists(self.url(name)))

    def size(self, name: str) -> int | None:
        """The object's size in bytes, or None when it does not exist."""
        try:
            return int(self.call(name, lambda: self.fs.info(self.url(name)))["size"])
        except NotFound:
            return None

    def get(self, name: str, dest: str, *, max_bytes: int | None = None, what: str = "the manifest records",
            block: int = 1 << 22, on_bytes: Callable[[int], None] | None = None) -> tuple[int, str]:
        """Copy object `name` to the local file `dest` (overwritten), streaming; returns its size and
        the sha256 of the bytes written, hashed on the way (no second read to verify it).

        More than `max_bytes` (what the caller expects, described by `what`) stops the transfer
        with a StorageError. A transfer that fails midway is restarted from the beginning on the
        next try, within one deadline (Limits) for all tries.
        """
        h = hashlib.sha256()
        with open(dest, "wb") as out:
            def sink(chunk: bytes) -> None:
                out.write(chunk)
                h.update(chunk)
                if on_bytes:
                    on_bytes(len(chunk))

            def restart() -> None:
                nonlocal h
                out.seek(0)
                out.truncate()
                h = hashlib.sha256()
            n = self._stream(name, sink, max_bytes, what, restart, block)
        return n, h.hexdigest()

    def _stream(self, name: str, sink: Callable[[bytes], None], max_bytes: int | None, what: str,
                restart: Callable[[], None] | None = None, block: int = 1 << 22) -> int:
        """Feed the object's bytes to `sink` in chunks; at most `max_bytes`, before the deadline."""
        deadline = time.monotonic() + self.limits.budget(max_bytes)
        shown = self.shown(name)

        def once() -> int:
            if restart:
                restart()
            n = 0
            # HTTP: one streaming GET, whose reads return what has arrived (a ranged read would wait
            # for a whole block, past the deadline, from a server that trickles). Passing a size skips
            # fsspec's HEAD, which reports any failure, a refused connection too, as "not found".
            kw = {"block_size": 0, "size": 1} if _is_http(self.root) else {"block_size": block}
            with self.fs.open(self.url(name), "rb", **kw) as src:
                while chunk := src.read(block):
                    n += len(chunk)
                    if max_bytes is not None and n > max_bytes:
                        raise StorageError(f"{shown}: the server sent more than the {max_bytes:,} bytes {what}; "
                                           "stopped reading")
                    if time.monotonic() > deadline:
                        raise StorageError(f"{shown}: too slow: {n:,} bytes in {self.limits.budget(max_bytes):.0f} s "
                                           f"(the deadline for {max_bytes or 0:,} bytes, retries included)")
                    sink(chunk)
            return n
        return self.call(name, once, deadline)

    # -- writes ---------------------------------------------------------------------------------------
    def put(self, local: str, name: str) -> None:
        """Upload a local file as object `name` (local stores: copy, atomically)."""
        if _is_http(self.root):
            raise StorageError(f"{self.shown_root}: HTTP(S) locations are read-only; write to s3://, gs:// or a folder")
        if not self.remote:
            from core.atomic import atomic_copy
            atomic_copy(local, self.url(name))
            return
        self.call(name, lambda: self.fs.put_file(local, self.url(name)))

    def put_bytes(self, data: bytes, name: str) -> None:
        if _is_http(self.root):
            raise StorageError(f"{self.shown_root}: HTTP(S) locations are read-only; write to s3://, gs:// or a folder")
        if not self.remote:
            from core.atomic import atomic_write
            atomic_write(self.url(name), data)
            return
        self.call(name, lambda: self.fs.pipe_file(self.url(name), data))

    def remove(self, name: str) -> None:
        self.call(name, lambda: self.fs.rm_file(self.url(name)))
