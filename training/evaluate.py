"""Evaluation gathered over all ranks: segment and track accuracy, loss, confusion matrix.

A track is judged by the mean of its windows' logits (features.windows), as predict.py does.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from core.spec import FeatureSpec
from features.windows import track_logits
from training.distributed import DistEnv, all_reduce_sum


@dataclass
class EvalResult:
    loss: float
    track_acc: float
    segment_acc: float
    tracks: int
    confusion: np.ndarray  # (true, predicted) counts

    def per_class(self, classes: list[str]) -> dict[str, dict[str, float]]:
        c = self.confusion.astype(float)
        out = {}
        for i, name in enumerate(classes):
            tp, fp, fn = c[i, i], c[:, i].sum() - c[i, i], c[i, :].sum() - c[i, i]
            p = tp / (tp + fp) if tp + fp else 0.0
            r = tp / (tp + fn) if tp + fn else 0.0
            out[name] = {"precision": p, "recall": r, "f1": 2 * p * r / (p + r) if p + r else 0.0,
                         "support": int(c[i, :].sum())}
        return out


@torch.no_grad()
def evaluate(model: torch.nn.Module, loader, spec: FeatureSpec, env: DistEnv, amp, n_classes: int) -> EvalResult:
    model.eval()
    dev = env.device
    conf = torch.zeros(n_classes, n_classes, dtype=torch.float64, device=dev)
    sums = torch.zeros(4, dtype=torch.float64, device=dev)  # loss, tracks, correct segments, segments
    for b in loader:
        keep = b.counted  # on the host: no device sync to select the rows
        if not keep.any():
            continue
        idx = keep.nonzero().view(-1).to(b.x.device)
        with amp.autocast():
            mean_logits, per_track = track_logits(model, b.x.index_select(0, idx), b.n_samples[keep], spec)
        y = b.y.index_select(0, idx)
        sums[0] += F.cross_entropy(mean_logits, y, reduction="sum").double()
        sums[1] += len(y)
        for t, yi in zip(per_track, y):
            sums[2] += (t.argmax(1) == yi).sum()
            sums[3] += len(t)
        pred = mean_logits.argmax(1)
        conf.index_put_((y, pred), torch.ones_like(y, dtype=torch.float64), accumulate=True)
    all_reduce_sum(sums, env)
    all_reduce_sum(conf, env)
    conf_np = conf.cpu().numpy().astype(np.int64)
    n = max(sums[1].item(), 1.0)
    return EvalResult(loss=sums[0].item() / n, track_acc=float(np.trace(conf_np)) / n,
                      segment_acc=sums[2].item() / max(sums[3].item(), 1.0), tracks=int(sums[1].item()),
                      confusion=conf_np)
