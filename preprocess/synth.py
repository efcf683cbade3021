"""Generate a labelled "genre-like" audio collection in GTZAN's layout.

    python preprocess/synth.py OUT [--per-class 20] [--seconds 30] [--hard] [--seed 0]

Writes OUT/<genre>/<genre>.000NN.wav (16-bit mono). Ten classes differ in tempo, drum pattern,
swing, instrument timbre (harmonic series, attack, distortion), harmony and spectral envelope.
Key, tempo, gain, noise and onset timing are randomised per clip, so no single constant gives a
class away. `--hard` makes classes borrow each other's components so that they overlap, as real
genres do; it is the stand-in for real data when measuring models.
"""
from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass

import numpy as np

from core.atomic import atomic_open

GENRES = ["blues", "classical", "country", "disco", "hiphop", "jazz", "metal", "pop", "reggae", "rock"]


@dataclass(frozen=True)
class Style:
    tempo: tuple[float, float]    # bpm range
    kick: str                     # 16-step patterns, 'x' = hit
    snare: str
    hat: str
    swing: float                  # delay of off-beat 16ths, fraction of a step
    harmonics: tuple[float, ...]  # relative amplitudes of the instrument's partials
    attack: float                 # seconds
    decay: float                  # seconds (exponential)
    drive: float                  # tanh distortion gain (0: clean)
    chord: tuple[int, ...]        # semitones above the root
    comp: str                     # when the chord instrument plays (16 steps)
    brightness: float             # spectral envelope cut-off in Hz
    register: int                 # MIDI note of the chord root's octave


STYLES: dict[str, Style] = {
    "blues":     Style((70, 95),  "x.....x.x.......", "....x.......x...", "x..xx..xx..xx..x", 0.33,
                       (1, .6, .4, .3, .2, .1), .01, .5, 0.8, (0, 4, 7, 10), "x..x..x.x..x..x.", 3000, 57),
    "classical": Style((60, 100), "................", "................", "................", 0.0,
                       (1, .5, .33, .25, .2, .16, .14, .12), .25, 1.2, 0.0, (0, 4, 7, 12), "x.......x.......", 5000, 60),
    "country":   Style((100, 130), "x.......x.......", "....x.......x...", "x.x.x.x.x.x.x.x.", 0.0,
                       (1, .8, .6, .5, .4, .3, .2), .002, .25, 0.0, (0, 4, 7), "x.x.x.x.x.x.x.x.", 6000, 55),
    "disco":     Style((115, 130), "x...x...x...x...", "....x.......x...", "..x...x...x...x.", 0.0,
                       (1, .3, .1), .005, .15, 0.3, (0, 3, 7, 10), ".x.x.x.x.x.x.x.x", 9000, 64),
    "hiphop":    Style((80, 98),  "x......x.x......", "....x.......x...", "x.x.x.x.x.x.x.x.", 0.15,
                       (1, .2), .02, .8, 0.0, (0, 3, 7), "x...............", 2500, 48),
    "jazz":      Style((110, 180), "x.........x.....", "......x.......x.", "x..x.xx..x.xx..x", 0.33,
                       (1, .4, .2, .1), .01, .6, 0.0, (0, 4, 7, 11, 14), "...x..x....x..x.", 4000, 52),
    "metal":     Style((140, 200), "xxx.xxx.xxx.xxx.", "....x.......x...", "x.x.x.x.x.x.x.x.", 0.0,
                       (1, .9, .8, .7, .6, .5, .4, .3), .003, .3, 6.0, (0, 7, 12), "xxxxxxxxxxxxxxxx", 7000, 40),
    "pop":       Style((100, 125), "x.......x.......", "....x.......x...", "x.x.x.x.x.x.x.x.", 0.0,
                       (1, .5, .3, .15), .01, .4, 0.2, (0, 4, 7), "x...x...x...x...", 8000, 60),
    "reggae":    Style((65, 90),  "........x.......", "........x.......", "x.x.x.x.x.x.x.x.", 0.1,
                       (1, .3, .3, .1), .002, .12, 0.0, (0, 4, 7), "..x...x...x...x.", 3500, 60),
    "rock":      Style((110, 150), "x.....x.x.......", "....x.......x...", "x.x.x.x.x.x.x.x.", 0.0,
                       (1, .8, .6, .4, .3, .2), .005, .4, 2.5, (0, 7, 12), "x.x.x.x.x.x.x.x.", 6000, 45),
}

PROGRESSIONS = [(0, 5, 7, 0), (0, 9, 5, 7), (0, 7, 9, 5), (0, 0, 5, 7), (0, 3, 5, 7)]


def _add(out: np.ndarray, start: int, sig: np.ndarray) -> None:
    if start >= len(out):
        return
    end = min(len(out), start + len(sig))
    out[start:end] += sig[: end - start]


def _note(freq: float, dur: float, st: Style, sr: int, rng: np.random.Generator) -> np.ndarray:
    n = int(dur * sr)
    t = np.arange(n, dtype=np.float32) / sr
    h = np.arange(1, len(st.harmonics) + 1, dtype=np.float32)[:, None]
    amp = np.asarray(st.harmonics, np.float32)[:, None] * (h * freq < sr / 2 - 500)
    detune = 1 + rng.normal(0, 0.002)
    tone = (amp * np.sin(2 * np.pi * freq * detune * h * t)).sum(0)
    env = np.minimum(t / max(st.attack, 1e-4), 1.0) * np.exp(-t / st.decay)
    sig = tone * env
    if st.drive:
        sig = np.tanh(st.drive * sig) / np.tanh(st.drive)
    return sig.astype(np.float32)


def _drum(kind: str, sr: int, rng: np.random.Generator) -> np.ndarray:
    if kind == "kick":
        t = np.arange(int(0.25 * sr)) / sr
        f = 50 + 90 * np.exp(-t / 0.03)
        return (np.sin(2 * np.pi * np.cumsum(f) / sr) * np.exp(-t / 0.12)).astype(np.float32)
    if kind == "snare":
        t = np.arange(int(0.18 * sr)) / sr
        noise = rng.standard_normal(len(t)) * np.exp(-t / 0.05)
        return (0.5 * noise + 0.5 * np.sin(2 * np.pi * 190 * t) * np.exp(-t / 0.04)).astype(np.float32)
    t = np.arange(int(0.05 * sr)) / sr
    noise = rng.standard_normal(len(t))
    noise = np.diff(noise, prepend=0)  # crude high-pass
    return (0.3 * noise * np.exp(-t / 0.012)).astype(np.float32)


def _envelope(x: np.ndarray, cutoff: float, sr: int) -> np.ndarray:
    spec = np.fft.rfft(x)
    f = np.fft.rfftfreq(len(x), 1 / sr)
    spec *= 1.0 / np.sqrt(1.0 + (f / cutoff) ** 4)  # 2nd-order low-pass shaped spectrum
    return np.fft.irfft(spec, n=len(x)).astype(np.float32)


def render(genre: str, seconds: float, sr: int, rng: np.random.Generator, hard: bool = False) -> np.ndarray:
    """One clip of `genre`, float32 mono in [-1, 1]."""
    st = STYLES[genre]
    if hard:  # borrow components from other classes so that genres overlap
        other = STYLES[GENRES[rng.integers(len(GENRES))]]
        fields = st.__dict__.copy()
        for group in (("kick", "snare", "hat", "swing"), ("harmonics", "attack", "decay", "drive"),
                      ("chord", "comp"), ("brightness", "register"), ("tempo",)):
            if rng.random() < 0.35:
                for k in group:
                    fields[k] = getattr(other, k)
        st = Style(**fields)
    n = int(seconds * sr)
    out = np.zeros(n + sr, np.float32)
    bpm = rng.uniform(*st.tempo) * (rng.uniform(0.85, 1.15) if hard else 1.0)
    step = 60.0 / bpm / 4  # 16th note
    root = st.register + int(rng.integers(12))
    prog = PROGRESSIONS[rng.integers(len(PROGRESSIONS))]
    jitter = rng.uniform(0.002, 0.012)
    drums = {k: _drum(k, sr, rng) for k in ("kick", "snare", "hat")}
    levels = {"kick": rng.uniform(.6, 1), "snare": rng.uniform(.4, .8), "hat": rng.uniform(.2, .5)}
    chord_level = rng.uniform(0.15, 0.3)
    bass_style = Style(**{**st.__dict__, "harmonics": (1, .3), "drive": 0.0, "attack": .01, "decay": .3})
    n_steps = int(seconds / step) + 1
    for i in range(n_steps):
        pos = i % 16
        t = i * step + (st.swing * step if pos % 2 else 0.0) + rng.normal(0, jitter)
        start = max(0, int(t * sr))
        for k in ("kick", "snare", "hat"):
            if getattr(st, k)[pos] == "x":
                _add(out, start, levels[k] * rng.uniform(.8, 1.0) * drums[k])
        bar = i // 16
        chord_root = root + prog[bar % len(prog)]
        if st.comp[pos] == "x":
            for semi in st.chord:
                f = 440.0 * 2 ** ((chord_root + semi - 69) / 12)
                _add(out, start, chord_level / len(st.chord) * 2 * _note(f, min(4 * step + st.decay, 2.0), st, sr, rng))
        if pos in (0, 8):
            f = 440.0 * 2 ** ((chord_root - 24 - 69) / 12)
            _add(out, start, 0.35 * _note(f, 8 * step, bass_style, sr, rng))
    x = _envelope(out[:n], st.brightness * rng.uniform(0.8, 1.25), sr)
    x += rng.uniform(0.001, 0.02 if not hard else 0.05) * rng.standard_normal(n).astype(np.float32)
    gain = 10 ** (rng.uniform(-12, -1) / 20)
    return (gain * x / (np.abs(x).max() + 1e-9)).astype(np.float32)


def generate(out_dir: str, per_class: int = 20, seconds: float = 30.0, sr: int = 22_050,
             seed: int = 0, hard: bool = False, genres: list[str] | None = None, progress: bool = True) -> list[str]:
    """Write the collection; returns the paths written. Deterministic for a given seed."""
    import soundfile as sf
    from tqdm import tqdm

    genres = genres or GENRES
    paths = []
    jobs = [(g, i) for g in genres for i in range(per_class)]
    for g, i in tqdm(jobs, desc="synth", unit="clip", disable=not progress):
        rng = np.random.default_rng([seed, GENRES.index(g), i, int(hard)])
        x = render(g, seconds, sr, rng, hard)
        os.makedirs(os.path.join(out_dir, g), exist_ok=True)
        path = os.path.join(out_dir, g, f"{g}.{i:05d}.wav")
        with atomic_open(path, fsync=False) as f:  # regenerable: no fsync needed
            sf.write(f, x, sr, subtype="PCM_16", format="WAV")
        paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out")
    p.add_argument("--per-class", type=int, default=20)
    p.add_argument("--seconds", type=float, default=30.0)
    p.add_argument("--sample-rate", type=int, default=22_050)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--hard", action="store_true", help="overlapping classes (a proxy for real data)")
    a = p.parse_args(argv)
    paths = generate(a.out, a.per_class, a.seconds, a.sample_rate, a.seed, a.hard)
    print(f"wrote {len(paths)} clips of {a.seconds:g} s to {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
