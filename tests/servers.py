"""Pytest fixtures around the real loopback servers of bench/servers.py (SeaweedFS S3, static HTTP).

    from servers import ObjectStore, HttpServer, object_store, s3_env, http_server

The servers themselves live in bench/servers.py (the benchmarks start them too, without pytest);
they are re-exported here under the names the tests import.

Fixtures (import them into a test module to use them: `from servers import object_store, s3_env`):
`object_store` (one server per test module), `s3_env` (the process environment pointed at it, with
every other AWS_* variable removed, and fsspec's cached S3 clients dropped), `http_server`.
"""
from __future__ import annotations

import os

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
