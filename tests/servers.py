"""Pytest fixtures around the real loopback servers of bench/servers.py (SeaweedFS S3, static HTTP).

    from servers import ObjectStore, HttpServer, object_store, s3_env, http_server

The servers themselves live in bench/servers.py (the benchmarks start them too, without pytest);
they are re-exported here under the names the tests import.

Fixtures (import them into a test module to use them: `from servers import object_store, s3_env`):
`object_store` (one server per test module), `s3_env` (the process environment pointed at it, with
every other AWS_* variable removed, and fsspec's cached S3 clients dropped), `http_server`.
"""
from __future__ import annotations

import http.server
import os
import threading
import time

import pytest

from bench.servers import WEED, HttpServer, ObjectStore, free_ports  # noqa: F401 - re-exported for the tests


def clear_fsspec_s3_cache() -> None:
    """fsspec caches filesystem instances by their arguments, not by the environment: drop the S3 ones
    so that a client made after an environment change reads the new credentials and endpoint."""
    try:
        import s3fs
    except ImportError:
        return
    s3fs.S3FileSystem.clear_instance_cache()


# ------------------------------------------------------------------------------------------ fixtures

@pytest.fixture(scope="module")
def object_store(tmp_path_factory):
    """A running SeaweedFS S3 gateway for this test module (do not stop it: use your own ObjectStore for that)."""
    with ObjectStore(str(tmp_path_factory.mktemp("weed"))) as store:
        yield store


@pytest.fixture
def s3_env(object_store, monkeypatch):
    """This process's environment pointed at `object_store` (the caller's AWS_* variables removed)."""
    for k in list(os.environ):
        if k.startswith("AWS_"):
            monkeypatch.delenv(k)
    for k, v in object_store.env.items():
        monkeypatch.setenv(k, v)
    clear_fsspec_s3_cache()
    yield object_store
    clear_fsspec_s3_cache()


@pytest.fixture(scope="module")
def http_server(tmp_path_factory):
    """A static HTTP server on a fresh folder (`.folder`) for this test module."""
    with HttpServer(str(tmp_path_factory.mktemp("www"))) as server:
        yield server


# ------------------------------------------------------------------------------ a server that lies

class Lie:
    """What HostileServer sends for one path instead of plain bytes."""

    def __init__(self, kind: str, data: bytes = b"", claim: int | None = None, interval: float = 0.0):
        self.kind, self.data, self.claim, self.interval = kind, data, claim, interval

    @classmethod
    def endless(cls, claim: int = 10**15) -> "Lie":
        """Content-Length `claim`, then zeros until the client hangs up (at most 2 GB)."""
        return cls("endless", claim=claim)

    @classmethod
    def trickle(cls, data: bytes, interval: float) -> "Lie":
        """`data` with its true length, one byte every `interval` seconds."""
        return cls("trickle", data, interval=interval)

    @classmethod
    def stall(cls, data: bytes) -> "Lie":
        """Headers for `data`, then silence."""
        return cls("stall", data)


class HostileServer:
    """A real HTTP server on loopback serving `routes` ({URL path: bytes or Lie}); for any other path,
    `fallback(path)` gives bytes (or None: 404). Every request's path (query removed) is recorded in
    `requests`. It serves what a hostile or broken store would: names that escape, sizes that lie,
    bytes that trickle."""

    def __init__(self, routes: dict | None = None, fallback=None):
        self.routes = dict(routes or {})
        self.fallback = fallback or (lambda path: None)
        self.requests: list[str] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format, *args):  # noqa: A002
                pass

            def do_HEAD(self):
                self.answer(head=True)

            def do_GET(self):
                self.answer(head=False)

            def answer(self, head: bool) -> None:
                from urllib.parse import unquote
                path = unquote(self.path.split("?", 1)[0])
                outer.requests.append(path)
                body = outer.routes.get(path)
                if body is None:
                    body = outer.fallback(path)
                if body is None:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                lie = body if isinstance(body, Lie) else Lie("plain", body)
                self.send_response(200)
                self.send_header("Content-Length", str(lie.claim if lie.claim is not None else len(lie.data)))
                self.end_headers()
                if head:
                    return
                try:
                    self.send_body(lie)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def send_body(self, lie: Lie) -> None:
                if lie.kind == "plain":
                    self.wfile.write(lie.data)
                elif lie.kind == "endless":
                    zeros = bytes(1 << 20)
                    for _ in range(2048):
                        self.wfile.write(zeros)
                elif lie.kind == "trickle":
                    for i in range(len(lie.data)):
                        self.wfile.write(lie.data[i:i + 1])
                        self.wfile.flush()
                        time.sleep(lie.interval)
                elif lie.kind == "stall":
                    time.sleep(60)
                self.close_connection = True

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name="hostile-http", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> "HostileServer":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()
