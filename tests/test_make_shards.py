import json
import os
import shutil
import subprocess
import sys
import tarfile

import numpy as np
import pytest
import soundfile as sf

from audio_files import sine, write
from helpers import ROOT, run_main
from features.audio import decode
from preprocess.make_shards import main, make_shards, verify
from preprocess.synth import generate


@pytest.fixture()
def messy(tmp_path):
    """Good clips plus one of each kind of bad input; returns (src, expected reason per path)."""
    src = tmp_path / "src"
    generate(str(src), per_class=3, seconds=3.0, genres=["blues", "rock"], progress=False)
    (src / "rock" / "empty.wav").write_bytes(b"")
    (src / "rock" / "notes.txt").write_text("not audio")
    write(src / "rock" / "silent.wav", np.zeros(22050 * 2), 22050)
    nan = sine(440, 2, 22050)
    nan[100] = np.nan
    write(src / "rock" / "nan.wav", nan, 22050, subtype="FLOAT")
    write(src / "blues" / "short.wav", sine(440, 0.3, 22050), 22050)
    shutil.copy(src / "blues" / "blues.00000.wav", src / "blues" / "copy of blues.00000.wav")
    os.makedirs(src / "rock" / "sub dir")
    shutil.copy(src / "blues" / "blues.00001.wav", src / "rock" / "sub dir" / "stolen.wav")
    write(src / "loose.wav", sine(440, 2, 22050), 22050)
    os.makedirs(src / "jazz")  # empty class folder
    write(src / "blues" / "Café (live) - take.2.v1.wav", sine(330, 2, 22050), 22050)
    expected = {"rock/empty.wav": "empty_file", "rock/notes.txt": "not_audio", "rock/silent.wav": "silent",
                "rock/nan.wav": "non_finite", "blues/short.wav": "too_short",
                "blues/copy of blues.00000.wav": "duplicate", "blues/blues.00001.wav": "label_conflict",
                "rock/sub dir/stolen.wav": "label_conflict", "loose.wav": "no_class_folder"}
    return src, expected


def all_files(src) -> set[str]:
    out = set()
    for root, _, files in os.walk(src):
        out |= {os.path.relpath(os.path.join(root, f), src) for f in files}
    return out


def test_every_input_file_is_sharded_or_rejected_with_reason(messy, tmp_path):
    src, expected = messy
    m = make_shards(str(src), str(tmp_path / "out"), val=0.2, test=0.2, workers=2, progress=False)
    sharded = [s["source"] for s in m["samples"]]
    rejected = {r["path"]: r["reason"] for r in m["rejects"]}
    assert len(sharded) == len(set(sharded))
    assert set(sharded).isdisjoint(rejected)
    assert set(sharded) | set(rejected) == all_files(src)  # nothing silently lost
    assert rejected == expected
    assert all(r["message"] for r in m["rejects"])
    assert m["empty_class_folders"] == ["jazz"]
    assert m["classes"] == ["blues", "rock"]
    assert "blues/Café (live) - take.2.v1.wav" in sharded  # odd names survive intact
    # the shards hold exactly the accepted samples, with dot-free keys
    keys = []
    for s in ("train", "val", "test"):
        for name in m["splits"][s]["shards"]:
            with tarfile.open(tmp_path / "out" / name) as tf:
                keys += [n.split(".", 1)[0] for n in tf.getnames() if n.endswith(".wav")]
            assert os.path.exists(tmp_path / "out" / (name[:-4] + ".idx"))
    assert sorted(keys) == sorted(s["key"] for s in m["samples"])
    assert all("." not in k for k in keys)
    assert sum(m["splits"][s]["count"] for s in ("train", "val", "test")) == len(sharded)
    assert not os.path.exists(tmp_path / "out" / ".work")


def test_splits_are_stratified_whole_tracks_and_seeded(tmp_path):
    src = tmp_path / "src"
    generate(str(src), per_class=10, seconds=1.5, genres=["blues", "pop", "rock"], progress=False)
    m1 = make_shards(str(src), str(tmp_path / "a"), val=0.2, test=0.2, seed=3, workers=1, progress=False)
    for s, n in (("train", 6), ("val", 2), ("test", 2)):
        assert m1["splits"][s]["per_class"] == {"blues": n, "pop": n, "rock": n}
    split_of = {}
    for smp in m1["samples"]:
        assert split_of.setdefault(smp["source"], smp["split"]) == smp["split"]
    m2 = make_shards(str(src), str(tmp_path / "b"), val=0.2, test=0.2, seed=3, workers=2, progress=False)
    for name in m1["splits"]["train"]["shards"]:  # same inputs and seed: byte-identical shards
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    m3 = make_shards(str(src), str(tmp_path / "c"), val=0.2, test=0.2, seed=4, workers=1, progress=False)
    assert {s["source"] for s in m3["samples"] if s["split"] == "test"} != \
           {s["source"] for s in m1["samples"] if s["split"] == "test"}


def _level_db(x: np.ndarray, rate: int, freq: float) -> float:
    w = np.hanning(len(x))
    spec = np.abs(np.fft.rfft(x * w)) / (w.sum() / 2)
    f = np.fft.rfftfreq(len(x), 1 / rate)
    band = (f > freq - 20) & (f < freq + 20)
    return 20 * np.log10(spec[band].max() + 1e-12)


def test_resampling_is_anti_aliased(tmp_path):
    """A 15 kHz tone at 44.1 kHz must vanish at 22.05 kHz, not fold down to 7,050 Hz."""
    path = write(tmp_path / "tone.wav", sine(15_000, 2, 44_100) + sine(1_000, 2, 44_100), 44_100, subtype="PCM_24")
    y = decode(path, 22_050).samples
    ref = _level_db(y, 22_050, 1_000)
    alias = _level_db(y, 22_050, 7_050)
    assert ref > -7.0  # the 1 kHz tone passes (0.5 amplitude: -6 dB)
    assert alias - ref < -60.0, f"alias at 7,050 Hz only {alias - ref:.1f} dB below the 1 kHz tone"


@pytest.mark.parametrize("subtype,fmt", [("PCM_U8", "WAV"), ("PCM_16", "WAV"), ("PCM_24", "WAV"), ("PCM_32", "WAV"),
                                         ("FLOAT", "WAV"), ("PCM_16", "FLAC"), ("VORBIS", "OGG"), ("OPUS", "OGG"),
                                         ("MPEG_LAYER_III", "MP3")])
def test_formats_decode_at_full_scale(tmp_path, subtype, fmt):
    """Every encoding decodes, downmixes and keeps its level (format found by content, not name)."""
    rate = 44_100 if subtype in ("MPEG_LAYER_III", "VORBIS") else 48_000  # Opus runs at 48 kHz
    x = sine(1_000, 2, rate, amp=0.99)
    stereo = np.stack([x, x], axis=1)
    path = write(tmp_path / "clip.bin", stereo, rate, subtype=subtype, fmt=fmt)
    d = decode(path, 22_050)
    assert d.channels == 2 and d.source_rate == rate
    peak_db = 20 * np.log10(np.sqrt(2) * np.sqrt(np.mean(d.samples[4000:-4000] ** 2)))
    tol = 0.1 if fmt in ("WAV", "FLAC") else 0.5  # lossy codecs move the level slightly
    assert abs(peak_db - 20 * np.log10(0.99)) < tol, f"{subtype}: {peak_db:.2f} dBFS"


def test_cli_reports_summary_and_bad_source(messy, tmp_path):
    src, _ = messy
    out = tmp_path / "out"
    p = subprocess.run([sys.executable, os.path.join(ROOT, "preprocess", "make_shards.py"), str(src), str(out),
                        "--workers", "1"], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert p.returncode == 0, p.stderr
    last = p.stdout.strip().splitlines()[-1]
    assert last.startswith("accepted 6 ") and "rejected 9" in last and "too_short 1" in last
    m = json.loads((out / "manifest.json").read_text())
    assert m["sample_rate"] == 22050 and m["feature_spec"]["n_mels"] == 128
    bad = run_main(main, [str(tmp_path / "nope"), str(out)])
    assert bad.returncode == 2
    assert bad.stderr.strip().count("\n") == 0 and "nope" in bad.stderr and "Traceback" not in bad.stderr


def test_verify_detects_a_flipped_byte(tmp_path):
    src = tmp_path / "src"
    generate(str(src), per_class=4, seconds=1.5, genres=["pop", "rock"], progress=False)
    out = tmp_path / "out"
    m = make_shards(str(src), str(out), val=0.25, test=0.25, workers=1, min_shards=2, progress=False)
    cli = ["--verify", str(out)]  # main() in this process (the CLI as a process: test_cli_reports_summary...)
    ok = run_main(main, cli)
    assert ok.returncode == 0 and "OK" in ok.stdout, ok.stderr
    shard = out / m["splits"]["train"]["shards"][0]
    with tarfile.open(shard) as tf:
        wav = next(mb for mb in tf.getmembers() if mb.name.endswith(".wav"))
    data = bytearray(shard.read_bytes())
    data[wav.offset_data + wav.size // 2] ^= 0xFF  # inside a sample's PCM
    shard.write_bytes(bytes(data))
    bad = run_main(main, cli)
    assert bad.returncode == 1
    assert f"{shard.name}: sample {wav.name[:-4]} member .wav differs from the manifest (audio checksum)" in bad.stderr
    (out / m["splits"]["val"]["shards"][0]).unlink()
    worse = run_main(main, cli)
    assert worse.returncode == 1 and "missing" in worse.stderr


@pytest.fixture(scope="module")
def small_shards(tmp_path_factory):
    base = tmp_path_factory.mktemp("verify")
    generate(str(base / "src"), per_class=3, seconds=1.2, genres=["pop", "rock"], progress=False)
    make_shards(str(base / "src"), str(base / "ref"), val=0, test=0, workers=1, min_shards=1, progress=False)
    return base / "ref"


@pytest.mark.parametrize("where", ["lab", "uid", "json", "cls", "padding", "idx"])
def test_verify_names_any_changed_byte(small_shards, tmp_path, where):
    """One byte changed in a label, a uid, the metadata, the class text, the tar's padding or the
    index: --verify fails and names the shard, sample and member (a flipped label would otherwise
    train silently on the wrong class)."""
    out = tmp_path / "out"
    shutil.copytree(small_shards, out)
    assert verify(str(out)) == []
    shard = out / "train-000000.tar"
    if where == "idx":
        idx = out / "train-000000.idx"
        idx.write_bytes(idx.read_bytes().replace(b"1", b"7", 1))
        assert verify(str(out)) == ["train-000000.idx: index differs from the one written with its shard"]
        return
    with tarfile.open(shard) as tf:
        member = next(mb for mb in tf.getmembers() if mb.name.endswith("." + ("lab" if where == "padding" else where)))
    data = bytearray(shard.read_bytes())
    # a data byte of the member, or (padding) a byte of the zeros that round it up to 512
    data[member.offset_data + (100 if where == "padding" else member.size - 1)] ^= 0x01
    shard.write_bytes(bytes(data))
    problems = verify(str(out))
    key = member.name.split(".")[0]
    if where == "padding":
        assert problems == ["train-000000.tar: file checksum differs from the manifest, outside the samples' members "
                            "(tar headers or padding)"]
    else:
        assert len(problems) == 1 and problems[0].startswith(
            f"train-000000.tar: sample {key} member .{where} differs from the manifest (holds "), problems


def test_stored_pcm_reads_back_as_the_decoded_samples(tmp_path):
    """Readers divide 16-bit PCM by 32768: storing must multiply by the same, or loud samples shift."""
    from features.audio import to_pcm16
    x = np.linspace(-1.0, 0.99996, 20001).astype(np.float32)
    path = tmp_path / "x.wav"
    sf.write(path, to_pcm16(x), 22050, subtype="PCM_16")
    y, _ = sf.read(path, dtype="float32")
    assert np.abs(y - x).max() <= 0.5 / 32768 + 1e-7
