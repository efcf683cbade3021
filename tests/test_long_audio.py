"""Long songs in bounded memory (README, Prediction): chunked log-mels equal the whole-signal
result, predict.py sends windows through the model 64 at a time, and the timeline's segments tile
the song."""
import numpy as np
import pytest
import torch

import predict
from audio_files import write
from model import MODELS, build_model
from features.audio import decode
from features.torch_logmel import LogMel
from core.spec import FeatureSpec
from features.windows import cut_windows, window_starts
from core import checkpoint

RATE = 22_050


def _music_like(seconds: float, seed: int = 0) -> torch.Tensor:
    """Tones that change every 0.37 s plus noise: every frame differs from its neighbours."""
    rng = np.random.default_rng(seed)
    n = int(seconds * RATE)
    t = np.arange(n) / RATE
    f = 200 + 1800 * rng.random(int(seconds / 0.37) + 1)[(t / 0.37).astype(int)]
    x = 0.4 * np.sin(2 * np.pi * np.cumsum(f) / RATE) + 0.05 * rng.standard_normal(n)
    x[n // 3: n // 3 + RATE] = 0.0  # a silent second: floor values inside a chunk
    return torch.from_numpy(x.astype(np.float32))


@pytest.mark.parametrize("seconds,chunk_frames", [(10.0 + 123 / RATE, 64), (10.0, 100), (100.0, 4096)])
def test_chunked_log_mel_equals_whole_signal(seconds, chunk_frames):
    """LogMel.long cuts long signals into chunks of chunk_frames frames (default 4096, ~95 s);
    the result equals forward() on the whole signal: same frame count, same values."""
    x = _music_like(seconds)
    lm = LogMel(FeatureSpec())
    total = 1 + len(x) // lm.spec.hop_length
    assert total > chunk_frames  # really chunked
    with torch.inference_mode():
        whole = lm(x)
        chunked = lm.long(x, chunk_frames=chunk_frames)
    assert chunked.shape == whole.shape == (lm.spec.n_mels, total)
    diff = (chunked - whole).abs().max().item() * lm.spec.norm_std
    assert diff < 1e-3, f"chunked log-mel differs by {diff:.4f} dB"


class _Small(torch.nn.Module):
    """A quick stand-in for the real models (same interface: any window length, global pooling)."""

    def __init__(self, n_classes: int):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 8, 3, padding=1)
        self.fc = torch.nn.Linear(8, n_classes)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).amax(dim=(2, 3)))


class _Recorder(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model, self.inputs, self.outputs = model, [], []

    def forward(self, x):
        self.inputs.append(x.clone())
        self.outputs.append(self.model(x))
        return self.outputs[-1]


def test_predict_sends_windows_through_the_model_64_at_a_time(tmp_path, monkeypatch):
    """A 70 s song with 0.5 s windows has about 140 of them: the model sees batches of at most 64,
    together every window once, and the song's genre is the mean of all windows' logits."""
    spec = FeatureSpec(clip_seconds=0.5)
    monkeypatch.setitem(MODELS, "small", _Small)
    torch.manual_seed(0)
    model = build_model("small", 3).eval()
    ckpt = str(tmp_path / "m.pt")
    checkpoint.save(ckpt, {"model_name": "small", "model": model.state_dict(), "classes": ["a", "b", "c"],
                           "feature_spec": spec.to_dict()})
    song = write(tmp_path / "long.wav", _music_like(70.0).numpy(), RATE)
    p = predict.Predictor(ckpt)
    p.model = rec = _Recorder(p.model)
    r = p.predict_file(song)
    n_windows = len(window_starts(spec.valid_frames(70 * RATE), spec.clip_frames))
    assert r["windows"] == n_windows > 128
    assert [len(x) for x in rec.inputs] == [64, 64, n_windows - 128]
    with torch.inference_mode():  # the batches hold the song's windows, in order, each once
        feats = LogMel(spec)(torch.from_numpy(decode(song, spec.sample_rate).samples))[None]
        windows = cut_windows(feats, feats.shape[-1], spec.clip_frames, spec.floor_value)
    assert torch.allclose(torch.cat(rec.inputs), windows, atol=1e-4)
    probs = torch.softmax(torch.cat(rec.outputs).mean(0), 0)
    assert r["genre"] == "abc"[int(probs.argmax())]
    assert r["probabilities"] == {c: round(float(probs[i]), 4) for i, c in sorted(enumerate("abc"), key=lambda ic: -probs[ic[0]])}


def _timeline(seconds: float, genres: list[str], spec: FeatureSpec, hop_frames: int) -> list[dict]:
    """Windows as predict.py reports them (start, end, genre, probabilities), genres given."""
    sec = spec.hop_length / spec.sample_rate
    starts = window_starts(spec.valid_frames(int(seconds * spec.sample_rate)), spec.clip_frames, hop_frames)
    assert len(starts) == len(genres), len(starts)
    tl = [{"start": round(s * sec, 2), "end": round(min(s * sec + spec.clip_seconds, seconds), 2), "genre": g,
           "probabilities": {g: 0.5 + 0.01 * i}} for i, (s, g) in enumerate(zip(starts, genres))]
    tl[-1]["end"] = seconds
    return tl


@pytest.mark.parametrize("seconds,genres", [
    (20.0, list("aabbbbacca")),   # 10 overlapping windows: 3 s clips, 2 s hop
    (3.5, list("ab")),            # barely longer than one window
    (2.0, list("a")),             # shorter than one window
])
def test_timeline_segments_tile_the_song(seconds, genres):
    """Segments start at 0, end at the song's end, each begins where the previous one ends, the
    genre changes at every boundary, and every window's centre lies in a segment of its genre."""
    spec = FeatureSpec()
    hop = round(2.0 * spec.sample_rate / spec.hop_length)
    tl = _timeline(seconds, genres, spec, hop)
    segs = predict.timeline_segments(tl, seconds)
    assert segs[0][0] == 0.0 and segs[-1][1] == seconds
    for (a0, a1, ga, _), (b0, b1, gb, _) in zip(segs, segs[1:]):
        assert a1 == b0 and a0 < a1 < b1 and ga != gb
    for w in tl:
        c = (w["start"] + w["end"]) / 2
        (seg,) = [s for s in segs if s[0] <= c < s[1] or (c == s[1] == seconds)]
        assert seg[2] == w["genre"]
    runs = [g for i, g in enumerate(genres) if i == 0 or genres[i - 1] != g]
    assert [s[2] for s in segs] == runs
    k = next((i for i, g in enumerate(genres) if g != genres[0]), len(genres))  # the first run's windows
    first = [w["probabilities"][w["genre"]] for w in tl[:k]]
    assert segs[0][3] == pytest.approx(sum(first) / len(first))  # its mean probability
