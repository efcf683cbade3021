"""Where DALI's log-mel differs from librosa's: its spectrogram (FFT) or its mel filter bank?

    .venv/bin/python -m bench.dali_parity [FILE.wav] [--json OUT.json]   # default: rock/rock.00000.wav of bench/.cache

bench.features found DALI's CPU log-mels up to 0.17 dB off librosa's on drum-hit frames, in
bands 70-80 dB below the frame's loudest band (worst: rock/rock.00000.wav, mel 33, frame 822).
This script splits the pipeline (features.dali_graph.log_mel's operators, same arguments) into its
two stages and compares each with a float64 reference:

  reference   torch.stft in float64 (periodic Hann, centred, reflect padding) -> |X|^2, then
              librosa's slaney mel matrix in float64 (bench.reference) -> dB
  A  DALI     fn.spectrogram -> fn.mel_filter_bank   (the whole DALI graph, as trained on)
  B  FFT      fn.spectrogram -> float64 mel matrix   (DALI's spectrogram alone)
  C  mel bank float64 power  -> fn.mel_filter_bank   (DALI's filter bank alone)
  D  torch32  torch.stft in float32 (torchaudio's path) -> float64 mel matrix (a float32 FFT, for scale)

It prints, for each, the max abs dB error over all bins and over the bins within 60 dB of their
frame's loudest band, and the error at the worst bin of A; then the FFT error floor of DALI's and
float32 torch's power spectrum against float64. Needs nvidia.dali, torch, soundfile; librosa for
the mel matrix only (without it, rows A-F are skipped and the FFT floor is still measured).
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np

from bench import CACHE, ROOT
from bench.harness import SkipMethod, require_dali
from bench.reference import mel_matrix, power_db
from bench.tables import Col, markdown, text


def default_file(cache: str) -> str:
    return os.path.join(cache, "synth-pc20-30s", "rock", "rock.00000.wav")


def dali_stages(audio: np.ndarray, power_ref: np.ndarray, spec) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """DALI CPU: (its power spectrogram, its mel of it, its mel of the float64 power given)."""
    from nvidia.dali import fn, pipeline_def, types

    from features.dali_graph import periodic_hann

    @pipeline_def(batch_size=1, num_threads=1, device_id=None)
    def pipe():
        a = fn.external_source(source=lambda: [audio], batch=True, dtype=types.FLOAT, layout="t")
        p_in = fn.external_source(source=lambda: [np.ascontiguousarray(power_ref, dtype=np.float32)], batch=True,
                                  dtype=types.FLOAT, layout="ft")
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


def shard_copy(path: str, cache: str) -> tuple[np.ndarray, str] | None:
    """The 16-bit samples make_shards stored for PATH, from any shard folder of CACHE holding it (bench.data)."""
    import glob
    import io
    import json
    import tarfile

    import soundfile as sf
    for manifest_path in sorted(glob.glob(os.path.join(cache, "shards-*", "manifest.json"))):
        shard_dir = os.path.dirname(manifest_path)
        with open(manifest_path, encoding="utf-8") as f:
            m = json.load(f)
        sel = os.path.join(cache, "sel-" + os.path.basename(shard_dir)[len("shards-"):])
        for s in m["samples"]:
            src = os.path.join(sel, s["source"])
            if os.path.exists(src) and os.path.samefile(src, path):
                with tarfile.open(os.path.join(shard_dir, s["shard"])) as tf:
                    raw = tf.extractfile(s["key"] + ".wav").read()
                x, _ = sf.read(io.BytesIO(raw), dtype="int16")
                return x, os.path.relpath(shard_dir, ROOT)
    return None


def fft_floor(power: np.ndarray, p64: np.ndarray) -> dict[str, float]:
    """sqrt|P - P64| re the frame's peak magnitude, in dB: median over bins and max."""
    err = np.sqrt(np.abs(power - p64)) / np.sqrt(p64.max(axis=0, keepdims=True))
    return {"median": float(20 * np.log10(np.median(err) + 1e-30)), "max": float(20 * np.log10(err.max() + 1e-30))}


def compare(audio: np.ndarray, pcm: np.ndarray, p64: np.ndarray, dali: tuple, p32: np.ndarray, spec,
            a: argparse.Namespace) -> dict:
    """Rows A-F against the float64 reference (needs librosa's mel matrix)."""
    import torch
    fb = mel_matrix(spec, np.float64)
    dali_power, dali_mel, dali_mel_of_ref = dali

    def reference(x: np.ndarray) -> np.ndarray:
        return power_db(fb @ np.ascontiguousarray(torch_power(x.astype(np.float64), spec, torch.float64)), spec)

    ref = power_db(fb @ p64, spec)
    rows = {
        "A  DALI spectrogram + DALI mel bank (source samples)": power_db(dali_mel, spec),
        "B  DALI spectrogram + float64 mel matrix": power_db(fb @ dali_power, spec),
        "C  float64 power + DALI mel bank": power_db(dali_mel_of_ref, spec),
        "D  torch.stft float32 + float64 mel matrix": power_db(fb @ p32, spec),
    }
    res: dict = {"shard_note": "no shard folder of --cache holds this file: run bench.features first for rows E and F"}
    found = shard_copy(os.path.abspath(a.file), a.cache)
    if found is not None:
        spcm, shard_dir = found
        saudio = (spcm / 32768.0).astype(np.float32)
        _, s_mel, _ = dali_stages(saudio, p64, spec)
        rows["E  DALI graph on the shard's samples (what DaliLoader sees)"] = power_db(s_mel, spec)
        rows["F  float64 reference on the shard's samples"] = reference(saudio)
        diff = spcm.astype(np.int32) - pcm
        big = np.abs(pcm) > 16384
        from features.audio import to_pcm16  # what make_shards stores: round(x * 32768), clipped
        res["shard_note"] = (
            f"{shard_dir}: {int((diff != 0).sum())} of {len(pcm)} samples differ from the source file "
            f"(max {int(np.abs(diff).max())} LSB; {int(big.sum())} samples have |x| > 0.5 FS, "
            f"{int((diff[big] != 0).sum())} of them differ, {int((diff[~big] != 0).sum())} of the others); "
            f"the shard equals features.audio.to_pcm16(source samples), i.e. the source's 16-bit samples: "
            f"{np.array_equal(spcm, to_pcm16(audio))}")
    below = ref.max(axis=0, keepdims=True) - ref  # dB below the frame's loudest band
    loud = below <= a.range_db
    worst_key = list(rows)[-2] if found is not None else list(rows)[0]
    err_w = np.abs(rows[worst_key] - ref)
    m, t = np.unravel_index(int(err_w.argmax()), err_w.shape)
    res["worst"] = {"row": worst_key[:2].strip(), "mel": int(m), "frame": int(t), "reference_db": float(ref[m, t]),
                    "below_frame_peak_db": float(below[m, t])}
    res["rows"] = []
    for name, v in rows.items():
        e = np.abs(v - ref)
        res["rows"].append({"stages": name, "max_abs_db": float(e.max()), "max_abs_db_loud": float(e[loud].max()),
                            "bins_over_0.01db": int((e > 0.01).sum()), "at_worst_db": float(e[m, t])})
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("file", nargs="?", help="mono 16-bit WAV at 22,050 Hz (default: rock/rock.00000.wav of --cache)")
    ap.add_argument("--range-db", type=float, default=60.0, help="'loud' bins: within this of the frame's peak band")
    ap.add_argument("--cache", default=CACHE, help="bench.features' cache: the default file and its shards")
    ap.add_argument("--json", help="also write the figures here")
    a = ap.parse_args(argv)
    a.file = a.file or default_file(a.cache)
    import soundfile as sf
    import torch

    from core.spec import FeatureSpec
    spec = FeatureSpec()
    pcm, sr = sf.read(a.file, dtype="int16", always_2d=True)
    if sr != spec.sample_rate or pcm.shape[1] != 1:
        print(f"{a.file}: {sr} Hz, {pcm.shape[1]} channels; this script takes mono {spec.sample_rate} Hz 16-bit",
              file=sys.stderr)
        return 2
    pcm = pcm[:, 0]
    audio = (pcm / 32768.0).astype(np.float32)  # what soundfile and DALI's decoder return
    res: dict = {"benchmark": "dali_parity", "file": os.path.relpath(a.file, ROOT), "samples": len(audio),
                 "frames": spec.valid_frames(len(audio)), "range_db": a.range_db}
    try:
        require_dali()
        p64 = np.ascontiguousarray(torch_power(audio.astype(np.float64), spec, torch.float64))
        dali = dali_stages(audio, p64, spec)
        assert dali[0].shape == p64.shape, (dali[0].shape, p64.shape)
        p32 = torch_power(audio, spec, torch.float32)
        res["fft_floor_db"] = {"dali": fft_floor(dali[0], p64), "torch_float32": fft_floor(p32, p64)}
        try:
            res.update(compare(audio, pcm, p64, dali, p32, spec, a))
        except SkipMethod as e:
            res["rows_skipped"] = f"rows A-F need librosa's mel matrix: {e}"
    except SkipMethod as e:
        res["skipped"] = str(e)
    if a.json:
        from training.report import write_json
        write_json(a.json, res)

    print(f"{res['file']}: {res['samples']} samples, {res['frames']} frames. Reference: the source "
          "file's samples, float64 STFT + float64 slaney mel matrix.")
    if "skipped" in res:
        print(f"skipped: {res['skipped']}")
        return 0
    if "rows" in res:
        w = res["worst"]
        print(f"{res['shard_note']}\nworst bin of {w['row']}: mel {w['mel']}, frame {w['frame']}, reference "
              f"{w['reference_db']:.2f} dB, {w['below_frame_peak_db']:.1f} dB below the frame's loudest band\n")
        print(markdown(res["rows"], [
            Col("stages", text("stages")), Col("max abs dB, all bins", lambda r: f"{r['max_abs_db']:.4f}"),
            Col(f"max abs dB, bins within {a.range_db:g} dB of the frame peak",
                lambda r: f"{r['max_abs_db_loud']:.5f}"),
            Col("bins > 0.01 dB", text("bins_over_0.01db")),
            Col(f"at mel {w['mel']}, frame {w['frame']}", lambda r: f"{r['at_worst_db']:.4f}")], done="stages"))
    else:
        print(res["rows_skipped"])
    f = res["fft_floor_db"]
    print(f"\nFFT error floor, sqrt|P - P64| re the frame's peak magnitude (median over bins / max): DALI "
          f"{f['dali']['median']:.0f} / {f['dali']['max']:.0f} dB, torch float32 "
          f"{f['torch_float32']['median']:.0f} / {f['torch_float32']['max']:.0f} dB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
