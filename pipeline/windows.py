"""Cut a whole track's log-mel into evenly spaced model windows that cover all of it.

Used by evaluation (track-level accuracy) and by predict.py, so both judge a track the same way.
"""
from __future__ import annotations

import math

import torch


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
