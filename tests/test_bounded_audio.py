"""Bounded audio: what a header declares never sizes our memory.

A 10-hour FLAC (9 MB on disk) is clipped to --max-seconds in predict.py and make_shards, with peak
memory measured; a FLAC declaring 1 MHz is refused before it is read; a shard whose WAV member is
anything but the format's 16-bit PCM mono at the spec's rate is refused when the stream opens it,
before DALI decodes a byte of it.
"""
import io
import os
import subprocess
import sys
import tarfile
import types

import numpy as np
import pytest
import soundfile as sf
from helpers import ROOT

from core import checkpoint
from core.shards import parse_manifest, wav_member_frames, write_shard
from core.spec import FeatureSpec
from loading.stream import SampleStream, rank_share
from model import build_model
from preprocess.make_shards import make_shards
from storage.cache import LocalFiles

RATE = FeatureSpec().sample_rate


def ten_hour_flac(path: str) -> None:
    """10 h at 1 kHz: 10-minute blocks of a 110 Hz tone and of silence (9 MB; 36 M frames that would
    resample to 794 M samples, 3.2 GB, if decoded whole)."""
    rate, block = 1000, 600 * 1000
    tone = (3000 * np.sin(2 * np.pi * 110 * np.arange(block) / rate)).astype(np.int16)
    with sf.SoundFile(path, "w", rate, 1, subtype="PCM_16", format="FLAC") as f:
        for i in range(60):
            f.write(tone if i % 2 == 0 else np.zeros(block, np.int16))


def megahertz_flac(path: str) -> None:
    """A real FLAC whose STREAMINFO is patched to declare 1,000,000 Hz (libFLAC reads it as such)."""
    x = (3000 * np.sin(2 * np.pi * 440 * np.arange(44100 * 2) / 44100)).astype(np.int16)
    sf.write(path, x, 44100, subtype="PCM_16", format="FLAC")
    b = bytearray(open(path, "rb").read())
    sr = 1_000_000  # 20 bits at byte 18 of the file: fLaC, block header, 10 bytes of block sizes
    b[18], b[19], b[20] = (sr >> 12) & 0xFF, (sr >> 4) & 0xFF, (b[20] & 0x0F) | ((sr & 0xF) << 4)
    open(path, "wb").write(b)
    assert sf.info(path).samplerate == sr


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory) -> str:
    path = str(tmp_path_factory.mktemp("ckpt") / "tiny.pt")
    checkpoint.save(path, {"model_name": "tiny", "model": build_model("tiny", 2).state_dict(), "classes": ["a", "b"],
                           "feature_spec": FeatureSpec().to_dict()})
    return path


def run_measured(cmd: list[str], tmp_path) -> tuple[int, str, str, float]:
    """(exit code, stdout, stderr, peak RSS in MB) of one child process (os.wait4: this child only,
    not the maximum over every child this test worker has had)."""
    with open(tmp_path / "out", "w+b") as out, open(tmp_path / "err", "w+b") as err:
        p = subprocess.Popen(cmd, stdout=out, stderr=err, cwd=ROOT)
        _, status, usage = os.wait4(p.pid, 0)
        p.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        return p.returncode, out.read().decode(), err.read().decode(), usage.ru_maxrss / 1024


def test_predict_clips_a_ten_hour_flac_in_bounded_memory(tmp_path, tiny_ckpt):
    song = str(tmp_path / "ten hours.flac")
    ten_hour_flac(song)
    rc, out, err, peak_mb = run_measured([sys.executable, os.path.join(ROOT, "predict.py"), "--checkpoint", tiny_ckpt,
                                          song], tmp_path)
    assert rc == 0, err[-2000:]
    assert "clipped: classified the first 600.0 s of 36000.0 s (--max-seconds)" in out
    # decoded whole, the resampled signal alone is 3.2 GB; clipped, 600 s at 22,050 Hz is 53 MB
    assert peak_mb < 1200, f"peak RSS {peak_mb:.0f} MB"
    print(f"peak RSS {peak_mb:.0f} MB")
    rc, out, err, _ = run_measured([sys.executable, os.path.join(ROOT, "predict.py"), "--checkpoint", tiny_ckpt,
                                    "--max-seconds", "30", song], tmp_path)
    assert rc == 0 and "first 30.0 s of 36000.0 s" in out, err[-2000:]


def test_a_flac_declaring_one_megahertz_is_refused_before_decoding(tmp_path, tiny_ckpt):
    bad = str(tmp_path / "mhz.flac")
    megahertz_flac(bad)
    p = subprocess.run([sys.executable, os.path.join(ROOT, "predict.py"), "--checkpoint", tiny_ckpt, bad],
                       capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert p.stderr.strip().splitlines() == [f"predict: error: {bad}: sample rate 1000000 Hz is above the 384000 Hz "
                                             f"supported"]


def test_make_shards_clips_long_and_rejects_megahertz_files(tmp_path):
    src = tmp_path / "src"
    os.makedirs(src / "a")
    os.makedirs(src / "b")
    ten_hour_flac(str(src / "a" / "long.flac"))
    megahertz_flac(str(src / "b" / "mhz.flac"))
    x = 0.1 * np.random.default_rng(0).standard_normal(RATE * 3)
    sf.write(str(src / "b" / "ok.wav"), x, RATE, subtype="PCM_16")
    m = make_shards(str(src), str(tmp_path / "shards"), val=0, test=0, workers=1, min_shards=1, progress=False)
    (long,) = [s for s in m["samples"] if s["source"] == os.path.join("a", "long.flac")]
    assert long["clipped"] is True and long["duration"] == 600.0
    assert [(r["path"], r["reason"]) for r in m["rejects"]] == [(os.path.join("b", "mhz.flac"), "unsupported_rate")]


# ------------------------------------------------------------------ shard members handed to DALI

def _wav(x: np.ndarray, rate: int, **kw) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, x, rate, format=kw.pop("format", "WAV"), subtype=kw.pop("subtype", "PCM_16"))
    return buf.getvalue()


def test_wav_member_check_takes_the_format_and_nothing_else():
    x = (0.1 * np.sin(np.arange(RATE) / 10)).astype(np.float32)
    good = _wav(x, RATE)
    assert wav_member_frames(good, RATE, RATE, "s") == RATE
    bad = {
        "flac": _wav(x, RATE, format="FLAC"),
        "rate": _wav(x, 44100),
        "stereo": _wav(np.stack([x, x], 1), RATE),
        "float": _wav(x, RATE, subtype="FLOAT"),
        "lying size": good[:40] + (10 ** 9).to_bytes(4, "little") + good[44:],
        "too long": _wav(np.tile(x, 3), RATE),
        "cut": good[:1000],
    }
    for what, member in bad.items():
        with pytest.raises(ValueError) as e:
            wav_member_frames(member, RATE, RATE, "shard sample 3")
        assert str(e.value).startswith("shard sample 3: .wav member"), what
        assert "\n" not in str(e.value)


def test_the_stream_refuses_a_shard_holding_a_flac_member(tmp_path):
    """A tar whose .wav member is a FLAC (which DALI would decode, at any ratio) is refused when the
    stream opens the shard: one line naming the shard and the sample."""
    src = tmp_path / "src"
    for ci, c in enumerate(("a", "b")):
        os.makedirs(src / c)
        for i in range(3):
            x = 0.1 * np.random.default_rng([ci, i]).standard_normal(RATE * 2)
            sf.write(str(src / c / f"{i}.wav"), x, RATE, subtype="PCM_16")
    shards = str(tmp_path / "shards")
    make_shards(str(src), shards, val=0, test=0, workers=1, min_shards=1, progress=False)
    m = parse_manifest(open(os.path.join(shards, "manifest.json"), "rb").read(), shards)
    (name,) = m.splits["train"].shards
    with tarfile.open(os.path.join(shards, name)) as tf:
        wavs = {mem.name.split(".")[0]: tf.extractfile(mem).read() for mem in tf if mem.name.endswith(".wav")}
    records = [dict(s.to_dict(), key=s.key) for s in m.samples if s.shard == name]
    victim = records[1]["key"]
    pcm, _ = sf.read(io.BytesIO(wavs[victim]), dtype="int16")
    flac = _wav(pcm, RATE, format="FLAC")
    write_shard(os.path.join(shards, name), records, lambda k: flac if k == victim else wavs[k],
                {c: i for i, c in enumerate(m.classes)})
    counts = [sum(s.shard == name for s in m.samples)]
    stream = SampleStream(LocalFiles(shards), rank_share([name], counts, 0, 1), 2, shuffle=False, seed=0, rank=0,
                          rate=RATE, max_frames=RATE * 3)
    with pytest.raises(ValueError) as e:
        stream(types.SimpleNamespace(epoch_idx=0, iteration=0))
    assert str(e.value) == f"{os.path.join(shards, name)} sample 1: .wav member is not a RIFF/WAVE file"


def test_without_max_seconds_the_decoder_caps_what_it_reads_and_makes(tmp_path, monkeypatch):
    """--max-seconds 0 leaves the decoder's own cap: MAX_SOURCE_FRAMES read, and no more made by
    upsampling a low-rate file (a 1 kHz file's frames become 22x as many samples)."""
    from features import audio
    monkeypatch.setattr(audio, "MAX_SOURCE_FRAMES", 22050 * 4)
    path = str(tmp_path / "low.flac")
    x = (3000 * np.sin(2 * np.pi * 110 * np.arange(1000 * 60) / 1000)).astype(np.int16)
    sf.write(path, x, 1000, subtype="PCM_16", format="FLAC")
    d = audio.decode(path, 22050, None)
    assert d.clipped and len(d.samples) == 22050 * 4 and d.source_frames == 60_000
    d = audio.decode(path, 22050, 2.0)
    assert d.clipped and len(d.samples) == 22050 * 2


def test_launched_ranks_keep_the_folders_max_seconds(tmp_path):
    """predict.py --nproc N FOLDER --out: the ranks get the folder's --min-seconds and --max-seconds
    (rank 0 writes them into the summary that decides whether a rerun is up to date)."""
    import predict
    from predict_collection import Job, rank_args
    for given, want in ((30.0, 30.0), (None, 0.0)):
        job = Job(out=str(tmp_path / "p.jsonl"), fmt="jsonl", shard_dir=str(tmp_path / "p.jsonl.shards"),
                  checkpoint=["c.pt"], source_root=None, timeline_hop=None, batch_size=None, threads=None, cpu=True,
                  eager=False, amp=False, folder=str(tmp_path), min_seconds=2.0, max_seconds=given)
        args = predict.parse_args(rank_args(job))
        assert (args.min_seconds, args.max_seconds, args.max_seconds or None) == (2.0, want, given)
