"""Shard folders from elsewhere are untrusted: a manifest, index or server cannot make a reader write
outside its cache, skip verification, exhaust the node, or leak a secret (README: threat model).

The servers are real (tests/servers.py HostileServer: a loopback HTTP server that serves altered
folders, lies about sizes, trickles or stalls); the commands are the real CLIs.
"""
import copy
import hashlib
import io
import json
import os
import random
import subprocess
import sys
import tarfile
import time

import pytest
from helpers import ROOT
from servers import HostileServer, Lie

from core import checkpoint
from core.shards import MANIFEST, Manifest, ManifestError, index_name, manifest_bytes, read_shard_members
from loading.stream import parse_index
from model import build_model
from storage.cache import NodeCache
from storage.folder import read_manifest, trust_warnings
from storage.store import Limits, Store, StorageError, redact

ESCAPES = ["../../../evil_out/pwn.tar", "/tmp/pt-evil/pwn.tar", "%2F..%2F..%2Fpwn.tar", "..%2Fpwn.tar",
           "..\\..\\pwn.tar", "train-000000.tar\x00.tar", "train-000000.tar/../../pwn.tar", "train-0000001.tar"]


def folder_bytes(folder: str) -> dict[str, bytes]:
    return {n: open(os.path.join(folder, n), "rb").read() for n in os.listdir(folder)}


def renamed(doc: dict, old: str, new: str) -> dict:
    """`doc` with shard `old` (and its index) called `new` everywhere, checksums and sizes unchanged."""
    doc = copy.deepcopy(doc)
    for sp in doc["splits"].values():
        sp["shards"] = [new if n == old else n for n in sp["shards"]]
    for table in ("files", "sizes"):
        for a, b in ((old, new), (index_name(old), new[:-4] + ".idx" if new.endswith(".tar") else new + ".idx")):
            doc[table][b] = doc[table].pop(a)
    for s in doc["samples"]:
        if s["shard"] == old:
            s["shard"] = new
    return doc


@pytest.fixture(scope="module")
def folder(train_shards):
    shards = train_shards[0]
    return shards, json.loads(open(os.path.join(shards, MANIFEST), "rb").read())


def serve(files: dict[str, bytes], doc: dict | None, **kw) -> HostileServer:
    routes = {f"/s/{n}": b for n, b in files.items() if n != MANIFEST}
    if doc is not None:
        routes[f"/s/{MANIFEST}"] = manifest_bytes(doc)
    return HostileServer(routes, **kw)


# ------------------------------------------------------------------------------------------ names

@pytest.mark.parametrize("name", ESCAPES)
def test_every_escaping_name_is_refused_wherever_the_manifest_gives_it(folder, name):
    _, doc = folder
    first = doc["splits"]["train"]["shards"][0]
    variants = {"splits": renamed(doc, first, name)}
    files = copy.deepcopy(doc)
    files["files"][name] = files["files"].pop(first)
    variants["files"] = files
    sample = copy.deepcopy(doc)
    sample["samples"][0]["shard"] = name
    variants["sample"] = sample
    for where, bad in variants.items():
        with pytest.raises(ManifestError) as e:
            Manifest(bad, "SRC/manifest.json")
        line = str(e.value)
        assert line.startswith("SRC/manifest.json: ") and "\n" not in line and "\x00" not in line, (where, line)


def walk(root: str) -> dict[str, bytes]:
    out = {}
    for d, _, names in os.walk(root):
        for n in names:
            p = os.path.join(d, n)
            out[p] = open(p, "rb").read() if os.path.isfile(p) else b""
    return out


def test_cli_readers_refuse_escaping_names_before_touching_anything(folder, tmp_path):
    """train.py, predict.py --shards and make_shards --verify against a server whose manifest renames a
    shard to escape: exit 2, one line, no request beyond the manifest, and no file created, changed
    or removed anywhere under the test's root (a sentinel file the manifest names survives)."""
    shards, doc = folder
    files = folder_bytes(shards)
    first = doc["splits"]["train"]["shards"][0]
    sentinel = tmp_path / "victim" / "train-000000.tar"
    sentinel.parent.mkdir()
    sentinel.write_bytes(b"precious")
    real = {".tar": files[first], ".idx": files[index_name(first)]}

    def fallback(path):  # whatever a traversal resolves to, the server has the real bytes for it
        return real.get(os.path.splitext(path)[1])

    cache = tmp_path / "cache"
    best = str(tmp_path / "tiny.pt")  # predict.py loads its checkpoint before it reads the shards
    checkpoint.save(best, {"model_name": "tiny", "model": build_model("tiny", 4).state_dict(),
                           "classes": doc["classes"], "feature_spec": doc["feature_spec"]})
    runs = [
        ("train", "../../../evil_out/pwn.tar",
         [os.path.join(ROOT, "train.py"), "--cache-dir", str(cache), "--run-dir", str(tmp_path / "run"),
          "--epochs", "1", "--model", "tiny", "--shards"]),
        ("predict", str(sentinel),
         [os.path.join(ROOT, "predict.py"), "--checkpoint", best, "--out", str(tmp_path / "p.jsonl"), "--shards"]),
        ("make_shards", str(sentinel), [os.path.join(ROOT, "preprocess", "make_shards.py"), "--verify"]),
        ("make_shards", "..%2F..%2Fpwn.tar", [os.path.join(ROOT, "preprocess", "make_shards.py"), "--verify"]),
    ]
    before = walk(str(tmp_path))
    for tool, name, cmd in runs:
        with serve(files, renamed(doc, first, name), fallback=fallback) as server:
            p = subprocess.run([sys.executable, *cmd, f"{server.url}/s"], capture_output=True, text=True,
                               cwd=str(tmp_path), timeout=300, env={**os.environ, "XDG_CACHE_HOME": str(cache)})
            assert p.returncode == 2, (tool, p.stderr[-2000:])
            errors = [ln for ln in p.stderr.splitlines() if "error" in ln]
            assert len(errors) == 1 and "Traceback" not in p.stderr, (tool, p.stderr[-2000:])
            assert errors[0].startswith(f"{tool}: error: {server.url}/s/manifest.json: ") and \
                "is not a shard file name" in errors[0], errors
            assert server.requests == ["/s/manifest.json"], server.requests
        assert walk(str(tmp_path)) == before, tool
    assert not os.path.exists("/tmp/pt-evil") and not (tmp_path.parent / "evil_out").exists()


# ------------------------------------------------------------------------------------ verification

def test_unverifiable_remote_folders_are_refused_unless_the_user_opts_out(folder, tmp_path):
    shards, doc = folder
    files = folder_bytes(shards)
    first = doc["splits"]["train"]["shards"][0]
    old = copy.deepcopy(doc)  # a version-1-like manifest: no checksums at all
    old["files"], old["sizes"], old["version"] = {}, {}, 1
    one_missing = copy.deepcopy(doc)
    del one_missing["files"][first]
    for bad in (old, one_missing):
        with serve(files, bad) as server:
            url = f"{server.url}/s"
            with pytest.raises(ManifestError, match="no checksum for .*--allow-unverified"):
                read_manifest(url)
            m = read_manifest(url, allow_unverified=True)
            assert any("taken as served" in w for w in trust_warnings(url, m))
            # the cache itself refuses too, whoever calls it
            with pytest.raises(StorageError, match=f"{first}: the manifest gives no checksum"):
                NodeCache(Store(url), str(tmp_path / "c1"), m.files, sizes=m.sizes).path(first)
            local = NodeCache(Store(url), str(tmp_path / "c2"), m.files, sizes=m.sizes,
                              allow_unverified=True).path(first)
            assert local.endswith(".unverified.tar") and open(local, "rb").read() == files[first]
    with serve(files, doc) as server:
        url = f"{server.url}/s"
        m = read_manifest(url)
        assert any("plain http" in w for w in trust_warnings(url, m))
        pin = hashlib.sha256(manifest_bytes(doc)).hexdigest()
        assert read_manifest(url, sha256=pin).files == m.files
        assert not any("plain http" in w for w in trust_warnings(url, m, pinned=True))
        with pytest.raises(ManifestError, match="is not the pinned"):
            read_manifest(url, sha256="0" * 64)


def test_cache_entries_are_keyed_by_content(folder, tmp_path):
    """A file let in under one manifest is never served for another that records other bytes under the
    same name; a cached file whose size is not the manifest's is fetched again."""
    shards, doc = folder
    files = folder_bytes(shards)
    name = doc["splits"]["train"]["shards"][0]
    other = bytearray(files[name])
    other[len(other) // 2] ^= 1
    doc_b = copy.deepcopy(doc)
    doc_b["files"][name] = hashlib.sha256(other).hexdigest()
    with serve(files, doc) as server:
        a = NodeCache(Store(f"{server.url}/s"), str(tmp_path), doc["files"], sizes=doc["sizes"])
        path_a = a.path(name)
        server.routes[f"/s/{name}"] = bytes(other)
        b = NodeCache(Store(f"{server.url}/s"), str(tmp_path), doc_b["files"], sizes=doc_b["sizes"])
        path_b = b.path(name)
        assert path_a != path_b and b.stats.misses == 1
        assert open(path_a, "rb").read() == files[name] and open(path_b, "rb").read() == bytes(other)
        with open(path_b, "r+b") as f:  # damaged in the cache (truncated): not a hit
            f.truncate(100)
        assert b.path(name) == path_b and b.stats.misses == 2 and open(path_b, "rb").read() == bytes(other)


# ------------------------------------------------------------------------------------------ bounds

def test_servers_that_lie_end_in_one_line_within_their_deadline(folder, tmp_path):
    shards, doc = folder
    files = folder_bytes(shards)
    name = doc["splits"]["train"]["shards"][0]
    size = doc["sizes"][name]
    quick = Limits(read_timeout=1.0, connect_timeout=2.0, deadline=2.0, min_rate=1e9)
    cases = [
        ("endless", Lie.endless(), f"sent more than the {size:,} bytes the manifest records"),
        ("trickle", Lie.trickle(files[name], interval=0.05), "too slow"),
        ("stall", Lie.stall(files[name]), "out of time after"),
    ]
    for kind, lie, message in cases:
        cache_dir = tmp_path / kind
        with serve(files, doc) as server:
            server.routes[f"/s/{name}"] = lie
            cache = NodeCache(Store(f"{server.url}/s", limits=quick, backoff=0.05), str(cache_dir), doc["files"],
                              sizes=doc["sizes"], log=lambda line: None)
            t0 = time.monotonic()
            with pytest.raises(StorageError) as e:
                cache.path(name)
            took = time.monotonic() - t0
        line = str(e.value)
        assert message in line and line.startswith(f"{server.url}/s/{name}: ") and "\n" not in line, (kind, line)
        assert took < 10, (kind, took)
        held = sum(f.stat().st_size for f in cache_dir.rglob("*") if f.is_file())
        assert held <= size, (kind, held)  # nothing beyond the manifest's size was written, and nothing kept

    # sizes the cache cannot hold are refused before any byte is requested
    huge = copy.deepcopy(doc)
    huge["sizes"][name] = 1 << 43
    with serve(files, huge) as server:
        cache = NodeCache(Store(f"{server.url}/s"), str(tmp_path / "big"), huge["files"], sizes=huge["sizes"])
        with pytest.raises(StorageError, match="GB free"):
            cache.path(name)
        limited = NodeCache(Store(f"{server.url}/s"), str(tmp_path / "lim"), doc["files"], limit_bytes=size - 1,
                            sizes=doc["sizes"])
        with pytest.raises(StorageError, match="larger than --cache-limit"):
            limited.path(name)
        assert f"/s/{name}" not in server.requests

    # a manifest of 1 GB (a server streaming zeros under that name) is refused at the cap
    with serve(files, None) as server:
        server.routes[f"/s/{MANIFEST}"] = Lie.endless(claim=1 << 30)
        t0 = time.monotonic()
        with pytest.raises(StorageError, match="more than the 268,435,456 bytes"):
            read_manifest(f"{server.url}/s")
        assert time.monotonic() - t0 < 30


def test_a_transfer_cut_midway_is_retried_from_its_start(folder, tmp_path):
    """A connection closed halfway through a manifest or a shard: the retry starts over, and what
    is read or written is the object's bytes exactly once."""
    shards, doc = folder
    files = folder_bytes(shards)
    name = doc["splits"]["train"]["shards"][0]
    with serve(files, doc) as server:
        server.routes[f"/s/{MANIFEST}"] = Lie.cut_once(manifest_bytes(doc))
        server.routes[f"/s/{name}"] = Lie.cut_once(files[name])
        store = Store(f"{server.url}/s", backoff=0.05)
        assert store.read_bytes(MANIFEST) == manifest_bytes(doc)
        dest = tmp_path / "cut.tar"
        assert store.get(name, str(dest)) == (len(files[name]), hashlib.sha256(files[name]).hexdigest())
        assert dest.read_bytes() == files[name] and store.retried == 2


def test_index_members_outside_their_tar_are_refused(folder):
    shards, doc = folder
    name = doc["splits"]["train"]["shards"][0]
    text = open(os.path.join(shards, index_name(name))).read()
    tar_size = os.path.getsize(os.path.join(shards, name))
    n = len(parse_index(text, "i", tar_size, doc["splits"]["train"]["count"] and 1))
    head, first, *rest = text.split("\n")
    fields = first.split()
    fields[1] = str(tar_size)  # the first member's offset: at the tar's end
    bad = "\n".join([head, " ".join(fields), *rest])
    with pytest.raises(ValueError, match="lies outside its tar"):
        parse_index(bad, "i", tar_size)
    with pytest.raises(ValueError, match="the manifest"):
        parse_index(text, "i", tar_size, n + 1)
    no_label = "\n".join([head, " ".join(f for i, f in enumerate(first.split()) if i // 4 != first.split().index("lab") // 4),
                          *rest])
    with pytest.raises(ValueError, match="no 4-byte .lab member"):
        parse_index(no_label, "i", tar_size)
    with pytest.raises(ValueError, match="not a list of"):
        parse_index(head + "\nwav x y z\n", "i", tar_size)


def _tar_with_header(edit) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tf:
        info = tarfile.TarInfo("k_1.wav")
        info.size = 4
        tf.addfile(info, io.BytesIO(b"RIFF"))
    data = bytearray(buf.getvalue())
    edit(data)
    data[148:156] = b" " * 8  # the header checksum, recomputed over the edited header
    data[148:156] = b"%06o\0 " % sum(data[:512])
    return bytes(data)


def test_verify_refuses_sparse_and_oversized_members(tmp_path):
    """A few hundred bytes of tar can declare terabytes: --verify hashes members as streams and
    refuses what no shard holds, before reading it."""
    def sparse(d):
        d[156:157] = b"S"                      # GNU sparse member
        d[483:495] = b"%011o\0" % (1 << 33)    # its real size: 8 GiB

    def oversized(d):
        d[124:136] = b"%011o\0" % (1 << 33 - 1)  # declares 4 GiB in a tar of a few KB
    for edit, message in ((sparse, "sparse"), (oversized, "more than the whole tar")):
        path = tmp_path / f"{edit.__name__}.tar"
        path.write_bytes(_tar_with_header(edit))
        with pytest.raises(ValueError, match=message):
            read_shard_members(str(path))


# -------------------------------------------------------------------------------------------- fuzz

def _mutations(rng: random.Random):
    values = [None, True, -1, 0, 2**63, 1e308, float("nan"), float("inf"), "", "../x", "x" * 10_000, [], {},
              [None], {"a": 1}, "train-000000.tar", 1.5, "\x1b[31m"]
    def mutate(node):
        if isinstance(node, dict) and node:
            key = rng.choice(sorted(node, key=str))
            action = rng.random()
            if action < 0.2:
                del node[key]
            elif action < 0.6 and isinstance(node[key], (dict, list)) and node[key]:
                mutate(node[key])
            else:
                node[key] = copy.deepcopy(rng.choice(values))
        elif isinstance(node, list) and node:
            i = rng.randrange(len(node))
            action = rng.random()
            if action < 0.15:
                del node[i]
            elif action < 0.3:
                node.append(copy.deepcopy(node[i]))
            elif action < 0.7 and isinstance(node[i], (dict, list)) and node[i]:
                mutate(node[i])
            else:
                node[i] = copy.deepcopy(rng.choice(values))
    return mutate


def test_fuzzed_manifests_load_or_give_one_line(folder):
    """Seeded structure, type and range mutations of a real manifest: each one loads (and every part a
    reader uses works) or is one ManifestError line; nothing else escapes."""
    _, doc = folder
    doc = copy.deepcopy(doc)
    rng = random.Random(1234)
    mutate = _mutations(rng)
    loaded = refused = 0
    t0 = time.monotonic()
    for _ in range(3000):
        bad = copy.deepcopy(doc)
        for _ in range(rng.randint(1, 3)):
            mutate(bad)
        try:
            m = Manifest(bad, "fuzz/manifest.json")
        except ManifestError as e:
            assert "\n" not in str(e) and str(e).startswith("fuzz/manifest.json: ")
            refused += 1
            continue
        m.spec, m.samples, m.key_of(), m.listed_files, m.unverifiable(), m.unsized()
        for s in m.split_names:
            m.shard_paths("/base", s)
            assert all(os.path.dirname(p) == "/base" for p in m.shard_paths("/base", s)[0])
        loaded += 1
    assert refused > 1000 and loaded > 100, (refused, loaded)
    assert time.monotonic() - t0 < 120


# ----------------------------------------------------------------------------------------- secrets

def test_redact_removes_credentials_and_tokens():
    line = ("fetch https://alice:s3cret@host.example/p/x.tar?X-Amz-Signature=abc&tok=zz failed; "
            "see s3://bucket/k?versionId=1 (is it there?)")
    out = redact(line)
    assert "s3cret" not in out and "abc" not in out and "zz" not in out and "versionId" not in out
    assert out == ("fetch https://***@host.example/p/x.tar?*** failed; see s3://bucket/k?*** (is it there?)")
    store = Store("https://u:pw@h.example/shards?sig=SECRET")
    assert store.url("a.tar") == "https://u:pw@h.example/shards/a.tar?sig=SECRET"
    assert store.shown("a.tar") == "https://***@h.example/shards/a.tar"


def test_launched_ranks_get_the_trust_options(tmp_path):
    """predict.py --nproc N relaunches itself for its ranks: --allow-unverified and --manifest-sha256
    reach them, or the ranks would refuse (or not pin) the folder the launcher accepted."""
    import predict
    from predict_collection import Job, rank_args
    job = Job(out=str(tmp_path / "p.jsonl"), fmt="jsonl", shard_dir="http://h.example/s", checkpoint=["c.pt"],
              source_root=None, timeline_hop=None, batch_size=None, threads=None, cpu=True, eager=False, amp=False,
              allow_unverified=True, manifest_sha256="ab" * 32)
    args = predict.parse_args(rank_args(job))
    assert args.allow_unverified and args.manifest_sha256 == "ab" * 32 and args.shards == job.shard_dir
