"""A rank's sample stream: which samples it reads, in which order, fetched ahead from where.

This is the DALI graph's source (fn.external_source, one batch per call): the same code for a
local shard folder and a remote one (s3://, gs://, http(s)://, through storage.cache).

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
- Reading: the shard's DALI index gives each member's offset; members are views of a memory map
  of the (cached) tar, which DALI reads in place (no_copy) in its decoder threads. Every WAV member
  of a shard is checked to be the format's audio (16-bit PCM mono at the spec's rate, no longer
  than the manifest allows: core.shards.wav_member_frames) when the shard is opened, so what DALI
  decodes is bounded whatever a tar holds.
- Evaluation order with `lengths`: each shard's samples sorted by length, so a batch (padded by
  DALI to its longest track) holds tracks of similar length.
"""
from __future__ import annotations

import mmap
from collections import OrderedDict, deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from core.shards import AUDIO, LABEL, LABEL_DTYPE, UID, UID_DTYPE, index_name, wav_member_frames


def parse_index(text: str, name: str, tar_size: int | None = None, samples: int | None = None
                ) -> list[dict[str, tuple[int, int]]]:
    """DALI's index of a tar ("v1.2 N", then per sample `ext offset size file` groups) ->
    per sample {ext: (offset, size)}, in tar order.

    An index is untrusted input: ValueError (one line naming it) for anything malformed, a member
    that lies outside the tar's `tar_size` bytes, a sample without the members the stream reads
    (with their exact sizes), or fewer samples than the manifest's `samples` for this shard."""
    lines = text.split("\n")
    head = lines[0].split()
    if len(head) != 2 or not head[0].startswith("v1") or not head[1].isdigit():
        raise ValueError(f"{name}: not a DALI index (first line {lines[0][:40]!r})")
    out = []
    for i, line in enumerate(lines[1:int(head[1]) + 1]):
        f = line.split()
        try:
            if len(f) % 4 or not f:
                raise ValueError
            members = {f[j]: (int(f[j + 1]), int(f[j + 2])) for j in range(0, len(f), 4)}
        except ValueError:
            raise ValueError(f"{name}: line {i + 2} is not a list of `ext offset size file` groups") from None
        for ext, (offset, size) in members.items():
            if offset < 0 or size < 0 or (tar_size is not None and offset + size > tar_size):
                raise ValueError(f"{name}: sample {i}'s .{ext} member ({offset}+{size}) lies outside its tar "
                                 f"({tar_size} bytes)")
        for ext, want in ((AUDIO, None), (LABEL, LABEL_DTYPE.itemsize), (UID, UID_DTYPE.itemsize)):
            if ext not in members or (want is not None and members[ext][1] != want):
                raise ValueError(f"{name}: sample {i} has no {'' if want is None else f'{want}-byte '}.{ext} member")
        out.append(members)
    if len(out) != int(head[1]):
        raise ValueError(f"{name}: index lists {len(out)} samples, its header says {head[1]}")
    if samples is not None and len(out) < samples:
        raise ValueError(f"{name}: index lists {len(out)} samples, the manifest {samples}")
    return out


@dataclass(frozen=True)
class Share:
    """A rank's part of a split, in shard order: sample j is sample pos[j] of shards[shard[j]]."""
    shards: tuple[str, ...]
    shard: np.ndarray       # (n,) int32
    pos: np.ndarray         # (n,) int32
    padded: int             # samples per rank per epoch, repeats included


def rank_share(shards: list[str], counts: list[int], rank: int, world: int) -> Share:
    """Rank `rank`'s contiguous range of the split's samples (`counts` per shard), [N*r/W, N*(r+1)/W)."""
    n = sum(counts)
    lo, hi = n * rank // world, n * (rank + 1) // world
    shard = np.repeat(np.arange(len(counts), dtype=np.int32), counts)
    pos = np.arange(n, dtype=np.int64) - np.repeat(np.cumsum([0, *counts[:-1]]), counts)
    return Share(tuple(shards), shard[lo:hi], pos[lo:hi].astype(np.int32), -(-n // world))


@dataclass(frozen=True)
class Plan:
    """One epoch of a share: the samples in reading order (padded to whole batches) and the
    shuffle window each belongs to."""
    order: np.ndarray                  # (batches * batch,) indices into the share
    window: np.ndarray                 # (batches * batch,) window number of each entry
    window_shards: list[np.ndarray]    # the shards each window reads


def epoch_order(share: Share, *, shuffle: bool, seed: int, rank: int, epoch: int, window: int,
                total: int, lengths: np.ndarray | None = None) -> Plan:
    """The share's order for one epoch: in order (each shard's samples by `lengths` if given), or
    its shards permuted and the samples of each run of shards holding >= `window` samples permuted
    together; padded to `total` by repeating the last sample."""
    n = len(share.shard)
    groups = np.split(np.arange(n), np.flatnonzero(np.diff(share.shard)) + 1)  # one per shard
    if not shuffle:
        windows = groups if lengths is None else [g[np.argsort(lengths[g], kind="stable")] for g in groups]
    else:
        rng = np.random.default_rng([seed, rank, epoch])
        windows, cur, size = [], [], 0
        for g in rng.permutation(len(groups)):
            cur.append(groups[g])
            size += len(groups[g])
            if size >= window:
                windows.append(np.concatenate(cur))
                cur, size = [], 0
        if cur:
            windows.append(np.concatenate(cur))
        windows = [w[rng.permutation(len(w))] for w in windows]
    order = np.concatenate(windows)
    win = np.repeat(np.arange(len(windows)), [len(w) for w in windows])
    order = np.concatenate([order, np.full(total - n, order[-1])])
    win = np.concatenate([win, np.full(total - n, win[-1])])
    return Plan(order, win, [np.unique(share.shard[w]) for w in windows])


class SampleStream:
    """DALI external_source callable: BatchInfo -> (wav bytes, label, uid) for one batch.

    `files`: a storage.cache LocalFiles or NodeCache (path(name) -> local path, fetched if needed).
    `epoch`: the training epoch (any integer) that DALI's epoch 0 is; later DALI epochs add to it.
    `rate`, `max_frames`: what every WAV member must be (core.shards.wav_member_frames).
    `lengths`: per share sample, its duration: evaluation batches group similar lengths.
    `prefetch`: the DALI pipeline's prefetch_queue_depth (how many batches it may hold ahead).
    """

    def __init__(self, files, share: Share, batch_size: int, *, shuffle: bool, seed: int, rank: int,
                 rate: int, max_frames: int, epoch: int = 0, window: int = 1024, lookahead: int = 2,
                 fetch_threads: int = 4, prefetch: int = 2, lengths: np.ndarray | None = None):
        self.files, self.share, self.batch = files, share, batch_size
        self.rate, self.max_frames, self.lengths = rate, max_frames, lengths
        self.shuffle, self.seed, self.rank, self.epoch0 = shuffle, seed, rank, epoch
        self.window, self.lookahead = window, lookahead
        self.batches = -(-share.padded // batch_size)
        self._plans: OrderedDict = OrderedDict()
        self._mapped: dict[int, tuple[mmap.mmap, list]] = {}   # shard -> (its tar's memory map, its index)
        self._fetches: dict[int, Future] = {}
        self._pool = ThreadPoolExecutor(fetch_threads, thread_name_prefix="shard-fetch") if files.remote else None
        self.error: BaseException | None = None   # the first failure, for the loader to report in one line
        # DALI takes the batches without copying (no_copy): the arrays are views of the tars' memory
        # maps, read by DALI's decoder threads, and must outlive the prefetched iterations that use
        # them: up to `prefetch` queued in each of its two stages, one running, with room to spare
        self._alive: deque = deque(maxlen=2 * prefetch + 4)
        # per shard, the samples its index must hold for this share (its highest position + 1)
        self._needed = np.zeros(len(share.shards), np.int64)
        np.maximum.at(self._needed, share.shard, share.pos.astype(np.int64) + 1)

    # -- the order ------------------------------------------------------------------------------------
    def plan(self, epoch: int) -> Plan:
        if epoch not in self._plans:
            self._plans[epoch] = epoch_order(self.share, shuffle=self.shuffle, seed=self.seed, rank=self.rank,
                                             epoch=epoch, window=self.window, total=self.batches * self.batch,
                                             lengths=self.lengths)
            while len(self._plans) > 3:  # DALI's prefetch asks for the next epoch before this one ends
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
        plan = self.plan(epoch)
        rows = plan.order[i * self.batch:(i + 1) * self.batch]
        first, last = int(plan.window[i * self.batch]), int(plan.window[(i + 1) * self.batch - 1])
        if self._pool is not None:
            self._prefetch(plan, first, epoch)
        wavs, labels, uids = [], [], []
        for shard, pos in zip(self.share.shard[rows].tolist(), self.share.pos[rows].tolist()):
            mm, idx = self._open(shard)
            members = idx[pos]
            o, n = members[AUDIO]
            wavs.append(np.frombuffer(mm, np.uint8, n, o))
            o, n = members[LABEL]
            labels.append(np.frombuffer(mm, LABEL_DTYPE, 1, o))
            o, n = members[UID]
            uids.append(np.frombuffer(mm, UID_DTYPE, 1, o))
        self._release(plan, last)
        self._alive.append((wavs, labels, uids))
        return wavs, labels, uids

    # -- files ------------------------------------------------------------------------------------------
    def _prefetch(self, plan: Plan, w: int, epoch: int) -> None:
        """Start fetching the shards of windows w .. w+lookahead (and, near the end, the next epoch's first)."""
        want = plan.window_shards[w:w + 1 + self.lookahead]
        if w + self.lookahead >= len(plan.window_shards):
            want = want + self.plan(epoch + 1).window_shards[:self.lookahead]
        for s in dict.fromkeys(int(s) for ws in want for s in ws):
            if s not in self._fetches and s not in self._mapped:
                self._fetches[s] = self._pool.submit(self._fetch, s)

    def _fetch(self, shard: int) -> tuple[mmap.mmap, list]:
        """Shard `shard` made local, its index parsed and the tar mapped (runs in a fetch thread).

        Once mapped, the tar's bytes stay readable even if another rank evicts the file; a file
        evicted between its fetch and the mapping is fetched again (a miss, counted)."""
        name = self.share.shards[shard]
        for attempt in range(1, 6):
            try:
                with open(self.files.path(index_name(name)), encoding="ascii", errors="replace") as f:
                    text = f.read()
                with open(self.files.path(name), "rb") as f:
                    mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
                index = parse_index(text, self.files.url(index_name(name)), len(mm), int(self._needed[shard]))
                view = memoryview(mm)
                for i, members in enumerate(index):
                    o, n = members[AUDIO]
                    wav_member_frames(view[o:o + n], self.rate, self.max_frames, f"{self.files.url(name)} sample {i}")
                view.release()
                return mm, index
            except FileNotFoundError:
                if attempt == 5 or not self.files.remote:
                    raise

    def _open(self, shard: int):
        if shard not in self._mapped:
            fut = self._fetches.pop(shard, None)
            self._mapped[shard] = fut.result() if fut is not None else self._fetch(shard)
        return self._mapped[shard]

    def _release(self, plan: Plan, w: int) -> None:
        """Drop the maps of shards that windows w .. w+lookahead do not read (unmapped once DALI is
        done with the last view of them)."""
        keep = {int(s) for ws in plan.window_shards[w:w + 1 + self.lookahead] for s in ws}
        for s in [s for s in self._mapped if s not in keep]:
            del self._mapped[s]

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
        self._mapped.clear()
