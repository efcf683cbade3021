"""Where shards live: a local folder, an S3-compatible bucket (s3://), Google Cloud Storage (gs://)
or a read-only HTTP(S) server (http://, https://), behind one small interface.

The clients are the ecosystem's (fsspec with s3fs / gcsfs / aiohttp), configured the way their
own tools are: AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_PROFILE / AWS_ENDPOINT_URL for S3
and S3-compatible stores, GOOGLE_APPLICATION_CREDENTIALS for GCS. This module adds what training
needs on top of them:
- transient failures (connection refused or reset, timeouts, 5xx, throttling) are retried with
  exponential backoff and counted (`Store.retries`);
- everything else becomes one StorageError line that names the URL and the reason: a missing
  object, a wrong or missing credential, a bucket that does not exist.
"""
from __future__ import annotations

import hashlib
import os
import random
import threading
import time
from typing import Callable, TypeVar

REMOTE_SCHEMES = ("s3://", "gs://", "gcs://", "http://", "https://")
T = TypeVar("T")


class StorageError(Exception):
    """A storage failure that retrying will not fix; str() is one line naming the URL."""


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
    reason = " ".join(str(err).split()) or type(err).__name__
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
                 log: Callable[[str], None] | None = None):
        self.root = root.rstrip("/") if is_remote(root) else root
        self.remote = is_remote(root)
        self.attempts, self.backoff, self.log = retries, backoff, log
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
                    raise StorageError(f"{self.root}: no client for {protocol}:// installed ({e})") from None
                if protocol == "s3":
                    self._fs.retries = 1  # s3fs retries dropped connections and read timeouts 5 times itself
        return self._fs

    @staticmethod
    def _options(protocol: str) -> dict:
        if protocol == "s3":
            # botocore reads AWS_ENDPOINT_URL itself; passing it keeps older clients working too.
            # The store's own retry loop is the one that counts: botocore's (5 attempts with backoff
            # on a refused connection, 7-11 s a call, measured) is off; s3fs's own is set to one try in `fs`.
            endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
            opts: dict = {"config_kwargs": {"retries": {"total_max_attempts": 1}}}
            if endpoint:
                opts["client_kwargs"] = {"endpoint_url": endpoint}
            return opts
        if protocol in ("http", "https"):
            return {"block_size": 0}  # whole-object streaming GETs; no HEAD-then-range dance
        return {}

    def url(self, name: str) -> str:
        return f"{self.root}/{name}" if self.remote else os.path.join(self.root, name)

    def call(self, name: str, what: Callable[[], T]) -> T:
        """Run `what` (one storage request about `name`), retrying transient failures."""
        delay = self.backoff
        for attempt in range(1, self.attempts + 1):
            try:
                return what()
            except StorageError:
                raise
            except Exception as err:  # noqa: BLE001 - every client error is classified below
                kind = classify(err)
                if kind != "transient" or attempt == self.attempts:
                    if kind == "transient":
                        raise StorageError(f"{self.url(name)}: still failing after {attempt} tries: "
                                           f"{describe(self.url(name), err, 'fatal').split(': ', 1)[1]}") from None
                    raise StorageError(describe(self.url(name), err, kind)) from None
                with self._lock:
                    self.retried += 1
                if self.log:
                    self.log(f"retry {attempt}/{self.attempts - 1} in {delay:.2f}s: {self.url(name)}: "
                             f"{type(err).__name__}: {' '.join(str(err).split())[:160]}")
                time.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, 10.0)
        raise AssertionError("unreachable")

    # -- reads --------------------------------------------------------------------------------------
    def read_bytes(self, name: str) -> bytes:
        return self.call(name, lambda: self.fs.cat_file(self.url(name)))

    def exists(self, name: str) -> bool:
        if _is_http(self.root):
            try:
                self.call(name, lambda: self.fs.info(self.url(name)))
                return True
            except StorageError as e:
                if str(e).endswith(": not found"):
                    return False
                raise
        return self.call(name, lambda: self.fs.exists(self.url(name)))

    def size(self, name: str) -> int | None:
        """The object's size in bytes, or None when it does not exist."""
        try:
            return int(self.call(name, lambda: self.fs.info(self.url(name)))["size"])
        except StorageError as e:
            if str(e).endswith(": not found"):
                return None
            raise

    def get(self, name: str, dest: str, block: int = 1 << 22,
            on_bytes: Callable[[int], None] | None = None) -> tuple[int, str]:
        """Copy object `name` to the local file `dest` (overwritten), streaming; returns its size and
        the sha256 of the bytes written, hashed on the way (no second read to verify it).

        A transfer that fails midway is restarted from the beginning on the next try.
        """
        def once() -> tuple[int, str]:
            n, h = 0, hashlib.sha256()
            with self.fs.open(self.url(name), "rb", block_size=block) as src, open(dest, "wb") as out:
                while chunk := src.read(block):
                    out.write(chunk)
                    h.update(chunk)
                    n += len(chunk)
                    if on_bytes:
                        on_bytes(len(chunk))
            return n, h.hexdigest()
        return self.call(name, once)

    # -- writes ---------------------------------------------------------------------------------------
    def put(self, local: str, name: str) -> None:
        """Upload a local file as object `name` (local stores: copy, atomically)."""
        if _is_http(self.root):
            raise StorageError(f"{self.root}: HTTP(S) locations are read-only; write to s3://, gs:// or a folder")
        if not self.remote:
            from pipeline.atomic import atomic_copy
            atomic_copy(local, self.url(name))
            return
        self.call(name, lambda: self.fs.put_file(local, self.url(name)))

    def put_bytes(self, data: bytes, name: str) -> None:
        if _is_http(self.root):
            raise StorageError(f"{self.root}: HTTP(S) locations are read-only; write to s3://, gs:// or a folder")
        if not self.remote:
            from pipeline.atomic import atomic_write
            atomic_write(self.url(name), data)
            return
        self.call(name, lambda: self.fs.pipe_file(self.url(name), data))

    def remove(self, name: str) -> None:
        self.call(name, lambda: self.fs.rm_file(self.url(name)))
