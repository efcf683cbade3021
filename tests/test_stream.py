"""The sample stream (loading/stream.py) and the node cache (storage/cache.py), without DALI:
shares, shuffle windows, padding, the bytes handed to DALI, and the cache's fetch-once, verify
and evict rules (against a real HTTP server on loopback)."""
import hashlib
import multiprocessing as mp
import os
import shutil
import tarfile
import types

import numpy as np
import pytest
from servers import http_server  # noqa: F401 - fixture

from storage.cache import LocalFiles, NodeCache
from storage.folder import read_manifest
from storage.store import Store, StorageError
from loading.stream import SampleStream, epoch_order, rank_share

COUNTS = [5, 3, 7, 1, 4]  # 20 samples in 5 shards of uneven size
NAMES = [f"train-{i:06d}.tar" for i in range(len(COUNTS))]


@pytest.mark.parametrize("world", [1, 2, 3, 7])
def test_shares_partition_the_split(world):
    shares = [rank_share(NAMES, COUNTS, r, world) for r in range(world)]
    got = sorted((int(s), int(p)) for sh in shares for s, p in zip(sh.shard, sh.pos))
    assert got == [(j, k) for j, c in enumerate(COUNTS) for k in range(c)]  # each sample in exactly one share
    sizes = [len(sh.shard) for sh in shares]
    assert max(sizes) - min(sizes) <= 1 and all(sh.padded == -(-20 // world) for sh in shares)
    for sh in shares:  # contiguous and in shard order
        assert list(zip(sh.shard, sh.pos)) == sorted(zip(sh.shard, sh.pos))


def test_epoch_order_windows_padding_and_determinism():
    share = rank_share(NAMES, COUNTS, 0, 1)
    kw = dict(shuffle=True, seed=3, rank=0, window=6, total=24)
    a, again, b = epoch_order(share, epoch=1, **kw), epoch_order(share, epoch=1, **kw), epoch_order(share, epoch=2, **kw)
    assert np.array_equal(a.order, again.order) and not np.array_equal(a.order, b.order)
    assert sorted(a.order[:20]) == list(range(20)) and list(a.order[20:]) == [a.order[19]] * 4  # padding repeats the last
    for w, shards in enumerate(a.window_shards):
        members = a.order[:20][a.window[:20] == w]
        assert set(share.shard[members]) == set(shards)  # a window holds whole shards
        if w < len(a.window_shards) - 1:  # it closed as soon as it held >= window samples
            assert len(members) >= 6 and any(len(members) - COUNTS[s] < 6 for s in shards)
    assert np.all(np.diff(a.window) >= 0)  # windows are read one after another
    plain = epoch_order(share, epoch=1, **{**kw, "shuffle": False})
    assert list(plain.order[:20]) == list(range(20))


def test_stream_hands_dali_the_tar_members(train_shards):
    shards = train_shards[0]
    m = read_manifest(shards)
    names = list(m.splits["train"].shards)
    counts = [sum(s.shard == n for s in m.samples) for n in names]
    members, keys = {}, []  # keys: the split's samples in shard order, as the tars hold them
    for n in names:
        with tarfile.open(os.path.join(shards, n)) as tf:
            for mem in tf:
                key, _, ext = mem.name.partition(".")
                members[(key, ext)] = tf.extractfile(mem).read()
                keys += [key] if ext == "wav" else []
    by_uid = {s.uid: s for s in m.samples}
    stream = SampleStream(LocalFiles(shards), rank_share(names, counts, 1, 2), 4, shuffle=True, seed=0, rank=1,
                          rate=m.spec.sample_rate, max_frames=int(max(s.duration for s in m.samples) * m.spec.sample_rate) + 1)
    seen = []
    for i in range(stream.batches):
        wavs, labels, uids = stream(types.SimpleNamespace(epoch_idx=0, iteration=i))
        assert len(wavs) == len(labels) == len(uids) == 4
        for wav, lab, uid in zip(wavs, labels, uids):
            smp = by_uid[int(uid[0])]
            assert bytes(wav) == members[(smp.key, "wav")] and int(lab[0]) == m.classes.index(smp.label)
            seen.append(smp.uid)
    with pytest.raises(StopIteration):
        stream(types.SimpleNamespace(epoch_idx=0, iteration=stream.batches))
    n = sum(counts)
    uid_of = {s.key: s.uid for s in m.samples}
    want = [uid_of[k] for k in keys][n // 2:]  # rank 1 of 2: the second half
    assert sorted(set(seen)) == sorted(want)


def _fetch_in_process(root, cache_dir, checksums, name, queue):
    cache = NodeCache(Store(root), cache_dir, checksums)
    cache.path(name)
    queue.put((cache.stats.hits, cache.stats.misses, cache.stats.bytes_fetched))


def test_cache_fetches_once_per_node_verifies_and_evicts(train_shards, http_server, tmp_path):
    shards = train_shards[0]
    shutil.copytree(shards, os.path.join(http_server.folder, "s"))
    root, m = f"{http_server.url}/s", read_manifest(shards)
    name = m.splits["train"].shards[0]
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    procs = [ctx.Process(target=_fetch_in_process, args=(root, str(tmp_path / "c"), m.files, name, q)) for _ in range(2)]
    for p in procs:
        p.start()
    res = [q.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(60)
    size = os.path.getsize(os.path.join(shards, name))
    assert sorted(r[:2] for r in res) == [(0, 1), (1, 0)] and sum(r[2] for r in res) == size  # one fetch per node

    bad = dict(m.files, **{name: "0" * 64})  # a manifest checksum the bytes do not have
    cache = NodeCache(Store(root), str(tmp_path / "d"), bad, log=lambda line: None)
    with pytest.raises(StorageError, match=f"{root}/{name}: sha256 .* differs from the manifest"):
        cache.path(name)
    assert not [f for f in os.listdir(cache.dir) if not f.startswith(".")]  # nothing unverified is kept

    blobs = {f"val-00010{i}.tar": os.urandom(1000) for i in range(3)}
    for n, data in blobs.items():
        with open(os.path.join(http_server.folder, "s", n), "wb") as f:
            f.write(data)
    sums = {n: hashlib.sha256(d).hexdigest() for n, d in blobs.items()}
    cache = NodeCache(Store(root), str(tmp_path / "e"), sums, limit_bytes=2500)  # room for two
    f0, f1, f2 = blobs
    cache.path(f0)
    cache.path(f1)
    cache.path(f0)  # used again: f1 is now the least recently used
    cache.path(f2)
    # entries are keyed by content: name stem, the manifest's sha256, extension
    assert sorted(f for f in os.listdir(cache.dir) if not f.startswith(".")) == sorted(
        f"{n[:-4]}.{sums[n]}.tar" for n in (f0, f2))
    assert (cache.stats.evictions, cache.stats.misses, cache.stats.hits) == (1, 3, 1)


def test_cache_removes_partial_downloads_of_dead_processes(tmp_path):
    dead = mp.get_context("spawn").Process(target=int)
    dead.start()
    dead.join()
    cache = NodeCache(Store("s3://bucket/p"), str(tmp_path), {})
    orphan = os.path.join(cache.dir, f"train-000000.tar.part{dead.pid}.1")
    live = os.path.join(cache.dir, f"train-000001.tar.part{os.getpid()}.1")
    for path in (orphan, live):
        open(path, "wb").close()
    NodeCache(Store("s3://bucket/p"), str(tmp_path), {})
    assert not os.path.exists(orphan) and os.path.exists(live)


def test_evaluation_order_groups_each_shards_samples_by_length():
    """With lengths (the collection mode and evaluation), each shard's samples come shortest first, so
    a DALI batch, padded to its longest track, holds tracks of similar length; every sample once."""
    share = rank_share(["a.tar", "b.tar"], [5, 4], 0, 1)
    lengths = np.array([30.0, 600.0, 1.5, 30.0, 2.0, 9.0, 1.0, 400.0, 8.0])
    plan = epoch_order(share, shuffle=False, seed=0, rank=0, epoch=0, window=1024, total=12, lengths=lengths)
    assert plan.order[:9].tolist() == [2, 4, 0, 3, 1, 6, 8, 5, 7]
    assert plan.order[9:].tolist() == [7, 7, 7]  # padding repeats the last
    plain = epoch_order(share, shuffle=False, seed=0, rank=0, epoch=0, window=1024, total=12)
    assert plain.order[:9].tolist() == list(range(9))
