"""The leak check: tracks in different splits that are the same recording.

Two kinds:
- exact copies: the same decoded PCM (the manifest's pcm_sha256) in two splits. make_shards keeps
  one copy of identical audio (its "duplicates" groups list what it dropped), so these appear only
  in folders built otherwise; both are reported.
- near copies: a re-encoded, re-levelled or otherwise re-edited copy has other PCM but the same
  spectral statistics. Each track is described by its level-free spectral shape (every band's mean
  minus the mean over bands, so a gain change, which shifts every band above the floor by the same
  dB, leaves it alone) and every band's standard deviation over time, standardised with the
  training split's statistics; pairs in different splits whose cosine similarity reaches
  THRESHOLD are listed.

THRESHOLD was chosen from measured distributions (README, "Dataset report"): on 1,000 generated
tracks of 30 s (no copies) the highest nearest cross-split similarity was far below it, and copies
re-encoded to OGG Vorbis and FLAC with gains of -6 to +6 dB were far above it.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from analysis.logmel_stats import TrackStats
from analysis.pca import Standardiser
from core.shards import Manifest

THRESHOLD = 0.95


def leak_features(stats: TrackStats) -> np.ndarray:
    """(N, 2 * mels): level-free band means, then band standard deviations, standardised on train."""
    shape = stats.mean - stats.mean.mean(1, keepdims=True)
    x = np.concatenate([shape, stats.std], axis=1)
    train = stats.rows("train")
    return Standardiser.fit(x[train] if train.any() else x)(x)


@dataclass
class NearPairs:
    pairs: list[tuple[int, int, float]]   # (uid a, uid b, similarity), a's split before b's
    nearest: np.ndarray                   # each track's highest similarity to a track of another split
    threshold: float


def near_copies(stats: TrackStats, threshold: float = THRESHOLD, block: int = 1024) -> NearPairs:
    """Cross-split pairs with cosine similarity >= threshold, and every track's nearest cross-split
    similarity (the distribution the threshold is judged against). Blocks of `block` rows keep
    memory at block x N."""
    x = leak_features(stats)
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    splits = stats.split
    nearest = np.full(len(x), -1.0)
    pairs = []
    order = {s: i for i, s in enumerate(("train", "val", "test", "all"))}
    for lo in range(0, len(x), block):
        sim = x[lo:lo + block] @ x.T
        other = splits[lo:lo + block, None] != splits[None, :]
        sim = np.where(other, sim, -1.0)
        nearest[lo:lo + block] = sim.max(1) if sim.shape[1] else -1.0
        for i, j in zip(*np.nonzero(sim >= threshold)):
            a, b = lo + i, j
            if (order.get(splits[a], 9), stats.uid[a]) < (order.get(splits[b], 9), stats.uid[b]):
                pairs.append((int(stats.uid[a]), int(stats.uid[b]), float(sim[i, j])))
    pairs.sort(key=lambda p: -p[2])
    return NearPairs(pairs, nearest, threshold)


def exact_copies(manifest: Manifest) -> list[dict]:
    """Samples in different splits with the same PCM sha256: [{"pcm_sha256", "uids", "splits"}]."""
    by_hash: dict[str, list] = {}
    for s in manifest.samples:
        by_hash.setdefault(s.pcm_sha256, []).append(s)
    return [{"pcm_sha256": h, "uids": [s.uid for s in ss], "splits": [s.split for s in ss]}
            for h, ss in sorted(by_hash.items()) if len({s.split for s in ss}) > 1]
