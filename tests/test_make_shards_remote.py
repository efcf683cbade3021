"""make_shards with OUT in object storage, against a real S3 server on loopback (tests/servers.py,
SeaweedFS): the remote objects equal a local run's files byte for byte; a run killed mid-upload
leaves a prefix without manifest and its rerun completes to the same bytes (also over a complete
earlier run of other options, whose same-named, same-sized shards must not be kept); --verify reads
the remote copy and names a changed byte; storage errors are one line, exit 2."""
import os
import signal
import subprocess
import sys
import tarfile

import pytest
from helpers import ROOT
from servers import clear_fsspec_s3_cache, free_ports, http_server, object_store  # noqa: F401 - fixtures

from preprocess.make_shards import main, make_shards, verify
from storage.upload import UPLOADING, default_staging
from preprocess.synth import generate
from core.faults import fault_env

SCRIPT = os.path.join(ROOT, "preprocess", "make_shards.py")
ARGS = ["--workers", "1"]


def _cli(args: list, env: dict, kill_after_uploads: int | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in env.items() if k != "PT_TEST_FAULT"}
    if kill_after_uploads is not None:
        env.update(fault_env("uploads", kill_after_uploads))
    return subprocess.run([sys.executable, SCRIPT, *map(str, args)], capture_output=True, text=True, cwd=ROOT,
                          env=env, timeout=180)


def _remote(store, prefix: str) -> dict[str, bytes]:
    fs = store.fs()
    return {path[len(prefix) + 1:]: fs.cat_file(path) for path in fs.find(prefix)}


def _error_line(p: subprocess.CompletedProcess) -> str:
    """The one line a user error prints (retry notes before it are allowed; nothing after it)."""
    assert p.returncode == 2, (p.returncode, p.stderr)
    assert "Traceback" not in p.stderr, p.stderr
    last = p.stderr.strip().splitlines()[-1]
    assert last.startswith("make_shards: error: "), p.stderr
    return last


@pytest.fixture(scope="module")
def ref(tmp_path_factory):
    """6 clips of 1.5 s (2 classes: one train, val and test track each) and a local CLI run over
    them: 2 tars per split, 12 files and the manifest."""
    base = tmp_path_factory.mktemp("remote")
    generate(str(base / "src"), per_class=3, seconds=1.5, genres=["pop", "rock"], progress=False)
    p = _cli([base / "src", base / "ref", *ARGS], dict(os.environ))
    assert p.returncode == 0, p.stderr
    files = {n: (base / "ref" / n).read_bytes() for n in sorted(os.listdir(base / "ref"))}
    assert len(files) == 13 and "manifest.json" in files, sorted(files)
    return base / "src", files


def test_upload_equals_the_local_run_and_a_rerun_uploads_nothing(object_store, ref, tmp_path):
    src, files = ref
    bucket = object_store.make_bucket("upload")
    env = object_store.client_env()
    staging = tmp_path / "staging"
    p = _cli([src, f"s3://{bucket}/p/", *ARGS, "--staging", staging], env)
    assert p.returncode == 0, p.stderr
    assert f"s3://{bucket}/p: uploaded 12 file(s)" in p.stdout and "(0 already there)" in p.stdout, p.stdout
    assert "accepted 6 (2 train / 2 val / 2 test)" in p.stdout
    assert _remote(object_store, f"{bucket}/p") == files  # every object, byte for byte
    assert not staging.exists()  # the staging folder's files go after a complete upload

    again = _cli([src, f"s3://{bucket}/p", *ARGS, "--staging", staging], env)  # no trailing slash: the same prefix
    assert again.returncode == 0, again.stderr
    assert f"s3://{bucket}/p: uploaded 0 file(s), 0.0 MB (12 already there)" in again.stdout, again.stdout
    assert _remote(object_store, f"{bucket}/p") == files


def test_killed_mid_upload_then_rerun_gives_the_same_bytes(object_store, ref, tmp_path, monkeypatch):
    """The prefix holds a complete run of other options (--seed 1: the same 12 names, other tracks in
    val and test). Killed after 5 uploads of the new run: no manifest remotely (the old one went
    first), the marker is there, the staging folder kept its clips. The rerun uploads the other 7
    and the manifest, and the prefix equals the local run."""
    src, files = ref
    bucket = object_store.make_bucket("resume")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # where the default staging folder goes
    env = object_store.client_env()
    url = f"s3://{bucket}/p/"
    make_shards(str(src), str(tmp_path / "seed1"), seed=1, workers=1, progress=False)
    for name in sorted(os.listdir(tmp_path / "seed1")):  # a complete upload: manifest last
        object_store.fs().put_file(str(tmp_path / "seed1" / name), f"{bucket}/p/{name}")
    old = _remote(object_store, f"{bucket}/p")
    assert set(old) == set(files) and old != files
    assert sum(len(old[n]) == len(files[n]) and old[n] != files[n] for n in files) >= 2  # same size, other bytes

    killed = _cli([src, url, *ARGS], env, kill_after_uploads=5)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    now = _remote(object_store, f"{bucket}/p")
    assert "manifest.json" not in now and now[UPLOADING] == files["manifest.json"]
    assert sum(now.get(n) == files[n] for n in files if n != "manifest.json") == 5
    staging = default_staging(url)
    assert staging.startswith(str(tmp_path / "cache" / "parallel_tunes" / "staging"))
    assert os.path.exists(os.path.join(staging, "manifest.json")) and os.listdir(os.path.join(staging, ".work"))

    p = _cli([src, url, *ARGS], env)
    assert p.returncode == 0, p.stderr
    assert "uploaded 7 file(s)" in p.stdout and "(5 already there)" in p.stdout, p.stdout
    assert _remote(object_store, f"{bucket}/p") == files  # the marker is gone too
    assert not os.path.exists(staging)


def test_verify_names_a_changed_byte_in_a_remote_tar(object_store, ref, tmp_path):
    src, files = ref
    bucket = object_store.make_bucket("verify")
    env = object_store.client_env()
    fs = object_store.fs()
    for name, data in files.items():  # the local run's files, uploaded as they are
        fs.pipe_file(f"{bucket}/p/{name}", data)
    ok = _cli(["--verify", f"s3://{bucket}/p"], env)
    assert ok.returncode == 0 and "OK" in ok.stdout, ok.stderr

    tar = tmp_path / "train-000000.tar"
    tar.write_bytes(files["train-000000.tar"])
    with tarfile.open(tar) as tf:
        member = next(mb for mb in tf.getmembers() if mb.name.endswith(".lab"))
    data = bytearray(tar.read_bytes())
    data[member.offset_data] ^= 0x01  # the label's lowest byte
    fs.pipe_file(f"{bucket}/p/train-000000.tar", bytes(data))
    fs.rm_file(f"{bucket}/p/val-000001.idx")
    bad = _cli(["--verify", f"s3://{bucket}/p"], env)
    assert bad.returncode == 1, bad.stderr
    key = member.name.split(".")[0]
    lines = [ln for ln in bad.stderr.splitlines() if ln.startswith("verify: ")]
    assert lines[0].startswith(f"verify: train-000000.tar: sample {key} member .lab differs from the manifest "
                               "(holds "), lines
    assert lines[1:] == ["verify: val-000001.tar: tar or index file missing",
                         "verify: val: 1 samples in shards, manifest says 2"], lines
    assert f"verify: s3://{bucket}/p: 3 problem(s)" in bad.stdout


def test_verify_reads_an_http_copy(http_server, ref):
    """A read-only location can be verified too (and a missing index is named)."""
    _, files = ref
    os.makedirs(os.path.join(http_server.folder, "copy"))
    for name, data in files.items():
        with open(os.path.join(http_server.folder, "copy", name), "wb") as f:
            f.write(data)
    assert verify(f"{http_server.url}/copy") == []
    os.remove(os.path.join(http_server.folder, "copy", "test-000000.idx"))
    assert verify(f"{http_server.url}/copy/") == ["test-000000.tar: tar or index file missing",
                                                   "test: 1 samples in shards, manifest says 2"]


def _main_error(argv: list, capsys) -> str:
    """make_shards' main() in this process: exit code 2 and one error line (retry notes before it allowed)."""
    clear_fsspec_s3_cache()  # a client made with other credentials must not be reused
    assert main([str(a) for a in argv]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("make_shards: error: "), err
    return last


def test_storage_errors_are_one_line_exit_2(object_store, ref, tmp_path, monkeypatch, capsys):
    src, _ = ref
    bucket = object_store.make_bucket("errors")
    for k in list(os.environ):
        if k.startswith("AWS_"):
            monkeypatch.delenv(k)
    for k, v in object_store.client_env(AWS_SECRET_ACCESS_KEY="not-the-secret").items():
        if k.startswith("AWS_"):
            monkeypatch.setenv(k, v)
    line = _main_error([src, f"s3://{bucket}/p/", *ARGS, "--staging", tmp_path / "s"], capsys)
    assert line.startswith(f"make_shards: error: s3://{bucket}/p/manifest.json: access denied (") and \
        "AWS_SECRET_ACCESS_KEY" in line, line
    assert not (tmp_path / "s").exists()  # refused before any decoding
    line = _main_error(["--verify", f"s3://{bucket}/p/"], capsys)
    assert f"s3://{bucket}/p/manifest.json: access denied (" in line, line

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", object_store.SECRET_KEY)
    assert _main_error([src, "s3://no-such-bucket/p/", *ARGS], capsys) == \
        "make_shards: error: s3://no-such-bucket/p/manifest.json: no such bucket"
    assert _main_error(["--verify", f"s3://{bucket}/nothing/"], capsys) == (
        f"make_shards: error: s3://{bucket}/nothing/manifest.json: no manifest; run preprocess/make_shards.py "
        "first (a prefix without one is unfinished)")
    assert _main_error([src, "https://example.com/shards/", *ARGS], capsys) == (
        "make_shards: error: https://example.com/shards: HTTP(S) locations are read-only; write to s3://, gs:// "
        "or a folder")
    with pytest.raises(SystemExit) as e:  # argparse's own one-line error
        main([str(src), str(tmp_path / "local"), "--staging", str(tmp_path / "s")])
    assert e.value.code == 2 and "--staging is for a remote OUT" in capsys.readouterr().err

    closed = f"http://127.0.0.1:{free_ports(1)[0]}"  # nothing listens there
    monkeypatch.setenv("AWS_ENDPOINT_URL", closed)
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", closed)
    p = _cli([src, f"s3://{bucket}/p/", *ARGS], dict(os.environ))  # the real CLI, once
    assert _error_line(p).startswith(f"make_shards: error: s3://{bucket}/p/manifest.json: still failing after 4 "
                                     "tries: Could not connect to the endpoint URL"), p.stderr
