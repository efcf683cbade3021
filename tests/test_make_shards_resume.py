"""make_shards: resume after SIGKILL to identical bytes, leftovers of a killed shard stage, the
.work cache's key, and truncated WAV files."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import preprocess.make_shards as ms
from audio_files import sine, truncate, write
from conftest import ROOT
from pipeline.audio import decode
from preprocess.make_shards import Item, decode_one, make_shards, summary_line, verify
from preprocess.synth import generate

RATE = 22_050
SCRIPT = os.path.join(ROOT, "preprocess", "make_shards.py")


def _tree(folder) -> dict[str, bytes]:
    return {name: (folder / name).read_bytes() for name in sorted(os.listdir(folder))}


@pytest.fixture(scope="module")
def forty(tmp_path_factory):
    """40 clips of 3 s and the output of one uninterrupted CLI run over them."""
    base = tmp_path_factory.mktemp("resume")
    generate(str(base / "src"), per_class=4, seconds=3.0, progress=False)
    cmd = [sys.executable, SCRIPT, str(base / "src"), "OUT", "--workers", "1", "--min-shards", "2"]
    ref = base / "ref"
    p = subprocess.run([c if c != "OUT" else str(ref) for c in cmd], capture_output=True, text=True, cwd=ROOT)
    assert p.returncode == 0, p.stderr
    return base, cmd, ref


def test_sigkill_during_decode_then_rerun_gives_identical_bytes(forty):
    base, cmd, ref = forty
    out = base / "killed"
    work = out / ".work"
    proc = subprocess.Popen([c if c != "OUT" else str(out) for c in cmd], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        if work.is_dir() and sum(n.endswith(".json") for n in os.listdir(work)) >= 3:
            break
        time.sleep(0.002)
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, "make_shards finished before it could be killed"
    done = sum(n.endswith(".json") for n in os.listdir(work))
    assert 3 <= done < 40 and not (out / "manifest.json").exists(), done
    print(f"killed after {done} of 40 decoded")

    # a tar left as .partial by a kill in the shard stage, and a stale shard, must not survive
    (out / "train-000000.tar.partial").write_bytes(b"half a tar")
    (out / "train-000000.idx.partial").write_bytes(b"half an index")
    (out / "val-000007.tar").write_bytes(b"from another run")
    p = subprocess.run([c if c != "OUT" else str(out) for c in cmd], capture_output=True, text=True, cwd=ROOT)
    assert p.returncode == 0, p.stderr
    assert _tree(out) == _tree(ref)  # same names, same bytes: tars, indexes and manifest
    text = (out / "manifest.json").read_text()
    assert str(base) not in text and str(out) not in text


def test_crash_in_shard_stage_leaves_no_complete_looking_folder(tmp_path, monkeypatch):
    src, out = tmp_path / "src", tmp_path / "out"
    generate(str(src), per_class=3, seconds=1.5, genres=["pop", "rock"], progress=False)
    kw = dict(val=0.34, test=0.34, workers=1, min_shards=2, progress=False)
    make_shards(str(src), str(tmp_path / "ref"), **kw)
    make_shards(str(src), str(out), **kw)  # a complete earlier run in the same folder
    real, calls = ms.write_shard, []

    def dies_in_second_shard(path, *a):
        calls.append(path)
        if len(calls) == 2:
            with open(path + ".partial", "wb") as f:
                f.write(b"half a tar")
            raise KeyboardInterrupt  # stands in for SIGKILL: nothing after this line runs
        real(path, *a)

    monkeypatch.setattr(ms, "write_shard", dies_in_second_shard)
    with pytest.raises(KeyboardInterrupt):
        make_shards(str(src), str(out), **kw)
    monkeypatch.undo()
    assert (out / "train-000001.tar.partial").exists() and not (out / "manifest.json").exists()
    with pytest.raises(ms.UsageError, match="no manifest"):
        verify(str(out))  # an interrupted folder never passes for a finished one
    make_shards(str(src), str(out), **kw)
    assert _tree(out) == _tree(tmp_path / "ref") and not verify(str(out))


def test_work_cache_is_keyed_on_decoding_options_and_source(tmp_path):
    clip = write(tmp_path / "a.wav", sine(440, 1.5, RATE), RATE)
    work = tmp_path / "work"
    os.makedirs(work)
    item = Item(clip, "a.wav", "pop")
    opts = {"sample_rate": RATE, "min_seconds": 1.0, "max_seconds": 600.0, "decoder": ms.DECODER_VERSION}
    first = decode_one((item, "k", str(work), opts))
    assert first["ok"] and first["frames"] == int(1.5 * RATE)
    meta = work / "k.json"
    meta.write_text(json.dumps({**json.loads(meta.read_text()), "marker": 1}))
    assert decode_one((item, "k", str(work), opts)).get("marker") == 1  # same options: reused
    assert decode_one((Item(clip, "a.wav", "rock"), "k", str(work), opts))["label"] == "rock"  # label from now
    assert decode_one((item, "k", str(work), {**opts, "min_seconds": 2.0}))["reason"] == "too_short"
    assert decode_one((item, "k", str(work), {**opts, "sample_rate": 16_000}))["frames"] == int(1.5 * 16_000)
    assert decode_one((item, "k", str(work), {**opts, "max_seconds": 1.2}))["frames"] == int(1.2 * RATE)
    write(clip, sine(440, 1.25, RATE), RATE)  # the source changed (size, mtime)
    assert decode_one((item, "k", str(work), opts))["frames"] == int(1.25 * RATE)

    # through make_shards: a record cached under --min-seconds 0.5 is not reused under 1.0
    src = tmp_path / "src"
    os.makedirs(src / "pop")
    write(src / "pop" / "short.wav", sine(440, 0.8, RATE), RATE)
    write(src / "pop" / "long.wav", sine(660, 1.5, RATE), RATE)
    items, _, _ = ms.find_inputs(str(src))
    os.makedirs(tmp_path / "out" / ".work")
    for it in items:
        assert decode_one((it, ms.sample_key(it), str(tmp_path / "out" / ".work"), {**opts, "min_seconds": 0.5}))["ok"]
    m = make_shards(str(src), str(tmp_path / "out"), val=0, test=0, workers=1, min_seconds=1.0, progress=False)
    assert [(r["path"], r["reason"]) for r in m["rejects"]] == [("pop/short.wav", "too_short")]


def test_truncated_wav_is_accepted_with_a_warning(tmp_path):
    """Header promises 3 s; the file holds less. Enough left: kept, warned. Too little: too_short."""
    src = tmp_path / "src"
    generate(str(src), per_class=2, seconds=1.5, genres=["pop"], progress=False)
    cut = truncate(write(src / "pop" / "cut.wav", sine(440, 3, RATE), RATE), 0.6)
    stub = truncate(write(src / "pop" / "stub.wav", sine(550, 3, RATE), RATE), 0.2)
    held = (os.path.getsize(cut) - 44) // 2  # 16-bit mono after a 44-byte header
    m = make_shards(str(src), str(tmp_path / "out"), val=0, test=0, workers=1, min_shards=1, progress=False)
    smp = {s["source"]: s for s in m["samples"]}
    assert smp["pop/cut.wav"]["warnings"] == [f"truncated: header says {3 * RATE} frames, file holds {held}"]
    assert smp["pop/cut.wav"]["duration"] == pytest.approx(held / RATE, abs=1e-4)
    assert "warnings" not in smp["pop/pop.00000.wav"]
    (reject,) = m["rejects"]
    assert reject["path"] == "pop/stub.wav" and reject["reason"] == "too_short" and "truncated" in reject["message"]
    assert summary_line(m).endswith("1 with warnings (see manifest)")


def test_truncated_24bit_stereo_mid_frame(tmp_path):
    x = sine(440, 2, 48_000)
    path = truncate(write(tmp_path / "s.wav", np.stack([x, x], 1), 48_000, subtype="PCM_24"), 0.7)
    d = decode(path, RATE)
    held = (os.path.getsize(path) - 44) // 6
    assert d.warnings == [f"truncated: header says {2 * 48_000} frames, file holds {held}"]
    assert d.source_frames == held
    assert decode(write(tmp_path / "ok.wav", x, 48_000), RATE).warnings == []
