"""Per-track log-mel statistics of a shard folder, computed as training computes its features.

The DALI evaluation graph (loading.loader.DaliLoader, train=False: whole tracks in order, the
FeatureSpec's normalised log-mel) reads every split of a folder, local or remote (through the node
cache, as train.py reads it). For each track: the mean and the standard deviation of every mel
band over the track's valid frames, in dB. Alongside, in the same pass: per class the mean log-mel
of the first `view_seconds` of its tracks, and one example track's log-mel.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from core.shards import SPLITS, Manifest
from core.spec import FeatureSpec


ENVELOPE_POOL = 2          # frames averaged per envelope step (hop 512 at 22,050 Hz: about 21.5 steps/s)
ENVELOPE_SECONDS = 60.0    # the envelope keeps a track's first minute (about 20 KB a track)
ENVELOPE_BANDS = 4         # groups of mel bands, each with its own envelope


@dataclass
class TrackStats:
    """One row per track: `mean` and `std` (N, mels) in dB; `label` indexes the manifest's classes;
    `envelope` (optional) each track's loudness envelope (loudness_envelope)."""
    uid: np.ndarray
    label: np.ndarray
    split: np.ndarray  # split names (str)
    mean: np.ndarray
    std: np.ndarray
    envelope: list | None = None

    @property
    def features(self) -> np.ndarray:
        """(N, 2 * mels): every band's mean, then every band's standard deviation."""
        return np.concatenate([self.mean, self.std], axis=1)

    def rows(self, split: str) -> np.ndarray:
        return self.split == split

    def take(self, sel: np.ndarray) -> "TrackStats":
        env = None if self.envelope is None else [self.envelope[i] for i in np.arange(len(self.uid))[sel]]
        return TrackStats(self.uid[sel], self.label[sel], self.split[sel], self.mean[sel], self.std[sel], env)


@dataclass
class ClassViews:
    """Per class: the mean log-mel (mels, frames) in dB of its tracks' first seconds, and one example."""
    mean_logmel: dict[str, np.ndarray] = field(default_factory=dict)
    example_uid: dict[str, int] = field(default_factory=dict)
    example_logmel: dict[str, np.ndarray] = field(default_factory=dict)


def band_stats(x: torch.Tensor, valid: int, spec: FeatureSpec) -> tuple[np.ndarray, np.ndarray]:
    """(mean, std) of each mel band over the first `valid` frames of a normalised (mels, frames) log-mel, in dB."""
    db = spec.denormalise(x[:, :max(1, valid)].double())
    return db.mean(1).numpy(), db.std(1, unbiased=False).numpy()


def loudness_envelope(x: torch.Tensor, valid: int, spec: FeatureSpec) -> np.ndarray:
    """How a track's loudness changes over time in ENVELOPE_BANDS groups of mel bands, the same for a
    re-encoded or re-levelled copy: (ENVELOPE_BANDS, steps) float32, at most ENVELOPE_SECONDS long.

    Per group and frame, the dB of the group's summed mel power (its loud bands, which lossy codecs
    keep, dominate it), averaged over ENVELOPE_POOL frames, differenced (a gain change, a constant
    offset, drops out) and scaled to zero mean and unit variance. Several groups, because two
    different pieces with the same tempo and drum pattern share the low group's envelope but not
    the others'."""
    keep = min(valid, int(ENVELOPE_SECONDS * spec.sample_rate / spec.hop_length))
    n = keep // ENVELOPE_POOL
    if n < 3:
        return np.zeros((ENVELOPE_BANDS, 0), np.float32)
    power = torch.pow(10.0, spec.denormalise(x[:, :n * ENVELOPE_POOL].double()) / 10.0)
    groups = torch.stack([g.sum(0) for g in torch.tensor_split(power, ENVELOPE_BANDS, dim=0)])
    loud = 10.0 * torch.log10(groups.clamp_min(spec.amin))
    e = np.diff(loud.view(ENVELOPE_BANDS, n, ENVELOPE_POOL).mean(2).numpy(), axis=1)
    sd = e.std(1, keepdims=True)
    return np.where(sd > 1e-9, (e - e.mean(1, keepdims=True)) / np.maximum(sd, 1e-9), 0.0).astype(np.float32)


def example_uids(manifest: Manifest) -> dict[str, int]:
    """One example per class: its lowest-uid training track (any split when the class has none in train)."""
    best: dict[str, tuple[int, int]] = {}
    for s in manifest.samples:
        rank = (SPLITS.index(s.split) if s.split in SPLITS else len(SPLITS), s.uid)
        if s.label is not None and (s.label not in best or rank < best[s.label]):
            best[s.label] = rank
    return {c: best[c][1] for c in manifest.classes if c in best}


def collect(shard_dir: str, manifest: Manifest, *, batch_size: int = 8, num_threads: int = 2,
            view_seconds: float = 10.0, example_seconds: float = 30.0, cache_dir: str | None = None,
            allow_unverified: bool = False, progress: Callable[[int], None] | None = None,
            device: torch.device | None = None, log=print) -> tuple[TrackStats, ClassViews]:
    """Statistics of every track of every split of a labeled folder, and the class views.

    `progress(n)` is called after each batch with the tracks it held (a bar's update). `device`:
    where the graph computes the log-mels (default: the first GPU when there is one, else the CPU)."""
    from loading.loader import DaliLoader  # DALI loads here, not when the module is imported

    if device is None:
        device = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")

    spec = manifest.spec
    classes = manifest.classes
    view = int(round(view_seconds * spec.sample_rate / spec.hop_length))
    example_frames = int(round(example_seconds * spec.sample_rate / spec.hop_length))
    examples = example_uids(manifest)
    wanted = {u: c for c, u in examples.items()}
    sums = np.zeros((len(classes), spec.n_mels, view))
    counts = np.zeros((len(classes), view))
    views = ClassViews(example_uid=examples)
    rows: dict[str, list] = {"uid": [], "label": [], "split": [], "mean": [], "std": [], "envelope": []}
    for split in manifest.split_names:
        if not manifest.splits[split].count:
            continue
        loader = DaliLoader(shard_dir, split, spec, batch_size, train=False, manifest=manifest,
                            device=device, num_threads=num_threads, cache_dir=cache_dir, allow_unverified=allow_unverified, log=log)
        for b in loader:
            keep = b.counted.nonzero().view(-1).tolist()
            for i in keep:
                valid = min(spec.valid_frames(int(b.n_samples[i])), b.x.shape[-1])
                x = b.x[i, 0].cpu()
                mean, std = band_stats(x, valid, spec)
                label, uid = int(b.y[i]), int(b.uid[i])
                rows["uid"].append(uid)
                rows["label"].append(label)
                rows["split"].append(split)
                rows["mean"].append(mean)
                rows["std"].append(std)
                rows["envelope"].append(loudness_envelope(x, valid, spec))
                n = min(valid, view)
                sums[label, :, :n] += spec.denormalise(x[:, :n].double()).numpy()
                counts[label, :n] += 1
                if uid in wanted:
                    views.example_logmel[wanted[uid]] = spec.denormalise(x[:, :min(valid, example_frames)]).numpy()
            if progress is not None:
                progress(len(keep))
    for i, c in enumerate(classes):
        cols = counts[i] > 0
        if cols.any():
            views.mean_logmel[c] = sums[i][:, cols] / counts[i][cols]
    stats = TrackStats(np.array(rows["uid"], dtype=np.int64), np.array(rows["label"], dtype=np.int64),
                       np.array(rows["split"], dtype=object),
                       np.array(rows["mean"]).reshape(-1, spec.n_mels), np.array(rows["std"]).reshape(-1, spec.n_mels),
                       rows["envelope"])
    order = np.argsort(stats.uid, kind="stable")  # uid order: the same rows however the splits were read
    return stats.take(order), views
