"""storage.store.Store against real servers on loopback (tests/servers.py): SeaweedFS's S3 gateway
with authentication, and a static HTTP server. Round trips, missing objects and buckets, wrong
credentials, and a server that goes away: retried until it is back, or a one-line error after N tries."""
import hashlib
import os
import threading
import time

import pytest
from servers import HttpServer, clear_fsspec_s3_cache, http_server, object_store, s3_env  # noqa: F401

from storage.store import Store, StorageError


def _one_line(e: BaseException) -> str:
    text = str(e)
    assert "\n" not in text and "Traceback" not in text, text
    assert e.__cause__ is None and e.__suppress_context__, "raised with its client traceback attached"
    return text


def test_s3_round_trip(s3_env, tmp_path):
    bucket = s3_env.make_bucket("round-trip")
    store = Store(f"s3://{bucket}/some/prefix/")
    data = os.urandom(3 << 20) + b"tail"  # a few MiB: more than one chunk on the server
    (tmp_path / "a.bin").write_bytes(data)
    assert not store.exists("a.bin") and store.size("a.bin") is None
    store.put(str(tmp_path / "a.bin"), "a.bin")
    store.put_bytes(b'{"x": 1}', "m.json")
    assert store.exists("a.bin") and store.size("a.bin") == len(data)
    assert store.read_bytes("a.bin") == data and store.read_bytes("m.json") == b'{"x": 1}'
    seen = []
    assert store.get("a.bin", str(tmp_path / "copy"), block=1 << 20, on_bytes=seen.append) == (
        len(data), hashlib.sha256(data).hexdigest())
    assert (tmp_path / "copy").read_bytes() == data and sum(seen) == len(data) and len(seen) > 1
    assert store.url("a.bin") == f"s3://{bucket}/some/prefix/a.bin"
    # the objects are where another client looks for them
    assert s3_env.fs().cat_file(f"{bucket}/some/prefix/m.json") == b'{"x": 1}'
    store.remove("m.json")
    assert not store.exists("m.json")
    assert store.retried == 0


def test_s3_missing_object_and_bucket(s3_env):
    bucket = s3_env.make_bucket("missing")
    store = Store(f"s3://{bucket}/p")
    with pytest.raises(StorageError) as e:
        store.read_bytes("nothing.tar")
    assert _one_line(e.value) == f"s3://{bucket}/p/nothing.tar: not found"
    with pytest.raises(StorageError) as e:
        Store("s3://no-such-bucket/p").read_bytes("manifest.json")
    assert _one_line(e.value) == "s3://no-such-bucket/p/manifest.json: no such bucket"
    with pytest.raises(StorageError) as e:  # an upload too: nothing creates buckets behind the user's back
        Store("s3://no-such-bucket/p").put_bytes(b"x", "x")
    assert _one_line(e.value) == "s3://no-such-bucket/p/x: no such bucket"
    assert store.retried == 0


@pytest.mark.parametrize("var", ["AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID"])
def test_s3_wrong_credentials_are_one_line_and_not_retried(s3_env, monkeypatch, var):
    bucket = "denied" + var[4:7].lower()
    s3_env.make_bucket(bucket)
    s3_env.fs().pipe_file(f"{bucket}/p/a.bin", b"secret")
    monkeypatch.setenv(var, "wrong-" + var.lower())
    clear_fsspec_s3_cache()
    store = Store(f"s3://{bucket}/p")
    for call in (lambda: store.read_bytes("a.bin"), lambda: store.size("a.bin"),
                 lambda: store.put_bytes(b"x", "b.bin")):
        with pytest.raises(StorageError) as e:
            call()
        text = _one_line(e.value)
        assert text.startswith(f"s3://{bucket}/p/") and "access denied" in text and "AWS_SECRET_ACCESS_KEY" in text, text
    assert store.retried == 0


def test_http_reads(http_server, tmp_path):
    os.makedirs(os.path.join(http_server.folder, "shards"), exist_ok=True)
    data = os.urandom(200_000)
    with open(os.path.join(http_server.folder, "shards", "train-000000.tar"), "wb") as f:
        f.write(data)
    store = Store(http_server.url + "/shards")
    assert store.read_bytes("train-000000.tar") == data
    assert store.size("train-000000.tar") == len(data) and store.exists("train-000000.tar")
    assert store.get("train-000000.tar", str(tmp_path / "t")) == (len(data), hashlib.sha256(data).hexdigest())
    assert (tmp_path / "t").read_bytes() == data
    assert store.size("nope.tar") is None and not store.exists("nope.tar")
    with pytest.raises(StorageError) as e:
        store.read_bytes("nope.tar")
    assert _one_line(e.value) == f"{http_server.url}/shards/nope.tar: not found"
    with pytest.raises(StorageError, match="read-only"):
        store.put_bytes(b"x", "x")
    # ranges, for clients that read by range (fsspec's default file objects do)
    import fsspec
    with fsspec.filesystem("http", skip_instance_cache=True).open(f"{http_server.url}/shards/train-000000.tar",
                                                                   "rb", block_size=4096) as f:
        f.seek(100_000)
        assert f.read(5000) == data[100_000:105_000]


def test_http_server_back_during_retries(tmp_path):
    (tmp_path / "f.bin").write_bytes(b"payload")
    server = HttpServer(str(tmp_path))  # not started: connections are refused
    store = Store(server.url, retries=8, backoff=0.1)
    t = threading.Timer(0.5, server.start)
    t.start()
    try:
        assert store.read_bytes("f.bin") == b"payload"
    finally:
        t.join()
        server.stop()
    assert store.retried > 0


def test_s3_server_restarted_during_retries(s3_env):
    """Killed, then started again (same ports and data) 1 s later from another thread: the call retries
    the refused connections and returns the object once the server is back."""
    bucket = s3_env.make_bucket("restart")
    s3_env.fs().pipe_file(f"{bucket}/p/a.bin", b"kept across the restart")
    lines = []
    store = Store(f"s3://{bucket}/p", retries=8, backoff=0.1, log=lines.append)
    assert store.read_bytes("a.bin") == b"kept across the restart"  # and a pooled connection to the old server
    s3_env.stop(kill=True)
    t = threading.Timer(1.0, s3_env.start)
    t.start()
    t0 = time.monotonic()
    try:
        assert store.read_bytes("a.bin") == b"kept across the restart"
    finally:
        t.join()
        s3_env.start()  # (a no-op when it is running) the module's later tests need it
    assert store.retried > 0 and len(lines) == store.retried, lines
    assert all(line.startswith("retry ") and f"s3://{bucket}/p/a.bin" in line for line in lines), lines
    assert time.monotonic() - t0 < 15
    store.put_bytes(b"new", "b.bin")  # writes work again too
    assert store.read_bytes("b.bin") == b"new"


def test_s3_server_gone_for_good(s3_env):
    """No server: a few quick tries (no hidden botocore or s3fs retries inside each), then one line."""
    s3_env.stop(kill=True)
    try:
        store = Store("s3://restart/p", retries=3, backoff=0.05)
        t0 = time.monotonic()
        with pytest.raises(StorageError) as e:
            store.read_bytes("a.bin")
        elapsed = time.monotonic() - t0
    finally:
        s3_env.start()
    text = _one_line(e.value)
    assert text.startswith("s3://restart/p/a.bin: still failing after 3 tries: "), text
    assert store.retried == 2
    assert elapsed < 3, f"{elapsed:.1f} s: the client retried by itself inside the store's tries"
