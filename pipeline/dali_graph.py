"""The DALI graph: WebDataset shards -> decode -> crop -> [GPU] -> log-mel -> normalise.

One graph for CPU and GPU. On a GPU the stages after decoding and cropping run on the device
(`audio.gpu()`); without one (device_id=None) the same operators run on the CPU.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from nvidia.dali import fn, pipeline_def, types
import nvidia.dali.math as dmath

from pipeline.spec import FeatureSpec

READER_NAME = "reader"


@dataclass(frozen=True)
class Augment:
    """Training-time augmentation, done inside the graph on the features' device. Off in evaluation."""
    gain_db: float = 0.0        # random gain, uniform in [-gain_db, +gain_db] dB, applied to the audio
    freq_masks: int = 0         # SpecAugment: number of frequency masks, each up to freq_width mel bands
    freq_width: int = 16
    time_masks: int = 0         # SpecAugment: number of time masks, each up to time_width frames
    time_width: int = 20

    @property
    def active(self) -> bool:
        return bool(self.gain_db or self.freq_masks or self.time_masks)


def spec_augment(feats, aug: Augment):
    """Zero (the normalised mean) random bands of mel bins and of frames, per sample (Park et al. 2019)."""
    for axis, n, width in (("f", aug.freq_masks, aug.freq_width), ("t", aug.time_masks, aug.time_width)):
        if n:
            anchor = fn.random.uniform(range=[0.0, 1.0], shape=[n])
            shape = fn.random.uniform(range=[0.0, float(width)], shape=[n])
            feats = fn.erase(feats, anchor=anchor, shape=shape, axis_names=axis, normalized_anchor=True,
                             normalized_shape=False, fill_value=0.0)
    return feats


def periodic_hann(n: int) -> list[float]:
    """torch.hann_window / librosa's default (periodic) window; DALI's default is symmetric."""
    return [0.5 - 0.5 * math.cos(2.0 * math.pi * i / n) for i in range(n)]


def log_mel(audio, spec: FeatureSpec):
    """Power spectrogram -> slaney mel bank -> dB -> fixed normalisation. Output layout (mels, frames)."""
    power = fn.spectrogram(audio, nfft=spec.n_fft, window_length=spec.n_fft, window_step=spec.hop_length,
                           window_fn=periodic_hann(spec.n_fft), center_windows=True, reflect_padding=True,
                           power=2, layout="ft")
    mel = fn.mel_filter_bank(power, sample_rate=spec.sample_rate, nfilter=spec.n_mels, freq_low=spec.f_min,
                             freq_high=spec.fmax, mel_formula=spec.mel_scale, normalize=spec.mel_norm == "slaney")
    db = fn.to_decibels(mel, multiplier=10.0, reference=1.0, cutoff_db=spec.db_floor)
    return (db - spec.norm_mean) * (1.0 / spec.norm_std)


@pipeline_def(enable_conditionals=False)
def audio_pipeline(files: list[str], index_files: list[str], spec: FeatureSpec, train: bool,
                   shard_id: int, num_shards: int, on_gpu: bool, shuffle_buffer: int = 1024,
                   augment: Augment | None = None, crops: int = 1):
    """Outputs (features, label, uid, n_samples).

    train=True: shuffled; `crops` independent random crops of spec.clip_samples per track
    (zero-padded if short), each with its own `augment` draw (random gain, SpecAugment masks);
    features are stacked to (crops, mels, frames). The track is read and decoded once for all
    its crops (on a 2-core CPU the per-crop log-mel dominates: +8-24 % crops/s, bench/NOTES.md).
    train=False: in order, the whole track, zero-padded to the longest in the batch; the caller
    cuts it into windows (pipeline.windows) so evaluation covers the whole track.
    """
    wav, label, uid = fn.readers.webdataset(
        paths=files, index_paths=index_files, ext=["wav", "lab", "uid"],
        dtypes=[types.UINT8, types.INT32, types.INT64], missing_component_behavior="error",
        random_shuffle=train, initial_fill=shuffle_buffer, shard_id=shard_id, num_shards=num_shards,
        pad_last_batch=True, name=READER_NAME)
    # Shards hold 16-bit PCM already at spec.sample_rate: no resampling here (DALI's aliases).
    audio, _ = fn.decoders.audio(wav, dtype=types.FLOAT, downmix=True)
    n = audio.shape(dtype=types.INT32)[0]
    if not train:
        audio = fn.pad(audio, axes=[0], fill_value=0.0)
        return log_mel(audio.gpu() if on_gpu else audio, spec), label, uid, n
    aug = augment if (augment is not None and augment.active) else None
    clip = spec.clip_samples
    feats = []
    for _ in range(crops):
        anchor = fn.random.uniform(range=[0.0, 1.0]) * fn.cast(dmath.max(n - clip, 0), dtype=types.FLOAT)
        crop = fn.slice(audio, start=fn.cast(anchor, dtype=types.INT32), shape=[clip], axes=[0],
                        out_of_bounds_policy="pad", fill_values=0.0)
        if aug and aug.gain_db:  # on the CPU, on the short crop: mixing a CPU scalar into GPU arithmetic is avoided
            crop = crop * dmath.pow(10.0, fn.random.uniform(range=[-aug.gain_db, aug.gain_db]) / 20.0)
        f = log_mel(crop.gpu() if on_gpu else crop, spec)
        if aug and (aug.freq_masks or aug.time_masks):
            f = spec_augment(f, aug)
        feats.append(f)
    return fn.stack(*feats), label, uid, n
