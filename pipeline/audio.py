"""Decode any supported audio file to mono float32 at the feature sample rate.

Shared by make_shards (offline, once per file) and predict.py, so both see the same samples.
DALI's own resampler aliases (../shared/FACTS.md); we resample here with a windowed-sinc
(Kaiser) filter instead and store audio already at the feature rate.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import soundfile as sf
import torch

# torchaudio's "kaiser_best" settings: > 100 dB stop-band rejection.
_RESAMPLE_KW = dict(lowpass_filter_width=64, rolloff=0.9475937167399596,
                    resampling_method="sinc_interp_kaiser", beta=14.769656459379492)
_BLOCK_FRAMES = 1 << 18  # read long files in blocks: only the mono signal is ever whole in memory
SILENCE_PEAK = 1.0 / 32768  # below one 16-bit step everywhere: digital silence


class AudioError(Exception):
    """A file that cannot be used, with a stable reason code for the manifest."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass
class Decoded:
    samples: np.ndarray      # float32 mono in [-1, 1] at target_rate
    source_rate: int
    channels: int
    source_format: str       # e.g. "WAV/PCM_24", detected from content, not the file name
    source_frames: int       # frames in the file (before any truncation to max_seconds)


def resample(x: np.ndarray, orig_rate: int, new_rate: int) -> np.ndarray:
    """Band-limited resampling of a 1-D float signal (anti-aliased)."""
    if orig_rate == new_rate:
        return x.astype(np.float32, copy=False)
    import torchaudio.functional as AF  # imported lazily: make_shards workers import it once each
    y = AF.resample(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)),
                    orig_rate, new_rate, **_RESAMPLE_KW)
    return y.numpy()


def decode(path: str, target_rate: int, max_seconds: float | None = None) -> Decoded:
    """Decode, downmix to mono and resample. Raises AudioError with a reason code on bad input."""
    try:
        size = os.path.getsize(path)
    except OSError as e:
        raise AudioError("unreadable", f"cannot read file: {e.strerror or e}") from None
    if size == 0:
        raise AudioError("empty_file", "file is empty (0 bytes)")
    try:
        f = sf.SoundFile(path)
    except sf.LibsndfileError as e:
        msg = str(e).split(": ", 1)[-1] if ": " in str(e) else str(e)
        raise AudioError("not_audio", f"not a readable audio file ({msg.strip()})") from None
    except OSError as e:
        raise AudioError("unreadable", f"cannot read file: {e}") from None
    with f:
        rate, channels, frames = f.samplerate, f.channels, f.frames
        fmt = f"{f.format}/{f.subtype}"
        if rate <= 0 or channels <= 0:
            raise AudioError("not_audio", f"invalid header (rate {rate}, channels {channels})")
        limit = frames if max_seconds is None else min(frames, int(max_seconds * rate))
        blocks = []
        got = 0
        try:
            while got < limit:
                block = f.read(min(_BLOCK_FRAMES, limit - got), dtype="float32", always_2d=True)
                if len(block) == 0:
                    break
                blocks.append(block.mean(axis=1, dtype=np.float32))
                got += len(block)
        except (sf.LibsndfileError, RuntimeError) as e:
            raise AudioError("decode_error", f"decoding failed after {got} frames: {e}") from None
    mono = np.concatenate(blocks) if blocks else np.zeros(0, np.float32)
    if mono.size == 0:
        raise AudioError("zero_samples", "file holds no audio samples")
    if not np.isfinite(mono).all():
        raise AudioError("non_finite", "audio contains NaN or infinite samples")
    if np.abs(mono).max() < SILENCE_PEAK:
        raise AudioError("silent", "audio is digital silence")
    out = np.clip(resample(mono, rate, target_rate), -1.0, 1.0)
    return Decoded(out, rate, channels, fmt, frames)


def to_pcm16(x: np.ndarray) -> np.ndarray:
    return np.round(np.clip(x, -1.0, 1.0) * 32767.0).astype(np.int16)
