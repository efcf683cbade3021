"""The FeatureSpec's log-mel in torchaudio: for single files (predict.py) and parity tests.

No DALI needed, so prediction runs on any machine torch runs on. Matches pipeline.dali_graph.log_mel.
"""
from __future__ import annotations

import torch

from pipeline.spec import FeatureSpec


class LogMel(torch.nn.Module):
    def __init__(self, spec: FeatureSpec):
        super().__init__()
        import torchaudio.transforms as T
        self.spec = spec
        self.mel = T.MelSpectrogram(
            sample_rate=spec.sample_rate, n_fft=spec.n_fft, win_length=spec.n_fft, hop_length=spec.hop_length,
            f_min=spec.f_min, f_max=spec.fmax, n_mels=spec.n_mels, window_fn=torch.hann_window, power=2.0,
            center=True, pad_mode="reflect", norm=spec.mel_norm, mel_scale=spec.mel_scale)

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        """(..., samples) float audio -> (..., mels, frames) normalised log-mel."""
        power = self.mel(audio.float())
        db = 10.0 * torch.log10(torch.clamp(power, min=10.0 ** (self.spec.db_floor / 10.0)))
        return (db - self.spec.norm_mean) / self.spec.norm_std
