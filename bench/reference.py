"""The librosa reference: the original project's log-mel features, computed as it computed them.

The one implementation that bench/features.py (its librosa methods and every method's parity
reference), bench/train_throughput.py (the librosa DataLoader's crops) and bench/dali_parity.py
(the slaney mel matrix, in float64) use. FeatureSpec's parameters throughout: a periodic Hann
window of n_fft, centred frames with reflect padding, power 2, FeatureSpec's mel scale and filter
norm, dB = 10 log10(max(power, spec.amin)) (ref 1.0, no top_db).

librosa is a benchmark-only dependency (bench/requirements.txt): without it, `require()` raises
bench.harness.SkipMethod, so a method that needs it reports itself skipped.
"""
from __future__ import annotations

from typing import Any

from bench.harness import SkipMethod


def require() -> Any:
    """librosa, or SkipMethod saying how to install it."""
    try:
        import librosa
        import librosa.feature  # noqa: F401  - loads numba's kernels now (before forking workers)
    except ImportError as e:
        raise SkipMethod(f"librosa not installed ({e}); pip install -r bench/requirements.txt") from None
    return librosa


def mel_kwargs(spec: Any) -> dict[str, Any]:
    """FeatureSpec's mel filter bank in librosa's arguments (of filters.mel and feature.melspectrogram)."""
    return {"n_mels": spec.n_mels, "fmin": spec.f_min, "fmax": spec.f_max, "htk": spec.mel_scale == "htk",
            "norm": "slaney" if spec.mel_norm == "slaney" else None}


def mel_matrix(spec: Any, dtype: Any = None) -> Any:
    """librosa's (n_mels, 1 + n_fft // 2) mel matrix for SPEC (float32 unless dtype says otherwise)."""
    import numpy as np
    return require().filters.mel(sr=spec.sample_rate, n_fft=spec.n_fft, **mel_kwargs(spec), dtype=dtype or np.float32)


def power_db(power: Any, spec: Any) -> Any:
    """librosa.power_to_db(power, ref=1.0, amin=spec.amin, top_db=None), in numpy of power's dtype."""
    import numpy as np
    return 10.0 * np.log10(np.maximum(power, spec.amin))


def librosa_db(path: str, spec: Any, start: int | None = None) -> Any:
    """float32 dB log-mel (mels, frames) of PATH, as the original project computed it.

    librosa.load resamples (soxr_hq) only if the rate differs. With START (in samples at the
    spec's rate): only spec.clip_samples samples from there (soundfile seeks), zero-padded at the
    end when the track is shorter, as the DALI graph crops.
    """
    librosa = require()
    import numpy as np
    if start is None:
        y, _ = librosa.load(path, sr=spec.sample_rate)  # mono
    else:
        n = spec.clip_samples
        y, _ = librosa.load(path, sr=spec.sample_rate, offset=start / spec.sample_rate,
                            duration=n / spec.sample_rate)
        y = y[:n]
        if len(y) < n:
            y = np.pad(y, (0, n - len(y)))
    mel = librosa.feature.melspectrogram(
        y=y, sr=spec.sample_rate, n_fft=spec.n_fft, hop_length=spec.hop_length, win_length=spec.n_fft,
        window="hann", center=True, pad_mode="reflect", power=2.0, **mel_kwargs(spec))
    return librosa.power_to_db(mel, ref=1.0, amin=spec.amin, top_db=None)
