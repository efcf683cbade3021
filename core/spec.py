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
        """A FeatureSpec from a manifest or checkpoint (untrusted): types and ranges are checked
        (ValueError, one line) before any value can size an allocation or a loop."""
        if not isinstance(d, dict):
            raise ValueError(f"FeatureSpec: not a mapping ({type(d).__name__})")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown FeatureSpec fields: {sorted(unknown)[:5]}")
        for name, value in d.items():
            _check_field(name, value)
        spec = cls(**d)
        if spec.hop_length > spec.n_fft:
            raise ValueError(f"FeatureSpec: hop_length {spec.hop_length} is larger than n_fft {spec.n_fft}")
        if not 0 <= spec.f_min < spec.f_max <= spec.sample_rate / 2:
            raise ValueError(f"FeatureSpec: f_min {spec.f_min} and f_max {spec.f_max} must satisfy "
                             f"0 <= f_min < f_max <= sample_rate / 2")
        return spec


# The accepted range of each field read from a file: wide enough for any real use, narrow enough that
# no value can make a reader allocate gigabytes (n_mels x frames, n_fft, clip samples).
_RANGES: dict[str, tuple[type, float, float]] = {
    "sample_rate": (int, 1_000, 384_000), "n_fft": (int, 16, 65_536), "hop_length": (int, 1, 65_536),
    "n_mels": (int, 1, 1_024), "f_min": (float, 0.0, 192_000.0), "f_max": (float, 1.0, 192_000.0),
    "clip_seconds": (float, 0.1, 600.0), "db_floor": (float, -400.0, 0.0),
    "norm_mean": (float, -1e4, 1e4), "norm_std": (float, 1e-6, 1e4),
}
_CHOICES = {"mel_scale": ("slaney", "htk"), "mel_norm": ("slaney", None)}


def _check_field(name: str, value: Any) -> None:
    if name in _CHOICES:
        if value not in _CHOICES[name]:
            raise ValueError(f"FeatureSpec: {name} {value!r} is not one of {_CHOICES[name]}")
        return
    kind, lo, hi = _RANGES[name]
    if name == "f_max" and value is None:
        return
    ok_type = isinstance(value, int) if kind is int else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok_type or not lo <= value <= hi:  # NaN fails the range test too
        raise ValueError(f"FeatureSpec: {name} {value!r:.40} is not a {kind.__name__} in [{lo:g}, {hi:g}]")


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
    speed: float = 0.0          # speed perturbation: each crop played at a random speed in [1 - speed, 1 + speed]
                                # (pitch and tempo together; resampled from the audio, so crops come from audio)
    eq_db: float = 0.0          # random equalisation: a gain curve over the mel bands, piecewise linear through
    eq_points: int = 4          # eq_points gains uniform in [-eq_db, +eq_db] dB at evenly spaced bands, per crop

    def __post_init__(self) -> None:
        if not 0.0 <= self.speed < 0.5:
            raise ValueError(f"speed perturbation {self.speed!r}: must lie in [0, 0.5)")
        if not 0.0 <= self.eq_db <= 40.0 or self.eq_points < 2:
            raise ValueError(f"random equalisation {self.eq_db!r} dB at {self.eq_points} points: needs 0..40 dB, 2+ points")

    @property
    def active(self) -> bool:
        return bool(self.gain_db or self.freq_masks or self.time_masks or self.speed or self.eq_db)
