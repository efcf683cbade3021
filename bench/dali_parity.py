#!/usr/bin/env python
"""Where DALI's log-mel differs from librosa's: its spectrogram (FFT) or its mel filter bank?

    .venv/bin/python bench/dali_parity.py [FILE.wav]      # default: rock/rock.00000.wav of bench/.cache

bench/features.py found DALI's CPU log-mels up to 0.17 dB off librosa's on drum-hit frames, in
bands 70-80 dB below the frame's loudest band (worst: rock/rock.00000.wav, mel 33, frame 822).
This script splits the pipeline (pipeline.dali_graph.log_mel's operators, same arguments) into its
two stages and compares each with a float64 reference:

  reference   torch.stft in float64 (periodic Hann, centred, reflect padding) -> |X|^2, then
              librosa's slaney mel matrix in float64 -> dB
  A  DALI     fn.spectrogram -> fn.mel_filter_bank   (the whole DALI graph, as trained on)
  B  FFT      fn.spectrogram -> float64 mel matrix   (DALI's spectrogram alone)
  C  mel bank float64 power  -> fn.mel_filter_bank   (DALI's filter bank alone)
  D  torch32  torch.stft in float32 (torchaudio's path) -> float64 mel matrix (a float32 FFT, for scale)

It prints, for each, the max abs dB error over all bins and over the bins within 60 dB of their
frame's loudest band, and the error at the worst bin of A. Needs nvidia.dali, torch, soundfile,
librosa (for the mel matrix only).
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
DEFAULT = os.path.join(ROOT, "bench", ".cache", "synth-pc20-30s", "rock", "rock.00000.wav")


def db(p: np.ndarray, floor: float) -> np.ndarray:
    return 10.0 * np.log10(np.maximum(p, 10.0 ** (floor / 10.0)))


def dali_stages(audio: np.ndarray, power_ref: np.ndarray, spec) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """DALI CPU: (its power spectrogram, its mel of it, its mel of the float64 power given)."""
    from nvidia.dali import fn, pipeline_def, types

    from pipeline.dali_graph import periodic_hann

    @pipeline_def(batch_size=1, num_threads=1, device_id=None)
    def pipe():
        a = fn.external_source(source=lambda: [audio], batch=True, dtype=types.FLOAT, layout="t")
        p_in = fn.external_source(source=lambda: [np.ascontiguousarray(power_ref, dtype=np.float32)], batch=True, dtype=types.FLOAT,
                                  layout="ft")
        power = fn.spectrogram(a, nfft=spec.n_fft, window_length=spec.n_fft, window_step=spec.hop_length,
                               window_fn=periodic_hann(spec.n_fft), center_windows=True, reflect_padding=True,
                               power=2, layout="ft")
        kw = dict(sample_rate=spec.sample_rate, nfilter=spec.n_mels, freq_low=spec.f_min, freq_high=spec.f_max,
                  mel_formula=spec.mel_scale, normalize=spec.mel_norm == "slaney")
        return power, fn.mel_filter_bank(power, **kw), fn.mel_filter_bank(p_in, **kw)

    p = pipe()
    p.build()
    out = p.run()
    return tuple(np.array(o.at(0), dtype=np.float64) for o in out)


def torch_power(audio: np.ndarray, spec, dtype) -> np.ndarray:
    import torch
    x = torch.from_numpy(audio).to(dtype)
    X = torch.stft(x, spec.n_fft, hop_length=spec.hop_length, win_length=spec.n_fft,
                   window=torch.hann_window(spec.n_fft, dtype=dtype), center=True, pad_mode="reflect",
                   return_complex=True)
    return (X.abs() ** 2).to(torch.float64).numpy()


def shard_copy(path: str) -> tuple[np.ndarray, str] | None:
    """The 16-bit samples make_shards stored for PATH, from any bench/.cache shard folder holding it."""
    import glob
    import io
    import json
    import tarfile

    import soundfile as sf
    for manifest_path in sorted(glob.glob(os.path.join(ROOT, "bench", ".cache", "shards-*", "manifest.json"))):
        shard_dir = os.path.dirname(manifest_path)
        with open(manifest_path, encoding="utf-8") as f:
            m = json.load(f)
        sel = os.path.join(ROOT, "bench", ".cache", "sel-" + os.path.basename(shard_dir)[len("shards-"):])
        for s in m["samples"]:
            src = os.path.join(sel, s["source"])
            if os.path.exists(src) and os.path.samefile(src, path):
                with tarfile.open(os.path.join(shard_dir, s["shard"])) as tf:
                    raw = tf.extractfile(s["key"] + ".wav").read()
                x, _ = sf.read(io.BytesIO(raw), dtype="int16")
                return x, os.path.relpath(shard_dir, ROOT)
    return None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("file", nargs="?", default=DEFAULT)
    ap.add_argument("--range-db", type=float, default=60.0, help="'loud' bins: within this of the frame's peak band")
    a = ap.parse_args(argv)
    import librosa
    import soundfile as sf
    import torch

    from pipeline.spec import FeatureSpec
    spec = FeatureSpec()
    pcm, sr = sf.read(a.file, dtype="int16", always_2d=True)
    if sr != spec.sample_rate or pcm.shape[1] != 1:
        print(f"{a.file}: {sr} Hz, {pcm.shape[1]} channels; this script takes mono {spec.sample_rate} Hz 16-bit",
              file=sys.stderr)
        return 2
    pcm = pcm[:, 0]
    audio = (pcm / 32768.0).astype(np.float32)  # what soundfile and DALI's decoder return
    fb = librosa.filters.mel(sr=sr, n_fft=spec.n_fft, n_mels=spec.n_mels, fmin=spec.f_min, fmax=spec.f_max,
                             htk=spec.mel_scale == "htk", norm="slaney" if spec.mel_norm == "slaney" else None,
                             dtype=np.float64)

    def reference(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        p = np.ascontiguousarray(torch_power(x.astype(np.float64), spec, torch.float64))
        return p, db(fb @ p, spec.db_floor)

    p64, ref = reference(audio)
    dali_power, dali_mel, dali_mel_of_ref = dali_stages(audio, p64, spec)
    assert dali_power.shape == p64.shape, (dali_power.shape, p64.shape)
    p32 = torch_power(audio, spec, torch.float32)
    rows = {
        "A  DALI spectrogram + DALI mel bank (source samples)": db(dali_mel, spec.db_floor),
        "B  DALI spectrogram + float64 mel matrix": db(fb @ dali_power, spec.db_floor),
        "C  float64 power + DALI mel bank": db(dali_mel_of_ref, spec.db_floor),
        "D  torch.stft float32 + float64 mel matrix": db(fb @ p32, spec.db_floor),
    }
    found = shard_copy(os.path.abspath(a.file))
    shard_note = "no bench/.cache shard holds this file: run bench/features.py first for rows E and F"
    if found is not None:
        spcm, shard_dir = found
        saudio = (spcm / 32768.0).astype(np.float32)
        _, sref = reference(saudio)
        _, s_mel, _ = dali_stages(saudio, p64, spec)
        rows["E  DALI graph on the shard's samples (what DaliLoader sees)"] = db(s_mel, spec.db_floor)
        rows["F  float64 reference on the shard's samples"] = sref
        diff = spcm.astype(np.int32) - pcm
        big = np.abs(pcm) > 16384
        from pipeline.audio import to_pcm16  # what make_shards stores: round(x * 32768), clipped
        expect = to_pcm16(audio)
        shard_note = (f"{shard_dir}: {int((diff != 0).sum())} of {len(pcm)} samples differ from the source file "
                      f"(max {int(np.abs(diff).max())} LSB; {int(big.sum())} samples have |x| > 0.5 FS, "
                      f"{int((diff[big] != 0).sum())} of them differ, {int((diff[~big] != 0).sum())} of the others); "
                      f"the shard equals pipeline.audio.to_pcm16(source samples), i.e. the source's 16-bit samples: "
                      f"{np.array_equal(spcm, expect)}")
    below = ref.max(axis=0, keepdims=True) - ref  # dB below the frame's loudest band
    loud = below <= a.range_db
    worst_key = list(rows)[-2] if found is not None else list(rows)[0]
    err_w = np.abs(rows[worst_key] - ref)
    m, t = np.unravel_index(int(err_w.argmax()), err_w.shape)
    print(f"{os.path.relpath(a.file, ROOT)}: {len(audio)} samples, {ref.shape[1]} frames. Reference: the source "
          f"file's samples, float64 STFT + float64 slaney mel matrix.\n{shard_note}\n"
          f"worst bin of {worst_key[:2].strip()}: mel {m}, frame {t}, reference {ref[m, t]:.2f} dB, "
          f"{below[m, t]:.1f} dB below the frame's loudest band\n")
    print(f"| stages | max abs dB, all bins | max abs dB, bins within {a.range_db:g} dB of the frame peak "
          f"| bins > 0.01 dB | at mel {m}, frame {t} |")
    print("|---|---|---|---|---|")
    for name, v in rows.items():
        e = np.abs(v - ref)
        print(f"| {name} | {e.max():.4f} | {e[loud].max():.5f} | {int((e > 0.01).sum())} | {e[m, t]:.4f} |")

    # The spectrum itself: DALI's (and float32 torch's) power per FFT bin vs float64.
    abs_err = np.sqrt(np.abs(dali_power - p64)) / np.sqrt(p64.max(axis=0, keepdims=True))
    abs_err32 = np.sqrt(np.abs(p32 - p64)) / np.sqrt(p64.max(axis=0, keepdims=True))
    print(f"\nFFT error floor, sqrt|P - P64| re the frame's peak magnitude (median over bins / max): DALI "
          f"{20 * np.log10(np.median(abs_err) + 1e-30):.0f} / {20 * np.log10(abs_err.max()):.0f} dB, torch float32 "
          f"{20 * np.log10(np.median(abs_err32) + 1e-30):.0f} / {20 * np.log10(abs_err32.max()):.0f} dB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
