"""Cut a whole track's log-mel into evenly spaced model windows that cover all of it, and run a model
over them in batches.

Used by evaluation (track-level accuracy), predict.py and the collection mode, so all judge a track
the same way.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from core.spec import FeatureSpec


def window_starts(valid_frames: int, clip_frames: int, hop_frames: int | None = None) -> list[int]:
    """Start frames of windows covering [0, valid_frames); a short track gets one window at 0."""
    if valid_frames <= clip_frames:
        return [0]
    hop = hop_frames or clip_frames
    k = math.ceil((valid_frames - clip_frames) / hop) + 1
    last = valid_frames - clip_frames
    return [round(i * last / (k - 1)) for i in range(k)]


def cut_windows(feats: torch.Tensor, valid_frames: int, clip_frames: int, pad_value: float,
                hop_frames: int | None = None) -> torch.Tensor:
    """(C, mels, frames) -> (K, C, mels, clip_frames).

    A track shorter than a window is padded with `pad_value` (FeatureSpec.floor_value, what
    zero-padded audio gives), as the training crop pads it.
    """
    if feats.shape[-1] < clip_frames:
        feats = torch.nn.functional.pad(feats, (0, clip_frames - feats.shape[-1]), value=pad_value)
    starts = window_starts(valid_frames, clip_frames, hop_frames)
    return torch.stack([feats[..., s:s + clip_frames] for s in starts])


def window_logits(model, windows: torch.Tensor, batch: int, device: torch.device | str | None = None) -> torch.Tensor:
    """(K, C, mels, clip) windows -> (K, classes) float logits, `batch` windows per model call (each
    moved to `device` first, if given: a long song's windows need not fit there at once)."""
    return torch.cat([model(windows[j:j + batch] if device is None else windows[j:j + batch].to(device)).float()
                      for j in range(0, len(windows), batch)])


def track_logits(model, feats: torch.Tensor, n_samples: torch.Tensor, spec: "FeatureSpec",
                 max_windows: int = 256, hop_frames: int | None = None) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """(B, 1, mels, frames) whole tracks -> (B, classes) mean window logits, and each track's window logits.
    hop_frames: between window starts (default: a window, the product's way; bench.eval_windows tries less)."""
    windows, counts = [], []
    for i in range(feats.shape[0]):
        valid = min(spec.valid_frames(int(n_samples[i])), feats.shape[-1])
        w = cut_windows(feats[i], valid, spec.clip_frames, spec.floor_value, hop_frames)
        windows.append(w)
        counts.append(len(w))
    logits = window_logits(model, torch.cat(windows), max_windows)
    per_track = list(torch.split(logits, counts))
    return torch.stack([t.mean(0) for t in per_track]), per_track
