"""Evaluation gathered over all ranks: segment and track accuracy, loss, confusion matrix.

A track is judged by the mean of its windows' logits (features.windows), as predict.py does.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from analysis.logmel_stats import band_stats
from core.spec import FeatureSpec
from features.windows import track_logits
from model import Ensemble
from training.distributed import DistEnv, all_gather_object, all_reduce_sum


@dataclass
class EvalResult:
    loss: float
    track_acc: float
    segment_acc: float
    tracks: int
    confusion: np.ndarray  # (true, predicted) counts
    members: list[float] | None = None  # an ensemble's members' track accuracy alone, from the same pass

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


def plain_module(model: torch.nn.Module) -> torch.nn.Module:
    """The module inside a DDP and/or torch.compile wrapper (whose submodules hooks attach to)."""
    plain = getattr(model, "module", model)      # DDP
    return getattr(plain, "_orig_mod", plain)    # torch.compile


@dataclass
class TrackLog:
    """Per-track results an evaluation pass can keep for the run report, at no extra pass: each
    track's mean window logits, its penultimate-layer embedding (the classifier head's input,
    averaged over its windows) and its log-mel statistics (analysis.logmel_stats.band_stats).
    After evaluate() every rank's rows are gathered in `rows` (uid order)."""
    rows: list[dict] = field(default_factory=list)

    @contextlib.contextmanager
    def capture(self, model: torch.nn.Module):
        """Record the inputs of the model's classifier head (PooledCNN.head) while the block runs."""
        head = getattr(plain_module(model), "head", None)
        self._seen: list[torch.Tensor] = []
        if head is None:
            yield
            return
        handle = head.register_forward_pre_hook(lambda _m, args: self._seen.append(args[0].detach().float().cpu()))
        try:
            yield
        finally:
            handle.remove()

    def add(self, uid: torch.Tensor, y: torch.Tensor, mean_logits: torch.Tensor, per_track: list[torch.Tensor],
            x: torch.Tensor, n_samples: torch.Tensor, spec: FeatureSpec) -> None:
        """One batch's tracks; the head inputs seen since the last call are its windows, in order."""
        emb = torch.cat(self._seen) if self._seen else None
        self._seen.clear()
        counts = [len(t) for t in per_track]
        embs = list(torch.split(emb, counts)) if emb is not None and len(emb) == sum(counts) else [None] * len(counts)
        for i, (u, label) in enumerate(zip(uid.tolist(), y.tolist())):
            valid = min(spec.valid_frames(int(n_samples[i])), x.shape[-1])
            mean, std = band_stats(x[i, 0].float().cpu(), valid, spec)
            self.rows.append({"uid": u, "label": label, "logits": mean_logits[i].float().cpu().numpy(),
                              "embedding": None if embs[i] is None else embs[i].mean(0).numpy(),
                              "mean": mean, "std": std})

    def gather(self, env: DistEnv) -> None:
        self.rows = sorted((r for part in all_gather_object(self.rows, env) for r in part), key=lambda r: r["uid"])


@contextlib.contextmanager
def member_outputs(model: torch.nn.Module):
    """An ensemble's members' outputs (one list per member, a tensor per model call) while the block
    runs, through forward hooks, so the ensemble's own pass also judges each member; None otherwise."""
    plain = plain_module(model)
    if not isinstance(plain, Ensemble):
        yield None
        return
    seen: list[list[torch.Tensor]] = [[] for _ in plain.members]
    handles = [m.register_forward_hook(lambda _m, _args, out, i=i: seen[i].append(out.detach().float()))
               for i, m in enumerate(plain.members)]
    try:
        yield seen
    finally:
        for h in handles:
            h.remove()


@torch.no_grad()
def evaluate(model: torch.nn.Module, loader, spec: FeatureSpec, env: DistEnv, amp, n_classes: int,
             tracks: TrackLog | None = None) -> EvalResult:
    """`tracks`: also keep every track's logits, embedding and log-mel statistics (TrackLog)."""
    model.eval()
    dev = env.device
    conf = torch.zeros(n_classes, n_classes, dtype=torch.float64, device=dev)
    sums = torch.zeros(4, dtype=torch.float64, device=dev)  # loss, tracks, correct segments, segments
    with member_outputs(model) as seen:
        right = torch.zeros(len(seen or []), dtype=torch.float64, device=dev)  # tracks each member got right
        for b in loader:
            keep = b.counted  # on the host: no device sync to select the rows
            if not keep.any():
                continue
            idx = keep.nonzero().view(-1).to(b.x.device)
            x = b.x.index_select(0, idx)
            with amp.autocast(), (tracks.capture(model) if tracks is not None else contextlib.nullcontext()):
                mean_logits, per_track = track_logits(model, x, b.n_samples[keep], spec)
            y = b.y.index_select(0, idx)
            if tracks is not None:
                tracks.add(b.uid[keep], y.cpu(), mean_logits, per_track, x, b.n_samples[keep], spec)
            sums[0] += F.cross_entropy(mean_logits, y, reduction="sum").double()
            sums[1] += len(y)
            for t, yi in zip(per_track, y):
                sums[2] += (t.argmax(1) == yi).sum()
                sums[3] += len(t)
            pred = mean_logits.argmax(1)
            conf.index_put_((y, pred), torch.ones_like(y, dtype=torch.float64), accumulate=True)
            counts = [len(t) for t in per_track]
            for i, outs in enumerate(seen or []):  # each member's windows, in the ensemble's order
                windows = torch.cat(outs)
                outs.clear()
                member = torch.stack([t.mean(0) for t in torch.split(windows, counts)])
                right[i] += (member.argmax(1) == y).sum()
    all_reduce_sum(sums, env)
    all_reduce_sum(conf, env)
    if seen:
        all_reduce_sum(right, env)
    if tracks is not None:
        tracks.gather(env)
    conf_np = conf.cpu().numpy().astype(np.int64)
    n = max(sums[1].item(), 1.0)
    return EvalResult(loss=sums[0].item() / n, track_acc=float(np.trace(conf_np)) / n,
                      segment_acc=sums[2].item() / max(sums[3].item(), 1.0), tracks=int(sums[1].item()),
                      confusion=conf_np, members=[v / n for v in right.tolist()] if seen else None)
