"""Decode any supported audio file to mono float32 at the feature sample rate.

Shared by make_shards (offline, once per file) and predict.py, so both see the same samples.
DALI's own resampler aliases (README, "Feature parity"); we resample here with a windowed-sinc
(Kaiser) filter instead and store audio already at the feature rate.

Truncated files (a WAV whose header promises more frames than the file holds, e.g. an
interrupted copy) are decoded as far as they go and reported in `Decoded.warnings`
("truncated: header says X frames, file holds Y"); callers decide whether the rest suffices.
libsndfile silently shrinks its frame count to what is present, so the WAV header's data size
is read directly (`wav_header_frames`).

`validate` is the one acceptance check after decoding, shared by make_shards (a failure is a
manifest reject) and predict.py (a failure is refused, unless --allow-short): what training
would not have seen, predict does not silently classify.
"""
from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field

import numpy as np
import soundfile as sf

# torchaudio's "kaiser_best" settings: > 100 dB stop-band rejection.
_RESAMPLE_KW = dict(lowpass_filter_width=64, rolloff=0.9475937167399596,
                    resampling_method="sinc_interp_kaiser", beta=14.769656459379492)
_BLOCK_BYTES = 64 << 20  # read long files in blocks of at most this much: only the mono signal is ever whole
SILENCE_PEAK = 1.0 / 32768  # below one 16-bit step everywhere: digital silence
MIN_SECONDS = 1.0  # the default --min-seconds of make_shards and of predict.py: the default tools agree
MAX_SECONDS = 600.0  # the default --max-seconds of both: longer files are clipped (and say so)
# Bounds on what one decode may hold, whatever a header declares (a FLAC of a constant compresses
# 10,000:1 and may declare any rate): sources above MAX_SOURCE_RATE are refused before reading, and
# at most MAX_SOURCE_FRAMES frames are read or made by resampling (600 s at 192 kHz; mono float32
# ~460 MB, ~1.2 GB with the resampler's working memory), the rest clipped.
MAX_SOURCE_RATE = 384_000
MAX_SOURCE_FRAMES = 600 * 192_000


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
    warnings: list[str] = field(default_factory=list)  # usable but suspect, e.g. truncated
    sample_rate: int = 0     # of `samples` (the target rate)
    clipped: bool = False    # only the first max_seconds (or MAX_SOURCE_FRAMES) were read

    @property
    def seconds(self) -> float:
        return len(self.samples) / self.sample_rate


def wav_header_frames(path: str) -> tuple[int, int] | None:
    """(frames the RIFF/RF64 header declares, frames the file's bytes can hold), or None.

    None when the file is not a little-endian WAV or its header gives no usable size (streaming
    writers put 0 or 0xFFFFFFFF there). Reads only the chunk headers, never the audio.
    """
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(12)
            if len(head) < 12 or head[8:12] != b"WAVE" or head[:4] not in (b"RIFF", b"RF64"):
                return None
            block_align, ds64_data = 0, None
            while True:
                hdr = f.read(8)
                if len(hdr) < 8:
                    return None
                cid, csize = hdr[:4], struct.unpack("<I", hdr[4:])[0]
                start = f.tell()
                if cid == b"fmt ":
                    fmt = f.read(16)
                    if len(fmt) < 16:
                        return None
                    block_align = struct.unpack("<H", fmt[12:14])[0]
                elif cid == b"ds64":  # RF64: the real data size lives here
                    ds = f.read(16)
                    if len(ds) < 16:
                        return None
                    ds64_data = struct.unpack("<Q", ds[8:16])[0]
                elif cid == b"data":
                    if ds64_data is not None and csize == 0xFFFFFFFF:
                        csize = ds64_data
                    if block_align <= 0 or csize in (0, 0xFFFFFFFF):
                        return None
                    return csize // block_align, max(0, size - start) // block_align
                f.seek(start + csize + (csize & 1))  # chunks are padded to even sizes
    except (OSError, struct.error):
        return None


def resample(x: np.ndarray, orig_rate: int, new_rate: int) -> np.ndarray:
    """Band-limited resampling of a 1-D float signal (anti-aliased)."""
    if orig_rate == new_rate:
        return x.astype(np.float32, copy=False)
    # imported lazily: collections already at the feature rate (GTZAN) never pay torch's start-up
    import torch
    import torchaudio.functional as AF
    y = AF.resample(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)),
                    orig_rate, new_rate, **_RESAMPLE_KW)
    return y.numpy()


def decode(path: str, target_rate: int, max_seconds: float | None = None) -> Decoded:
    """Decode, downmix to mono and resample. Raises AudioError with a reason code on bad input.

    Reads at most `max_seconds` and at most MAX_SOURCE_FRAMES frames (`Decoded.clipped` says so);
    memory is bounded by those, whatever the file declares."""
    try:
        size = os.path.getsize(path)
    except OSError as e:
        raise AudioError("unreadable", f"cannot read file: {e.strerror or e}") from None
    if size == 0:
        raise AudioError("empty_file", "file is empty (0 bytes)")
    try:
        f = sf.SoundFile(os.fsencode(path))  # bytes: a name that is not UTF-8 opens too
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
        if rate > MAX_SOURCE_RATE:
            raise AudioError("unsupported_rate", f"sample rate {rate} Hz is above the {MAX_SOURCE_RATE} Hz supported")
        # MAX_SOURCE_FRAMES bounds both what is read and what the resampler makes of it
        cap = min(MAX_SOURCE_FRAMES, MAX_SOURCE_FRAMES * rate // target_rate)
        limit = min(frames, cap, cap if max_seconds is None else int(max_seconds * rate))
        mono = np.empty(limit, np.float32)  # bounded by the caps, not by what the header claims
        block_frames = max(1, _BLOCK_BYTES // (4 * channels))  # float32 frames of all channels
        got = 0
        try:
            while got < limit:
                block = f.read(min(block_frames, limit - got), dtype="float32", always_2d=True)
                if len(block) == 0:
                    break
                mono[got:got + len(block)] = block.mean(axis=1, dtype=np.float32)
                got += len(block)
        except (sf.LibsndfileError, RuntimeError) as e:
            raise AudioError("decode_error", f"decoding failed after {got} frames: {e}") from None
    warnings = []
    # only where block_align is one frame (not e.g. ADPCM, where it is a block of many frames)
    container, subtype = fmt.split("/", 1)
    pcm_like = (container in ("WAV", "WAVEX", "RF64")
                and subtype.startswith(("PCM", "FLOAT", "DOUBLE", "ULAW", "ALAW")))
    header = wav_header_frames(path) if pcm_like else None
    if header and header[0] > max(header[1], frames):
        warnings.append(f"truncated: header says {header[0]} frames, file holds {frames}")
    elif got < limit:  # any format: the decoder ran out before the length it announced
        warnings.append(f"truncated: header says {frames} frames, file holds {got}")
    mono = mono[:got]
    if mono.size == 0:
        raise AudioError("zero_samples", "file holds no audio samples")
    if not np.isfinite(mono).all():
        raise AudioError("non_finite", "audio contains NaN or infinite samples")
    if np.abs(mono).max() < SILENCE_PEAK:
        raise AudioError("silent", "audio is digital silence")
    out = np.clip(resample(mono, rate, target_rate), -1.0, 1.0)
    return Decoded(out, rate, channels, fmt, frames, warnings, sample_rate=target_rate, clipped=got == limit < frames)


def validate(d: Decoded, min_seconds: float = MIN_SECONDS, allow_short: bool = False) -> list[str]:
    """Accept a decoded file or raise AudioError; returns the warnings to report with it.

    decode() has already refused what cannot be used at all (empty, not audio, no samples,
    NaN/inf, silent). Here: shorter than `min_seconds` is AudioError("too_short") (naming the
    truncation if the file was cut short), or with `allow_short` one more warning
    ("too short: ..."). The warnings are the decoder's (e.g. "truncated: header says X frames,
    file holds Y") plus that one."""
    if d.seconds >= min_seconds:
        return list(d.warnings)
    short = f"{d.seconds:.2f} s is shorter than --min-seconds {min_seconds:g}"
    if not allow_short:
        why = f" ({d.warnings[0]})" if d.warnings else ""
        raise AudioError("too_short", short + why)
    return [*d.warnings, f"too short: {short}"]


def to_pcm16(x: np.ndarray) -> np.ndarray:
    """Float [-1, 1] to 16-bit PCM, rounded (what make_shards stores).

    Scaled by 32768, the factor soundfile and DALI divide by when they read 16-bit audio back, so
    a stored clip decodes to the samples it came from (within half a step).
    """
    return np.clip(np.round(x * 32768.0), -32768, 32767).astype(np.int16)
