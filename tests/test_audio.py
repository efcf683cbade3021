"""features/audio.py: downmix is the mean of all channels; block decoding equals whole decoding."""
import numpy as np
import pytest

import features.audio as audio
from audio_files import sine, write
from features.audio import decode, resample

RATE = 22_050


@pytest.mark.parametrize("channels", [2, 3])
def test_downmix_is_the_mean_of_the_channels(tmp_path, channels):
    """Channels that differ (tones of different pitch and level): mono is their mean, not channel 0."""
    chans = [sine(440 * (c + 1), 1.5, RATE, amp=0.6 / (c + 1)) for c in range(channels)]
    chans[-1] = chans[-1] + 0.2  # a DC offset in the last channel only: shows up as mean 0.2 / channels
    x = np.stack(chans, axis=1)
    d = decode(write(tmp_path / "multi.wav", x, RATE, subtype="FLOAT"), RATE)
    assert d.channels == channels
    np.testing.assert_allclose(d.samples, x.mean(axis=1), atol=1e-6)
    assert abs(d.samples.mean() - 0.2 / channels) < 1e-3
    for c in range(channels):  # and it is none of the channels alone
        assert np.abs(d.samples - x[:, c]).max() > 0.1


def test_downmix_then_resample(tmp_path):
    """At another rate: the mean of the channels, resampled (44.1 kHz stereo -> 22.05 kHz)."""
    left, right = sine(300, 1.0, 44_100, amp=0.5), sine(1_200, 1.0, 44_100, amp=0.25)
    d = decode(write(tmp_path / "st.wav", np.stack([left, right], axis=1), 44_100, subtype="FLOAT"), RATE)
    want = resample(((left + right) / 2).astype(np.float32), 44_100, RATE)
    np.testing.assert_allclose(d.samples, want, atol=1e-5)


@pytest.mark.parametrize("rate,max_seconds", [(RATE, None), (44_100, None), (44_100, 2.3)])
def test_block_decoding_equals_whole_decoding(tmp_path, monkeypatch, rate, max_seconds):
    """Long files are read _BLOCK_BYTES at a time; with tiny blocks (many block edges, one partial
    block at the end, a --max-seconds limit inside a block) the result is the whole-file decoding."""
    rng = np.random.default_rng(0)
    n = int(3.1 * rate) + 17
    x = np.stack([0.3 * rng.standard_normal(n), sine(500, n / rate, rate)[:n]], axis=1)
    path = write(tmp_path / "long.wav", x, rate, subtype="PCM_24")
    monkeypatch.setattr(audio, "_BLOCK_BYTES", 1 << 40)
    whole = decode(path, RATE, max_seconds)
    reads = []
    real_read = audio.sf.SoundFile.read

    def counting_read(self, frames=-1, *a, **kw):
        reads.append(frames)
        return real_read(self, frames, *a, **kw)

    monkeypatch.setattr(audio, "_BLOCK_BYTES", 1000 * 4 * 2)  # 1000 stereo float32 frames
    monkeypatch.setattr(audio.sf.SoundFile, "read", counting_read)
    blocks = decode(path, RATE, max_seconds)
    limit = n if max_seconds is None else int(max_seconds * rate)
    assert max(reads) == 1000 and len(reads) >= limit // 1000  # really read in blocks
    assert blocks.source_frames == whole.source_frames == n and blocks.warnings == whole.warnings == []
    assert len(blocks.samples) == len(whole.samples)
    np.testing.assert_array_equal(blocks.samples, whole.samples)
