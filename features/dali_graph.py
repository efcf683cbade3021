"""The DALI graph: a rank's sample stream (WebDataset shards) -> decode -> [GPU] -> log-mel of the track -> crops -> normalise.

One graph for CPU and GPU. On a GPU the stages after decoding run on the device (`audio.gpu()`);
without one (device_id=None) the same operators run on the CPU. Audio is decoded to int16 (what
the shards hold) and becomes float only where the features are computed (`pcm_float`): on a GPU
the host converts nothing and copies half the bytes; the numbers are the same either way (an int16
times 2^-15 is exact in float32).

Training crops are windows of the track's log-mel, at frame boundaries, cut one of two ways
that give the same numbers (tests/test_dali_pipeline.py holds them together):
- "features" (the GPU default): one log-mel of the whole track, crops sliced from it. One
  spectrogram + mel bank per track however many crops, so the kernel launches per batch do not
  grow with --crops-per-track; on a GPU the extra frames cost nothing.
- "audio" (the CPU default): each crop's samples plus the STFT's half window of context on each
  side, and an uncentred log-mel of just that. On a CPU computing only the crops' frames is what
  counts: 2.5x (4 crops) to 10x (1 crop) more crops/s on 30 s tracks than "features".
A crop never starts within the STFT's half window of a track's edge (where the centred log-mel
reflects the signal) unless the track is too short to avoid it.
"""
from __future__ import annotations

import ctypes
import functools
import glob
import math
import os

import numpy as np
from nvidia.dali import fn, pipeline_def, types
import nvidia.dali.math as dmath

from core.spec import Augment, FeatureSpec

# The graph's outputs, in order, as the loader names them: features, label, sample id, track length.
OUTPUTS = ("x", "y", "uid", "n")


@functools.cache
def _wheel_lib_dirs() -> tuple[str, ...]:
    """nvidia/*/lib and nvidia/*/*/lib on sys.path (searched once: every GPU pipeline asks)."""
    import sys
    return tuple(d for p in sys.path for d in glob.glob(os.path.join(p, "nvidia", "*", "lib")) +
                 glob.glob(os.path.join(p, "nvidia", "*", "*", "lib")))


def preload_cufft(roots: list[str] | None = None) -> list[str]:
    """Map libcufft into the process (RTLD_GLOBAL) before a GPU spectrogram is built.

    DALI's wheel opens cuFFT only at its first GPU FFT and does not bring it: it works when torch
    (whose CUDA builds map libcufft.so.N) was imported first, and fails with "dlopen libcufft.so
    failed" otherwise. Loaded here from the NVIDIA wheels' lib folders (`roots`; default: every
    nvidia/*/lib and nvidia/*/*/lib on sys.path), else by importing torch. Returns what was loaded."""
    loaded = []
    roots = _wheel_lib_dirs() if roots is None else roots
    for lib in sorted({f for r in roots for f in glob.glob(os.path.join(r, "libcufft.so*"))}):
        try:
            ctypes.CDLL(lib, mode=ctypes.RTLD_GLOBAL)
            loaded.append(lib)
        except OSError:
            pass  # another CUDA major's build: not the one DALI opens
    if not loaded:
        import torch  # noqa: F401 - a CUDA torch maps its libcufft on import
    return loaded


def draw_masks(aug: Augment) -> list:
    """SpecAugment's random (axis, anchors, widths) for one crop (drawn ahead: see audio_pipeline)."""
    return [(axis, fn.random.uniform(range=[0.0, 1.0], shape=[n]), fn.random.uniform(range=[0.0, float(width)], shape=[n]))
            for axis, n, width in (("f", aug.freq_masks, aug.freq_width), ("t", aug.time_masks, aug.time_width)) if n]


def eq_weights(n_mels: int, points: int) -> np.ndarray:
    """(points, n_mels, 1) hat functions: gains at `points` evenly spaced bands (the first and the
    last band among them), linearly interpolated between them, give weights @ gains per band."""
    at = np.linspace(0.0, n_mels - 1, points)
    step = at[1] - at[0]
    return np.maximum(0.0, 1.0 - np.abs(np.arange(n_mels)[None, :] - at[:, None]) / step)[..., None].astype(np.float32)


def eq_curve(gains, n_mels: int, points: int):
    """One crop's equalisation curve in dB, (n_mels, 1), on the host: piecewise linear through the
    drawn `gains` (a DALI node of shape [points]) at evenly spaced bands (eq_weights)."""
    w = eq_weights(n_mels, points)
    return functools.reduce(lambda a, b: a + b, (gains[k] * types.Constant(w[k]) for k in range(points)))


def spec_augment(feats, masks: list):
    """Zero (the normalised mean) random bands of mel bins and of frames, per sample (Park et al. 2019)."""
    for axis, anchor, shape in masks:
        feats = fn.erase(feats, anchor=anchor, shape=shape, axis_names=axis, normalized_anchor=True,
                         normalized_shape=False, fill_value=0.0)
    return feats


def pcm_float(x):
    """16-bit PCM to float in [-1, 1): x / 32768, the scale make_shards stored with (exact)."""
    return fn.cast(x, dtype=types.FLOAT) * (1.0 / 32768.0)


def periodic_hann(n: int) -> list[float]:
    """torch.hann_window / librosa's default (periodic) window; DALI's default is symmetric."""
    return [0.5 - 0.5 * math.cos(2.0 * math.pi * i / n) for i in range(n)]


def mel_db(audio, spec: FeatureSpec, cutoff_db: float, center: bool = True):
    """Power spectrogram -> slaney mel bank -> dB, floored at `cutoff_db`. Layout (mels, frames).

    center=True: frame t is centred on sample t*hop (reflect-padded edges), as librosa/torchaudio.
    center=False: frame t starts at sample t*hop (for crops that carry their own context).
    """
    power = fn.spectrogram(audio, nfft=spec.n_fft, window_length=spec.n_fft, window_step=spec.hop_length,
                           window_fn=periodic_hann(spec.n_fft), center_windows=center, reflect_padding=center,
                           power=2, layout="ft")
    mel = fn.mel_filter_bank(power, sample_rate=spec.sample_rate, nfilter=spec.n_mels, freq_low=spec.f_min,
                             freq_high=spec.f_max, mel_formula=spec.mel_scale, normalize=spec.mel_norm == "slaney")
    return fn.to_decibels(mel, multiplier=10.0, reference=1.0, cutoff_db=cutoff_db)


def log_mel(audio, spec: FeatureSpec):
    """The FeatureSpec's normalised log-mel (features.torch_logmel.LogMel is its torchaudio twin)."""
    return spec.normalise(mel_db(audio, spec, spec.db_floor))


@pipeline_def(enable_conditionals=False)
def audio_pipeline(source, spec: FeatureSpec, train: bool, on_gpu: bool, augment: Augment | None = None,
                   crops: int = 1, crop_from: str | None = None):
    """Outputs OUTPUTS: (features, label, uid, n_samples).

    source: a loading.stream.SampleStream, called per batch with DALI's BatchInfo and returning
    the batch's encoded WAV members, labels and sample ids (shard order, shuffling and fetching
    are its job; DALI's checkpoint records the epoch and batch index it was called with).

    train=True: shuffled; `crops` independent random windows of spec.clip_frames per track, cut
    from the track's log-mel at frame boundaries (floor-padded if the track is short), each with
    its own `augment` draw (random gain, SpecAugment masks, speed); stacked to (crops, mels, frames).
    crop_from: "features" or "audio" (module docstring); default "features" on a GPU, else "audio"
    (always "audio" with speed perturbation, which resamples each crop's samples).
    train=False: in order, the whole track, zero-padded to the longest in the batch; the caller
    cuts it into windows (features.windows) so evaluation covers the whole track.
    """
    if on_gpu:
        preload_cufft()
    wav, label, uid = fn.external_source(  # core/shards.py: WAV bytes, int32 label, int64 uid
        source=source, num_outputs=3, batch=True, batch_info=True, dtype=[types.UINT8, types.INT32, types.INT64],
        ndim=[1, 1, 1], no_copy=True)  # views of the tars' memory maps, kept alive by the stream
    # Shards hold 16-bit PCM already at spec.sample_rate: no resampling here (DALI's aliases).
    audio, _ = fn.decoders.audio(wav, dtype=types.INT16, downmix=True)  # 1-D (the members are mono)
    n = audio.shape(dtype=types.INT32)[0]
    if not train:
        audio = fn.pad(audio, axes=[0], fill_value=0)
        return log_mel(pcm_float(audio.gpu() if on_gpu else audio), spec), label, uid, n
    aug = augment if (augment is not None and augment.active) else None
    crop_from = crop_from or ("features" if on_gpu and not (aug and aug.speed) else "audio")
    if crop_from not in ("features", "audio"):
        raise ValueError(f"crop_from must be 'features' or 'audio', not {crop_from!r}")
    if aug and aug.speed and crop_from != "audio":
        raise ValueError("speed perturbation resamples each crop's audio: it needs crop_from='audio'")
    return training_crops(audio, n, spec, on_gpu, aug, crops, crop_from), label, uid, n


def crop_starts(n, spec: FeatureSpec, extra: int = 0):
    """(lowest start frame, room above it) for a track of n samples: starts in [margin, frames -
    clip - margin] when the track allows (clear of the reflect-padded edges), else [0, frames - clip].
    `extra`: frames a crop may reach beyond clip_frames (a sped-up crop reads more of the track)."""
    margin = -(-(spec.n_fft // 2) // spec.hop_length)  # frames whose window reaches past the track's edge
    frames = 1 + n // spec.hop_length  # spec.valid_frames(n)
    clip = spec.clip_frames + extra
    inner = frames - clip - 2 * margin
    fits = fn.cast(inner >= 0, dtype=types.INT32)
    room = fits * inner + (1 - fits) * dmath.max(frames - clip, 0)
    return fits * margin, fn.cast(room, dtype=types.FLOAT)


def training_crops(audio, n, spec: FeatureSpec, on_gpu: bool, aug: Augment | None, crops: int, crop_from: str):
    """`crops` random windows of the track's log-mel, stacked to (crops, mels, frames)."""
    gain = aug.gain_db if aug else 0.0
    speed = aug.speed if aug else 0.0
    eq = aug.eq_db if aug else 0.0
    hop, clip, half = spec.hop_length, spec.clip_frames, spec.n_fft // 2
    length = (clip - 1) * hop + 2 * half  # an audio crop's samples (its frames and half a window either side)
    lo, room = crop_starts(n, spec, extra=math.ceil(speed * length / hop))  # a sped-up crop reads up to (1+speed)x
    # Every random draw before any operator that only one crop_from has: DALI seeds operators in
    # the order they are made, so both ways draw the same crops, gains and masks.
    draws = [(lo + fn.cast(fn.random.uniform(range=[0.0, 1.0]) * room, dtype=types.INT32),
              fn.random.uniform(range=[-gain, gain]) if gain else None,
              draw_masks(aug) if aug else [],
              fn.random.uniform(range=[1.0 - speed, 1.0 + speed]) if speed else None,
              eq_curve(fn.random.uniform(range=[-eq, eq], shape=[aug.eq_points]), spec.n_mels, aug.eq_points)
              if eq else None)
             for _ in range(crops)]  # (the eq draw last: runs without it draw exactly as before it existed)
    dev = (lambda node: node.gpu()) if on_gpu else (lambda node: node)
    # A gain of g dB on the audio adds g to every mel dB value before the floor; an equalisation
    # curve adds its dB per band. With the floor lowered by the largest shift and applied after it,
    # the result equals shifting before the floor, bin for bin (bins below the floor stay at it).
    drop = gain + eq
    if crop_from == "features":
        track = mel_db(pcm_float(dev(audio)), spec, spec.db_floor - drop)
        if not drop:
            track = spec.normalise(track)  # once per track rather than once per crop
    feats = []
    for start, g, masks, rate, curve in draws:
        if crop_from == "features":
            f = fn.slice(track, start=start, shape=[clip], axes=[1], out_of_bounds_policy="pad",
                         fill_values=spec.db_floor - drop if drop else spec.floor_value)
            if drop:
                shift = curve if not gain else g if not eq else g + curve  # on the host: a scalar, (mels, 1)
                f = spec.normalise(dmath.max(f + dev(shift), spec.db_floor))
        else:
            # the crop's samples and half a window either side: its uncentred frames are the
            # track's centred frames start .. start + clip - 1
            if rate is None:
                crop = fn.slice(audio, start=start * hop - half, shape=[length], axes=[0],
                                out_of_bounds_policy="pad", fill_values=0)
                crop = pcm_float(crop.gpu() if on_gpu else crop)
            else:  # `rate` times the samples resampled to `length`: played `rate` times as fast
                src = fn.slice(audio, start=start * hop - half, shape=fn.cast(rate * length + 0.5, dtype=types.INT32),
                               axes=[0], out_of_bounds_policy="pad", fill_values=0)
                crop = fn.audio_resample(pcm_float(src.gpu() if on_gpu else src), out_length=length)
            if gain:
                crop = crop * dmath.pow(10.0, dev(g) / 20.0)
            db = mel_db(crop, spec, spec.db_floor - eq, center=False)
            f = spec.normalise(dmath.max(db + dev(curve), spec.db_floor) if eq else db)
        feats.append(spec_augment(f, masks))
    return fn.stack(*feats)
