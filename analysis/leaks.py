"""The leak check: tracks in different splits that are the same recording.

Two kinds:
- exact copies: the same decoded PCM (the manifest's pcm_sha256) in two splits. make_shards keeps
  one copy of identical audio (its "duplicates" groups list what it dropped), so these appear only
  in folders built otherwise; both are reported.
- near copies (re-encoded, re-levelled, re-edited): two stages.
  1. Statistics: each track's level-free band profile (every band's mean dB relative to its loudest
     band, floored FLOOR_DB below it, where lossy codecs drop what is masked), standardised on the
     training split. Its CANDIDATES most similar tracks (cosine) in each other split are candidates.
  2. Time: a candidate pair is a near copy when their loudness envelopes (how loudness changes
     over time: analysis.logmel_stats.loudness_envelope) correlate at >= THRESHOLD at some lag
     within MAX_LAG_SECONDS (a copy may start a little earlier or later).
  Why both: on generated collections the statistics of two different tracks of one class come as
  close as a copy's (nearest cross-split cosine up to 0.9996 without copies, OGG copies from 0.925),
  so statistics alone cannot decide; they only pick whom to compare in time, where two different
  performances do not line up and a copy does.

THRESHOLD was chosen from measured distributions (README, "Dataset report"; bench/leak_threshold.py):
on 1,000 generated tracks of 30 s without copies, the highest envelope correlation among all
candidates was 0.923 (99th percentile of the per-track highest 0.889); 40 copies re-encoded to OGG
Vorbis and FLAC with gains of -6..+6 dB were all candidates and correlated with their originals
at 0.980 to 1.000 (median 0.9994). 0.95 lies about midway between the two.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from analysis.logmel_stats import ENVELOPE_POOL, TrackStats
from analysis.pca import Standardiser
from core.shards import Manifest
from core.spec import FeatureSpec

THRESHOLD = 0.95         # envelope correlation of a near copy
CANDIDATES = 10          # per track and other split: the most similar tracks by statistics, compared in time
FLOOR_DB = 30.0          # band levels below the track's loudest band minus this are floored
MAX_LAG_SECONDS = 1.0    # a copy may start this much earlier or later (codec delay, a trimmed start)
SPLIT_ORDER = {s: i for i, s in enumerate(("train", "val", "test", "all"))}


def leak_features(stats: TrackStats) -> np.ndarray:
    """(N, mels): each band's mean dB relative to the track's loudest band, floored at -FLOOR_DB
    (a gain change and what a codec drops below it leave it alone), standardised on train."""
    top = stats.mean.max(1, keepdims=True)
    x = np.maximum(stats.mean, top - FLOOR_DB) - top
    train = stats.rows("train")
    return Standardiser.fit(x[train] if train.any() else x)(x)


def lag_correlations(a: np.ndarray, b: np.ndarray, max_lag: int) -> tuple[np.ndarray, np.ndarray]:
    """(lags, Pearson correlation of a and b shifted by each lag over their overlap) for the lags
    within +-max_lag steps whose overlap is at least 3/4 of the shorter series."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    if len(a) < 3 or len(b) < 3:
        return np.zeros(0, int), np.zeros(0)
    n = 1 << int(np.ceil(np.log2(len(a) + len(b))))
    c = np.fft.irfft(np.fft.rfft(a, n) * np.conj(np.fft.rfft(b, n)), n)  # c[l] = sum_t a[t + l] b[t]
    lags = np.arange(-min(max_lag, len(b) - 1), min(max_lag, len(a) - 1) + 1)
    a0, b0 = np.maximum(lags, 0), np.maximum(-lags, 0)        # overlap: a[a0:a0+m] with b[b0:b0+m]
    m = np.minimum(len(a) - a0, len(b) - b0)
    keep = m >= 0.75 * min(len(a), len(b))
    lags, a0, b0, m = lags[keep], a0[keep], b0[keep], m[keep]
    ca, ca2 = np.concatenate([[0], np.cumsum(a)]), np.concatenate([[0], np.cumsum(a * a)])
    cb, cb2 = np.concatenate([[0], np.cumsum(b)]), np.concatenate([[0], np.cumsum(b * b)])
    sa, sb = ca[a0 + m] - ca[a0], cb[b0 + m] - cb[b0]
    va = ca2[a0 + m] - ca2[a0] - sa * sa / m
    vb = cb2[b0 + m] - cb2[b0] - sb * sb / m
    ok = (va > 1e-12) & (vb > 1e-12)
    r = np.where(ok, (c[lags % n] - sa * sb / m) / np.sqrt(np.where(ok, va * vb, 1.0)), 0.0)
    return lags, r


def envelope_similarity(a: np.ndarray, b: np.ndarray, max_lag: int) -> float:
    """Two tracks' band-group envelopes (groups, steps): the highest, over lags within +-max_lag steps,
    of the mean over groups of their correlation at that lag. -1 when they cannot be compared."""
    if a.shape[1] < 3 or b.shape[1] < 3:
        return -1.0
    per_group = [lag_correlations(ga, gb, max_lag)[1] for ga, gb in zip(a, b)]  # the same lags for every group
    return float(np.mean(per_group, axis=0).max()) if len(per_group[0]) else -1.0


@dataclass
class NearPairs:
    pairs: list[tuple[int, int, float, float]]  # (uid a, uid b, envelope correlation, statistics cosine); a's split first
    nearest: np.ndarray                         # each track's highest envelope correlation among its candidates
    threshold: float


def candidate_pairs(stats: TrackStats, k: int = CANDIDATES, block: int = 1024) -> dict[tuple[int, int], float]:
    """{(row a, row b): statistics cosine} of every track and its k most similar tracks in each other split."""
    x = leak_features(stats)
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    out: dict[tuple[int, int], float] = {}
    for split in np.unique(stats.split):
        others = np.flatnonzero(stats.split != split)
        mine = np.flatnonzero(stats.split == split)
        if not len(others):
            continue
        kk = min(k, len(others))
        for lo in range(0, len(mine), block):
            rows = mine[lo:lo + block]
            sim = x[rows] @ x[others].T
            top = np.argpartition(-sim, kk - 1, axis=1)[:, :kk]
            for n, cols in enumerate(top):
                r = rows[n]
                for c in cols:
                    out[(min(r, others[c]), max(r, others[c]))] = float(sim[n, c])
    return out


def near_copies(stats: TrackStats, spec: FeatureSpec, threshold: float = THRESHOLD, k: int = CANDIDATES) -> NearPairs:
    """Cross-split near copies (module docstring) and each track's highest candidate correlation."""
    if stats.envelope is None:
        raise ValueError("near_copies needs the tracks' loudness envelopes (analysis.logmel_stats.collect)")
    max_lag = int(round(MAX_LAG_SECONDS * spec.sample_rate / (ENVELOPE_POOL * spec.hop_length)))
    nearest = np.full(len(stats.uid), -1.0)
    pairs = []
    for (i, j), cos in sorted(candidate_pairs(stats, k).items()):
        r = envelope_similarity(stats.envelope[i], stats.envelope[j], max_lag)
        nearest[i], nearest[j] = max(nearest[i], r), max(nearest[j], r)
        if r >= threshold:
            a, b = sorted((i, j), key=lambda t: (SPLIT_ORDER.get(stats.split[t], 9), stats.uid[t]))
            pairs.append((int(stats.uid[a]), int(stats.uid[b]), r, cos))
    pairs.sort(key=lambda p: -p[2])
    return NearPairs(pairs, nearest, threshold)


def exact_copies(manifest: Manifest) -> list[dict]:
    """Samples in different splits with the same PCM sha256: [{"pcm_sha256", "uids", "splits"}]."""
    by_hash: dict[str, list] = {}
    for s in manifest.samples:
        by_hash.setdefault(s.pcm_sha256, []).append(s)
    return [{"pcm_sha256": h, "uids": [s.uid for s in ss], "splits": [s.split for s in ss]}
            for h, ss in sorted(by_hash.items()) if len({s.split for s in ss}) > 1]
