"""A rank's view of one split: the DALI graph wrapped in an iterator of torch batches.

Every rank gets the same number of full batches per epoch, so DDP's collectives never wait on a
rank that ran out of data. The sample stream (loading/stream.py) shares a split by sample count
(rank r reads samples [r*N/W, (r+1)*N/W)), pads the shorter shares by repeating their last
sample and fills the last batch the same way. Those repeats carry weight 0: each sample counts exactly once per epoch.
"""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from storage.cache import CacheStats
from core.shards import Manifest
from core.spec import FeatureSpec
from storage.folder import open_files, read_manifest
from storage.store import StorageError
from loading.stream import SampleStream, rank_share

if TYPE_CHECKING:  # DALI is imported lazily: predict.py and tests that need no DALI never load it
    from core.spec import Augment


@dataclass
class Batch:
    x: torch.Tensor        # (B, 1, mels, frames) float32; training: B = tracks x crops, a track's crops adjacent
    y: torch.Tensor        # (B,) int64 class index
    uid: torch.Tensor      # (B,) int64 sample id (manifest "uid")
    n_samples: torch.Tensor  # (B,) audio length of the track, before cropping/padding
    weight: torch.Tensor   # (B,) 1.0 for a sample's first appearance this epoch, else 0.0 (on x's device)
    counted: torch.Tensor  # (B,) bool on the host: weight > 0, for selecting rows without a device sync


class DaliLoader:
    """`batch_size` counts tracks; with train=True each track yields `crops` rows (see audio_pipeline).

    shard_dir: a folder, or a remote one (s3://, gs://, http(s)://) read through the node cache
    (`cache_dir`, `cache_limit` bytes; storage.cache). shards: read only these tars of the split
    (names, e.g. `all-000003.tar`), in the split's order: predict.py --shards skips the tars a
    resumed job has finished. epoch: the training epoch the first pass is (it seeds the order).
    window: samples shuffled together (loading.stream).
    """

    def __init__(self, shard_dir: str, split: str, spec: FeatureSpec, batch_size: int, *, train: bool,
                 rank: int = 0, world_size: int = 1, device: torch.device = torch.device("cpu"),
                 num_threads: int = 2, seed: int = 0, prefetch: int = 2, state: dict | None = None,
                 augment: "Augment | None" = None, crops: int = 1, crop_from: str | None = None,
                 shards: list[str] | None = None, epoch: int = 0, window: int = 1024,
                 cache_dir: str | None = None, cache_limit: int | None = None, manifest: Manifest | None = None,
                 allow_unverified: bool = False, log=print):
        from nvidia.dali.plugin.pytorch import DALIGenericIterator, LastBatchPolicy

        from features.dali_graph import OUTPUTS, audio_pipeline

        manifest = manifest or read_manifest(shard_dir, allow_unverified=allow_unverified)
        if split not in manifest.splits:
            raise ValueError(f"{shard_dir}: no split '{split}' (it holds {', '.join(manifest.split_names)})")
        names = list(manifest.splits[split].shards)
        if shards is not None:
            keep = set(shards)
            names = [n for n in names if n in keep]
        in_split = [s for s in manifest.samples if s.split == split]
        counts = Counter(s.shard for s in in_split)
        self.split, self.size = split, sum(counts[n] for n in names)
        if not names or not self.size:
            raise ValueError(f"{shard_dir}: split '{split}' has no shards")
        # With fewer samples than ranks, the extra ranks re-read an existing share with weight 0:
        # every rank still steps, each sample still counts once.
        n_shares = min(world_size, self.size)
        self.spare = rank >= n_shares
        self.files = open_files(shard_dir, manifest, cache_dir, cache_limit, log, allow_unverified=allow_unverified)
        share = rank_share(names, [counts[n] for n in names], rank % n_shares, n_shares)
        # each shard's samples in manifest order are its tar's order (core.shards.write_shard)
        durations: dict[str, list[float]] = {}
        for s in in_split:
            durations.setdefault(s.shard, []).append(s.duration)
        rate = manifest.spec.sample_rate
        max_frames = math.ceil((max(max(d) for d in durations.values()) + 1e-3) * rate)
        if state is not None and "epoch0" not in state:
            raise ValueError("a loader state from before the sample stream (loading/stream.py); "
                             "resume from the epoch's end or start the run afresh")
        lengths = None if train else np.array([durations[share.shards[i]][p] for i, p in zip(share.shard, share.pos)])
        self.stream = SampleStream(self.files, share, batch_size, shuffle=train, seed=seed, rank=rank, rate=rate,
                                   max_frames=max_frames, epoch=state["epoch0"] if state else epoch, window=window,
                                   prefetch=prefetch, lengths=lengths)
        on_gpu = device.type == "cuda"
        self.pipe = audio_pipeline(
            source=self.stream, spec=spec, train=train, on_gpu=on_gpu, batch_size=batch_size,
            num_threads=num_threads, device_id=device.index if on_gpu else None, seed=seed + 1000 * rank,
            prefetch_queue_depth=prefetch, enable_checkpointing=True,
            checkpoint=state["dali"] if state else None, augment=augment, crops=crops, crop_from=crop_from)
        self.crops = crops if train else 0
        self.it = DALIGenericIterator([self.pipe], list(OUTPUTS), last_batch_policy=LastBatchPolicy.FILL,
                                      auto_reset=True)
        self.batches = self.stream.batches
        self.device = device
        self._seen: set[int] = set(state["seen"]) if state else set()

    def __len__(self) -> int:
        return self.batches

    def state(self) -> dict:
        """Where this rank's data stream is: DALI's checkpoint (operator RNG, the epoch and batch the
        stream was last asked for), the epoch the stream started at and this epoch's seen ids.

        Passing it back as `state=` to a new loader continues with exactly the next batch.
        """
        return {"dali": self.it.checkpoints()[0], "seen": sorted(self._seen), "epoch0": self.stream.epoch0}

    def traffic(self) -> CacheStats:
        """This rank's shard traffic since the last call (fetched bytes, cache hits, retries)."""
        return self.files.reset_stats()

    def __iter__(self):
        seen = self._seen
        for out in self._batches():
            d = out[0]
            # The reader's outputs (label, uid, length) arrive on the host; only x is on the GPU.
            uid, n = d["uid"].view(-1).cpu(), d["n"].view(-1).cpu()
            weight = torch.zeros(len(uid))
            for i, u in enumerate(uid.tolist()):
                if u not in seen and not self.spare:
                    seen.add(u)
                    weight[i] = 1.0
            y = d["y"].view(-1).long().cpu()
            x = d["x"]
            if self.crops:  # (tracks, crops, mels, frames) -> one row per crop, track fields repeated
                k = self.crops
                x, y, uid, n, weight = (x.flatten(0, 1), y.repeat_interleave(k), uid.repeat_interleave(k),
                                        n.repeat_interleave(k), weight.repeat_interleave(k))
            y_dev, w_dev = to_device(y, weight, device=self.device)
            yield Batch(x.unsqueeze(1), y_dev, uid, n, w_dev, weight > 0)
        seen.clear()  # the epoch is over


    def _batches(self):
        """DALI's batches; a storage failure in the stream surfaces as its own one-line error."""
        try:
            yield from self.it
        except Exception as e:
            if isinstance(self.stream.error, (StorageError, ValueError, OSError)):
                raise self.stream.error from None
            raise e


def to_device(*tensors: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, ...]:
    """Host tensors to `device` without blocking the host: staged in pinned memory, copied
    asynchronously on the current stream (the caching host allocator keeps the staging buffer
    alive until the copy is done). A pageable `.to("cuda")` would wait for the copy instead."""
    if device.type != "cuda":
        return tensors
    return tuple(t.pin_memory().to(device, non_blocking=True) for t in tensors)
