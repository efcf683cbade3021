"""The one source of truth for feature parameters.

The same FeatureSpec is written into the shard manifest and into every checkpoint, so the DALI
training graph and the torchaudio prediction path compute identical log-mels.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class FeatureSpec:
    sample_rate: int = 22_050      # audio is resampled to this rate once, in make_shards
    n_fft: int = 2048
    hop_length: int = 512
    n_mels: int = 128
    f_min: float = 0.0
    f_max: float | None = None     # highest mel frequency; None is stored as Nyquist (sample_rate / 2)
    mel_scale: str = "slaney"      # mel formula and filter normalisation, as librosa's defaults
    mel_norm: str = "slaney"
    clip_seconds: float = 3.0      # length of one model input window
    db_floor: float = -100.0       # 10*log10(max(power, 1e-10)), librosa's amin
    norm_mean: float = -20.0       # fixed affine normalisation of dB values: (db - mean) / std
    norm_std: float = 15.0

    def __post_init__(self) -> None:
        if self.f_max is None:  # one name for the top frequency: resolved here, once
            object.__setattr__(self, "f_max", self.sample_rate / 2)

    @property
    def clip_samples(self) -> int:
        return int(round(self.clip_seconds * self.sample_rate))

    @property
    def clip_frames(self) -> int:
        """Frames in one window (centred STFT: 1 + samples // hop)."""
        return 1 + self.clip_samples // self.hop_length

    @property
    def amin(self) -> float:
        """The power floor: 10 ** (db_floor / 10) (librosa's `amin`)."""
        return 10.0 ** (self.db_floor / 10.0)

    def normalise(self, db):
        """dB -> model input. Element-wise on anything with arithmetic: DALI nodes, tensors, arrays, floats."""
        return (db - self.norm_mean) * (1.0 / self.norm_std)

    def denormalise(self, x):
        """Model input -> dB (the inverse of normalise)."""
        return x * self.norm_std + self.norm_mean

    @property
    def floor_value(self) -> float:
        """The normalised value of silence (zero padding)."""
        return self.normalise(self.db_floor)

    def valid_frames(self, n_samples: int) -> int:
        return 1 + n_samples // self.hop_length

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "FeatureSpec":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown FeatureSpec fields: {sorted(unknown)}")
        return cls(**d)


@dataclass(frozen=True)
class Augment:
    """Training-time augmentation, done inside the DALI graph on the features' device. Off in evaluation.

    Defined here, not in the graph module, so that train.py can build one without importing DALI.
    """
    gain_db: float = 0.0        # random gain, uniform in [-gain_db, +gain_db] dB, applied to the audio
    freq_masks: int = 0         # SpecAugment: number of frequency masks, each up to freq_width mel bands
    freq_width: int = 16
    time_masks: int = 0         # SpecAugment: number of time masks, each up to time_width frames
    time_width: int = 20

    @property
    def active(self) -> bool:
        return bool(self.gain_db or self.freq_masks or self.time_masks)
