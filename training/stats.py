"""Per-rank training sums and the non-finite-loss watch, kept on the device.

A step must never wait for the GPU: reading a CUDA scalar (`float(t)`, `t.item()`) blocks the host
until every queued kernel has run, so the next batch's kernels cannot be queued behind it. The
epoch sums and the first non-finite step therefore live in device tensors, and the host reads them
only every `--sync-every` steps, before a checkpoint and at the end of the epoch.
"""
from __future__ import annotations

import collections
import contextlib
import os
from dataclasses import dataclass

import torch

from training.distributed import DistEnv, all_reduce_min, all_reduce_sum


@dataclass
class EpochStats:
    """One epoch's training figures, summed over all ranks."""
    loss: float          # weighted mean cross-entropy of the counted samples
    acc: float           # weighted accuracy of the counted samples
    samples: float       # counted samples (each track's crops once per epoch, over all ranks)
    data_wait: float     # fraction of step time spent waiting for the loader
    seconds: float       # wall time of the epoch (mean over ranks)

    @property
    def samples_per_s(self) -> float:
        return self.samples / self.seconds if self.seconds > 0 else 0.0


class RunningSums:
    """Weighted loss, correct and sample counts on the device; data-wait and step seconds on the host."""

    def __init__(self, device: torch.device, saved: list[float] | None = None):
        p = list(saved) if saved else [0.0] * 5
        self.device = device
        self.sums = torch.tensor(p[:3], dtype=torch.float64, device=device)  # loss*n, correct, n
        self.data_wait, self.seconds = p[3], p[4]

    def add(self, per_sample_loss: torch.Tensor, correct: torch.Tensor, weight: torch.Tensor) -> None:
        """Queue the step's weighted sums on the device; no host sync."""
        w = weight.to(per_sample_loss.dtype)
        step = torch.stack([(per_sample_loss.detach() * w).sum(), (correct.to(w.dtype) * w).sum(), w.sum()])
        self.sums += step.double()

    def snapshot(self, extra_seconds: float = 0.0) -> list[float]:
        """Five floats for a mid-epoch checkpoint (a host sync)."""
        return self.sums.tolist() + [self.data_wait, self.seconds + extra_seconds]

    def reduce(self, env: DistEnv) -> EpochStats:
        t = torch.cat([self.sums, torch.tensor([self.data_wait, self.seconds], dtype=torch.float64,
                                               device=self.device)])
        loss_n, correct, n, wait, secs = all_reduce_sum(t, env).tolist()
        n_safe = max(n, 1.0)
        return EpochStats(loss=loss_n / n_safe, acc=correct / n_safe, samples=n,
                          data_wait=wait / secs if secs > 0 else 0.0, seconds=secs / env.world_size)


class NonFiniteWatch:
    """Remembers, on the device, the first step whose loss was NaN or infinite.

    `check()` reads it on every rank at the same steps (a MIN all-reduce, one sync) and raises
    FloatingPointError naming the exact step and this rank's batch at that step, so the report is
    as precise as checking every step. The steps between the bad one and the check have run (their
    updates are discarded with the job: no checkpoint is written after a failed check).
    """
    NONE = 2 ** 62

    def __init__(self, env: DistEnv, uid_to_key: dict[int, str]):
        self.env = env
        self.uid_to_key = uid_to_key
        self.first = torch.full((), self.NONE, dtype=torch.int64, device=env.device)
        self.batches: collections.OrderedDict[int, torch.Tensor] = collections.OrderedDict()

    def note(self, loss: torch.Tensor, step: int, uid: torch.Tensor) -> None:
        bad = ~torch.isfinite(loss.detach())
        self.first = torch.where(bad & (self.first == self.NONE), torch.full_like(self.first, step), self.first)
        self.batches[step] = uid  # uids stay on the host: only read if this step turns out bad

    def check(self, epoch: int) -> None:
        first = int(all_reduce_min(self.first.clone(), self.env).item())
        if first != self.NONE:
            uid = self.batches.get(first)
            keys = [self.uid_to_key.get(int(u), str(int(u))) for u in uid.tolist()] if uid is not None else ["?"]
            raise FloatingPointError(
                f"non-finite loss at epoch {epoch} step {first} (rank {self.env.rank} batch: {', '.join(keys[:8])}"
                f"{'...' if len(keys) > 8 else ''})")
        self.batches.clear()


def no_sync_check(device: torch.device):
    """Test aid: PT_CUDA_SYNC_DEBUG=error (or warn) makes torch raise (warn) on any host-device
    sync inside the block, so a stray `.item()` in the step is caught on a GPU (tests/test_gpu.py)."""
    mode = os.environ.get("PT_CUDA_SYNC_DEBUG")
    if not mode or device.type != "cuda":
        return contextlib.nullcontext()

    @contextlib.contextmanager
    def scoped():
        torch.cuda.set_sync_debug_mode(mode)
        try:
            yield
        finally:
            torch.cuda.set_sync_debug_mode(0)
    return scoped()
