"""The FeatureSpec's log-mel in torchaudio: for single files (predict.py) and parity tests.

No DALI needed, so prediction runs on any machine torch runs on. Matches features.dali_graph.log_mel.
"""
from __future__ import annotations

import torch

from core.spec import FeatureSpec


class LogMel(torch.nn.Module):
    def __init__(self, spec: FeatureSpec):
        super().__init__()
        import torchaudio.transforms as T
        self.spec = spec
        self.mel = T.MelSpectrogram(
            sample_rate=spec.sample_rate, n_fft=spec.n_fft, win_length=spec.n_fft, hop_length=spec.hop_length,
            f_min=spec.f_min, f_max=spec.f_max, n_mels=spec.n_mels, window_fn=torch.hann_window, power=2.0,
            center=True, pad_mode="reflect", norm=spec.mel_norm, mel_scale=spec.mel_scale)

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        """(..., samples) float audio -> (..., mels, frames) normalised log-mel."""
        power = self.mel(audio.float())
        return self.spec.normalise(10.0 * torch.log10(torch.clamp(power, min=self.spec.amin)))

    def long(self, audio: torch.Tensor, chunk_frames: int = 4096) -> torch.Tensor:
        """Log-mel of a 1-D signal of any length in bounded memory; equals forward(audio).

        A centred frame t only sees samples within n_fft/2 of t*hop, so chunks that overlap by a
        few frames and drop their edge frames reproduce the whole-signal result.
        """
        hop, n = self.spec.hop_length, audio.shape[-1]
        total = 1 + n // hop
        if total <= chunk_frames:
            return self(audio)
        margin = self.spec.n_fft // hop + 1
        out = []
        for f0 in range(0, total, chunk_frames):
            f1 = min(total, f0 + chunk_frames)
            a0 = max(0, f0 - margin) * hop  # chunk starts on a frame boundary
            a1 = min(n, (f1 + margin) * hop)
            feats = self(audio[a0:a1])
            lo = f0 - a0 // hop
            out.append(feats[..., lo:lo + (f1 - f0)])
        return torch.cat(out, dim=-1)
