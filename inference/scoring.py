"""From window logits to what a user reads: the ranked genres of a track and its timeline.

One definition for predict.py's single-file mode and the collection mode, so both say the same
thing about the same windows.
"""
from __future__ import annotations

import torch

from core.spec import FeatureSpec


def ranked(classes: list[str], probs: torch.Tensor, digits: int) -> dict:
    """{"genre": the most probable class, "probabilities": {class: p rounded to `digits`}, most probable first}."""
    order = probs.argsort(descending=True).tolist()
    return {"genre": classes[order[0]], "probabilities": {classes[i]: round(float(probs[i]), digits) for i in order}}


def hop_frames(spec: FeatureSpec, hop_seconds: float) -> int:
    """A timeline's hop between windows, in feature frames (at least 1)."""
    return max(1, round(hop_seconds * spec.sample_rate / spec.hop_length))


def timeline(spec: FeatureSpec, starts: list[int], window_probs: torch.Tensor, seconds: float,
             classes: list[str], digits: int) -> list[dict]:
    """One entry per window: its start and end in seconds and its ranked genres. The last window ends
    the song (frame rounding would otherwise leave a few hundredths of a second after it)."""
    frame_s = spec.hop_length / spec.sample_rate
    out = [{"start": round(s * frame_s, 2), "end": round(min(s * frame_s + spec.clip_seconds, seconds), 2),
            **ranked(classes, p, digits)} for s, p in zip(starts, window_probs)]
    out[-1]["end"] = seconds
    return out
