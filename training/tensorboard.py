"""TensorBoard event files in the run folder: `tensorboard --logdir runs` follows a run live.

Rank 0 writes, once per epoch (global step = epoch), every figure of metrics.json's history entry
and flushes at once; the other ranks hold a writer that does nothing. Tags (SCALARS): loss/,
accuracy/, lr, throughput/, at the end the test split's figures (TEST, at the last epoch's step),
and for remote shards storage/ (the job's totals and storage/rank<N>/
per rank: MB fetched, MB/s, cache hit rate, retries, evictions).

A resumed run continues the same curves: where the folder already holds event files, its writer opens
with purge_step = the first epoch it will write, so TensorBoard's readers drop whatever an earlier
attempt logged from that epoch on (an epoch logged just before a kill, or repeated after a fallback
to prev.pt; a run started over in the same folder purges from epoch 1) instead of drawing it twice.
A folder with a history but no event files (trained before this existed, or with --no-tensorboard)
gets that history written first.
"""
from __future__ import annotations

import glob
import os
import sys

from training.distributed import DistEnv

# tag -> the history entry's key (train.py end_epoch)
SCALARS = {
    "loss/train": "train_loss",
    "loss/val": "val_loss",
    "accuracy/train": "train_acc",
    "accuracy/val_tracks": "val_track_acc",
    "accuracy/val_windows": "val_segment_acc",
    "loss/val_raw": "val_loss_raw",                  # --compare-raw: the raw weights beside --ema's average
    "accuracy/val_tracks_raw": "val_track_acc_raw",
    "accuracy/val_windows_raw": "val_segment_acc_raw",
    "lr": "lr",
    "throughput/samples_per_s": "samples_per_s",
    "throughput/data_wait": "data_wait",
    "throughput/epoch_seconds": "epoch_seconds",
}
# tag -> (metrics.json's test entry, its key): the best checkpoint's test figures, at the last epoch's step
TEST = {
    "accuracy/test_tracks": ("test", "track_acc"),
    "accuracy/test_windows": ("test", "segment_acc"),
    "loss/test": ("test", "loss"),
    "accuracy/test_tracks_raw": ("test_raw", "track_acc"),   # --compare-raw
    "accuracy/test_windows_raw": ("test_raw", "segment_acc"),
    "loss/test_raw": ("test_raw", "loss"),
}
# storage/<tag> -> key of the history's "storage" entry (sums over ranks) and of each of its "ranks"
STORAGE = {"mb_fetched": "bytes_fetched", "retries": "retries", "evictions": "evictions"}
STORAGE_RANK = {"mb_fetched": "bytes_fetched", "fetch_mb_s": "fetch_mb_s", "hit_rate": "hit_rate",
                "retries": "retries", "evictions": "evictions"}
EVENTS = "events.out.tfevents.*"  # the writer's file names


def scalars(h: dict) -> dict[str, float]:
    """One history entry as {tag: value}; bytes as MB, a rank without cache lookups (hit rate None) left out."""
    out = {tag: float(h[key]) for tag, key in SCALARS.items() if h.get(key) is not None}
    for raw in ("", "_raw"):  # an ensemble: each member alone (with --compare-raw, the raw weights' too)
        for i, v in enumerate(h.get(f"val_track_acc{raw}_members") or []):
            out[f"accuracy/val_tracks{raw}_member{i + 1}"] = float(v)
    traffic = h.get("storage")
    if traffic:
        for tag, key in STORAGE.items():
            out[f"storage/{tag}"] = _mb(key, traffic[key])
        for i, r in enumerate(traffic["ranks"]):
            out.update({f"storage/rank{i}/{tag}": _mb(key, r[key]) for tag, key in STORAGE_RANK.items()
                        if r.get(key) is not None})
    return out


def _mb(key: str, v: float) -> float:
    return v / 1e6 if key == "bytes_fetched" else float(v)


class Board:
    """Rank 0's event writer for one run folder (a no-op on the other ranks or when disabled)."""

    def __init__(self, run_dir: str, env: DistEnv, *, first_epoch: int, history: list[dict], enabled: bool = True):
        """first_epoch: the epoch this session logs first (its purge step); history: the epochs before it."""
        self.writer = None
        if not (enabled and env.is_main):
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as e:  # the GPU images lack it; training goes on without event files
            print(f"warning: no TensorBoard event files: {e} (pip install tensorboard, or pass --no-tensorboard)",
                  file=sys.stderr)
            return
        earlier = bool(glob.glob(os.path.join(run_dir, EVENTS)))
        self.writer = SummaryWriter(run_dir, purge_step=first_epoch if earlier else None)
        for h in [] if earlier else history:
            self._write(h)
        self.writer.flush()

    def epoch(self, h: dict) -> None:
        """Log one history entry at step h["epoch"] and flush, so a live TensorBoard shows it."""
        if self.writer is not None:
            self._write(h)
            self.writer.flush()

    def _write(self, h: dict) -> None:
        for tag, v in scalars(h).items():
            self.writer.add_scalar(tag, v, h["epoch"])

    def test(self, metrics: dict, step: int) -> None:
        """The test split's figures (metrics.json's "test", and "test_raw" with --compare-raw) at `step`."""
        if self.writer is not None:
            for tag, (entry, key) in TEST.items():
                if key in metrics.get(entry, {}):
                    self.writer.add_scalar(tag, float(metrics[entry][key]), step)
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
