"""A rank's sample stream: which samples it reads, in which order, fetched ahead from where.

This is the DALI graph's source (fn.external_source, one batch per call): the same code for a
local shard folder and a remote one (s3://, gs://, http(s)://, through pipeline.cache).

- Share: rank r of W reads the split's samples [floor(N*r/W), floor(N*(r+1)/W)) in shard order,
  padded to ceil(N/W) by repeating its last sample, and every batch is full (the last one filled
  the same way): every rank takes the same number of steps, and the loader weighs repeats 0.
  The share is the same every epoch, so a node's cache keeps serving the same shards.
- Order (train): a permutation of the share's shards, then the samples of each window of
  consecutive shards holding >= `window` samples shuffled together. It is a function of
  (seed, rank, epoch) only: a batch is computed from its epoch and index (DALI's BatchInfo), so
  DALI's checkpoint, which records those, resumes the stream exactly. Evaluation reads in order.
- Fetching: the shards of the next `lookahead` windows are fetched by background threads while
  the current one is read, so a warm pipeline never waits on the network.
- Reading: the shard's DALI index gives each member's offset; members are sliced out of a
  memory map of the cached tar (DALI copies them into its own buffers).
"""
from __future__ import annotations

import mmap
import os
import threading
from collections import OrderedDict, deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from pipeline.shards import AUDIO, LABEL, LABEL_DTYPE, UID, UID_DTYPE, index_name

MEMBERS_READ = (AUDIO, LABEL, UID)


def parse_index(text: str, name: str) -> list[dict[str, tuple[int, int]]]:
    """DALI's index of a tar ("v1.2 N", then per sample `ext offset size file` groups) ->
    per sample {ext: (offset, size)}, in tar order."""
    lines = text.split("\n")
    head = lines[0].split()
    if len(head) != 2 or not head[0].startswith("v1"):
        raise ValueError(f"{name}: not a DALI index (first line {lines[0][:40]!r})")
    out = []
    for line in lines[1:int(head[1]) + 1]:
        f = line.split()
        out.append({f[i]: (int(f[i + 1]), int(f[i + 2])) for i in range(0, len(f), 4)})
    if len(out) != int(head[1]):
        raise ValueError(f"{name}: index lists {len(out)} samples, its header says {head[1]}")
    return out


@dataclass(frozen=True)
class Share:
    """A rank's part of a split: (shard, position in shard) pairs in shard order, and the padded size."""
    refs: tuple[tuple[int, int], ...]   # (shard number in `shards`, sample position in that shard)
    shards: tuple[str, ...]
    padded: int                         # samples per rank per epoch, repeats included


def rank_share(shards: list[str], counts: list[int], shard_id: int, num_shards: int) -> Share:
    """Rank `shard_id`'s contiguous range of the split's samples (DALI's reader shards the same way)."""
    n = sum(counts)
    lo, hi = n * shard_id // num_shards, n * (shard_id + 1) // num_shards
    refs, base = [], 0
    for j, c in enumerate(counts):
        for k in range(max(lo - base, 0), min(hi - base, c)):
            refs.append((j, k))
        base += c
    return Share(tuple(refs), tuple(shards), -(-n // num_shards))


def epoch_order(share: Share, *, shuffle: bool, seed: int, rank: int, epoch: int, window: int) -> list[list[tuple[int, int]]]:
    """The share's samples for one epoch, as windows (lists of refs) in reading order."""
    by_shard: "OrderedDict[int, list[tuple[int, int]]]" = OrderedDict()
    for ref in share.refs:
        by_shard.setdefault(ref[0], []).append(ref)
    groups = list(by_shard.values())
    if not shuffle:
        return groups
    rng = np.random.default_rng([seed, rank, epoch])
    windows, cur = [], []
    for g in rng.permutation(len(groups)):
        cur.extend(groups[g])
        if len(cur) >= window:
            windows.append(cur)
            cur = []
    if cur:
        windows.append(cur)
    return [[w[i] for i in rng.permutation(len(w))] for w in windows]


class SampleStream:
    """DALI external_source callable: BatchInfo -> (wav bytes, label, uid) for one batch.

    `files`: a pipeline.cache LocalFiles or NodeCache (path(name) -> local path, fetched if needed).
    `epoch`: the training epoch (any integer) that DALI's epoch 0 is; later DALI epochs add to it.
    """

    def __init__(self, files, share: Share, batch_size: int, *, shuffle: bool, seed: int, rank: int,
                 epoch: int = 0, window: int = 1024, lookahead: int = 2, fetch_threads: int = 4,
                 keep_alive: int = 8):
        self.files, self.share, self.batch = files, share, batch_size
        self.shuffle, self.seed, self.rank, self.epoch0 = shuffle, seed, rank, epoch
        self.window, self.lookahead = window, lookahead
        self.batches = -(-share.padded // batch_size)
        self._plans: OrderedDict = OrderedDict()
        self._index: dict[int, list[dict[str, tuple[int, int]]]] = {}
        self._maps: "OrderedDict[int, mmap.mmap]" = OrderedDict()
        self._fetches: dict[int, Future] = {}
        self._pool = ThreadPoolExecutor(fetch_threads, thread_name_prefix="shard-fetch") if files.remote else None
        self._lock = threading.Lock()
        self.error: BaseException | None = None   # the first failure, for the loader to report in one line
        # DALI takes the batches without copying (no_copy): the arrays are views of the tars' memory
        # maps, read by DALI's decoder threads, and must outlive the prefetched iterations that use them
        self._alive: deque = deque(maxlen=keep_alive)

    # -- the order ------------------------------------------------------------------------------------
    def plan(self, epoch: int) -> tuple[list[tuple[int, int]], list[int], list[list[tuple[int, int]]]]:
        """(the epoch's padded sample list, each entry's window number, the windows)."""
        if epoch not in self._plans:
            windows = epoch_order(self.share, shuffle=self.shuffle, seed=self.seed, rank=self.rank, epoch=epoch,
                                  window=self.window)
            flat, win_of = [], []
            for w, refs in enumerate(windows):
                flat.extend(refs)
                win_of.extend([w] * len(refs))
            total = self.batches * self.batch
            flat += [flat[-1]] * (total - len(flat))
            win_of += [win_of[-1]] * (total - len(win_of))
            self._plans[epoch] = (flat, win_of, windows)
            while len(self._plans) > 3:
                self._plans.popitem(last=False)
        return self._plans[epoch]

    def __call__(self, info):
        """One batch: DALI calls this ahead of use (prefetch), from one thread, with its epoch and index."""
        if info.iteration >= self.batches:
            raise StopIteration
        try:
            return self._batch(self.epoch0 + info.epoch_idx, info.iteration)
        except BaseException as e:
            self.error = self.error or e
            raise

    def _batch(self, epoch: int, i: int):
        flat, win_of, windows = self.plan(epoch)
        refs = flat[i * self.batch:(i + 1) * self.batch]
        if self._pool is not None:
            self._prefetch(windows, win_of[i * self.batch], epoch)
        wavs, labels, uids = [], [], []
        for shard, pos in refs:
            mm, idx = self._open(shard)
            members = idx[pos]
            o, n = members[AUDIO]
            wavs.append(np.frombuffer(mm, np.uint8, n, o))
            o, n = members[LABEL]
            labels.append(np.frombuffer(mm, LABEL_DTYPE, 1, o))
            o, n = members[UID]
            uids.append(np.frombuffer(mm, UID_DTYPE, 1, o))
        self._release(set(s for s, _ in refs), windows, win_of[min(len(flat), (i + 1) * self.batch) - 1])
        self._alive.append((wavs, labels, uids))
        return wavs, labels, uids

    # -- files ------------------------------------------------------------------------------------------
    def _prefetch(self, windows, w: int, epoch: int) -> None:
        """Start fetching the shards of windows w .. w+lookahead (and, near the end, the next epoch's first)."""
        want = [s for ws in windows[w:w + 1 + self.lookahead] for s, _ in ws]
        if w + self.lookahead >= len(windows):
            nxt = self.plan(epoch + 1)[2]
            want += [s for ws in nxt[:self.lookahead] for s, _ in ws]
        for s in dict.fromkeys(want):
            if s not in self._fetches and s not in self._maps:
                self._fetches[s] = self._pool.submit(self._fetch, s)

    def _fetch(self, shard: int) -> tuple[list, mmap.mmap]:
        """Shard `shard` made local, its index parsed and the tar mapped (runs in a fetch thread).

        Once mapped, the tar's bytes stay readable even if another rank evicts the file; a file
        evicted between its fetch and the mapping is fetched again (a miss, counted)."""
        name = self.share.shards[shard]
        for attempt in range(1, 6):
            try:
                with open(self.files.path(index_name(name)), encoding="ascii") as f:
                    index = parse_index(f.read(), self.files.url(index_name(name)))
                with open(self.files.path(name), "rb") as f:
                    return index, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
            except FileNotFoundError:
                if attempt == 5 or not self.files.remote:
                    raise

    def _open(self, shard: int):
        if shard not in self._maps:
            fut = self._fetches.pop(shard, None)
            self._index[shard], self._maps[shard] = fut.result() if fut is not None else self._fetch(shard)
        self._maps.move_to_end(shard)
        return self._maps[shard], self._index[shard]

    def _release(self, used: set[int], windows, w: int) -> None:
        """Drop the maps of shards the next windows do not read (their pages go back to the OS)."""
        keep = {s for ws in windows[w:w + 1 + self.lookahead] for s, _ in ws} | used
        for s in [s for s in self._maps if s not in keep]:
            del self._maps[s]  # unmapped when DALI has copied the last view of it
            del self._index[s]

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
        self._maps.clear()
