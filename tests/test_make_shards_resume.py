"""make_shards: resume after SIGKILL to identical bytes, leftovers of a killed shard stage, the
.work cache's key, and truncated WAV files."""
import json
import os
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest

import preprocess.make_shards as ms
from audio_files import sine, truncate, write
from helpers import ROOT
from features.audio import decode
from preprocess.make_shards import Item, decode_one, make_shards, summary_line, verify
from preprocess.synth import generate
from core.faults import fault_env

RATE = 22_050
SCRIPT = os.path.join(ROOT, "preprocess", "make_shards.py")


def _tree(folder) -> dict[str, bytes]:
    return {name: (folder / name).read_bytes() for name in sorted(os.listdir(folder))}


def _cli(cmd: list[str], out, point: str | None = None, n: int = 0) -> subprocess.CompletedProcess:
    """Run the make_shards CLI into `out`; with a fault point, it SIGKILLs itself there at position N."""
    env = {k: v for k, v in os.environ.items() if k != "PT_TEST_FAULT"}
    if point:
        env.update(fault_env(point, n))
    return subprocess.run([c if c != "OUT" else str(out) for c in cmd], capture_output=True, text=True, cwd=ROOT,
                          env=env, timeout=300)


@pytest.fixture(scope="module")
def forty(tmp_path_factory):
    """20 clips of 2 s (5 classes) and the output of one uninterrupted CLI run over them: one
    sample per tar, so the shard stage writes 20 tars (10 train, 5 val, 5 test)."""
    base = tmp_path_factory.mktemp("resume")
    generate(str(base / "src"), per_class=4, seconds=2.0, genres=["blues", "disco", "jazz", "pop", "rock"],
             progress=False)
    cmd = [sys.executable, SCRIPT, str(base / "src"), "OUT", "--workers", "1", "--max-per-shard", "1"]
    ref = base / "ref"
    p = _cli(cmd, ref)
    assert p.returncode == 0, p.stderr
    assert sum(n.endswith(".tar") for n in os.listdir(ref)) == 20
    return base, cmd, ref


def test_sigkill_during_decode_then_rerun_gives_identical_bytes(forty):
    base, cmd, ref = forty
    out = base / "killed-decoding"
    killed = _cli(cmd, out, "decodes", 7)  # the real CLI kills itself after 7 of 20 files
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    work = sorted(os.listdir(out / ".work"))
    assert sum(n.endswith(".json") for n in work) == 7 and not any(".tmp" in n for n in work), work
    assert not (out / "manifest.json").exists() and not any(n.endswith(".tar") for n in os.listdir(out))

    # a tar left as .partial by a kill in the shard stage, and a stale shard, must not survive
    (out / "train-000000.tar.partial").write_bytes(b"half a tar")
    (out / "train-000000.idx.partial").write_bytes(b"half an index")
    (out / "val-000007.tar").write_bytes(b"from another run")
    p = _cli(cmd, out)
    assert p.returncode == 0, p.stderr
    assert _tree(out) == _tree(ref)  # same names, same bytes: tars, indexes and manifest
    assert not (out / ".work").exists()
    text = (out / "manifest.json").read_text()
    assert str(base) not in text and str(out) not in text


def test_sigkill_during_shard_writing_then_rerun_gives_identical_bytes(forty):
    """Killed while writing tar 13 of 20 (val-000002), in a folder that held a complete earlier run: the old
    manifest is gone (the folder reads as unfinished), the rerun produces the uninterrupted bytes."""
    base, cmd, ref = forty
    out = base / "killed-sharding"
    shutil.copytree(ref, out)  # a complete earlier run in the same folder
    killed = _cli(cmd, out, "shards", 12)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    names = set(os.listdir(out))
    tars = sorted(n for n in names if n.endswith(".tar"))
    assert len(tars) == 12 and all(n[:-4] + ".idx" in names for n in tars)  # 12 finished (of this run)...
    assert [n for n in names if n.endswith(".partial")] == ["val-000002.tar.partial"]  # ...and one half
    assert "manifest.json" not in names and ".work" in names
    with pytest.raises(ms.UsageError, match="no manifest"):
        verify(str(out))  # an interrupted folder never passes for a finished one
    p = _cli(cmd, out)
    assert p.returncode == 0, p.stderr
    assert _tree(out) == _tree(ref) and not verify(str(out))
    assert not (out / ".work").exists()


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
