"""make_shards' output layout (README, Shards): --max-seconds clipping and the `clipped` flag, at
most --max-per-shard samples per tar, at least --min-shards tars per split, classes interleaved
within shards, and a val and a test track for every class of at least 3 tracks."""
import io
import json
import os
import subprocess
import sys
import tarfile

import numpy as np
import pytest
import soundfile as sf

from audio_files import sine, write
from helpers import ROOT
from features.audio import decode, to_pcm16
from preprocess.make_shards import SPLITS, make_shards, split_tracks
from preprocess.synth import generate

RATE = 22_050
SCRIPT = os.path.join(ROOT, "preprocess", "make_shards.py")


def _tar_samples(path) -> list[dict]:
    """The samples of one tar, in order: {key: {ext: bytes}}."""
    out: dict[str, dict[str, bytes]] = {}
    with tarfile.open(path) as tf:
        for mb in tf:
            key, ext = mb.name.split(".", 1)
            out.setdefault(key, {})[ext] = tf.extractfile(mb).read()
    return [dict(v, key=k) for k, v in out.items()]


def test_max_seconds_keeps_the_start_of_long_tracks_and_marks_them_clipped(tmp_path):
    src = tmp_path / "src"
    os.makedirs(src / "pop")
    rng = np.random.default_rng(0)
    long_x = np.stack([sine(440, 5.0, 44_100), 0.1 * rng.standard_normal(5 * 44_100)], axis=1)
    write(src / "pop" / "long.wav", long_x, 44_100)                       # 5 s stereo at 44.1 kHz
    write(src / "pop" / "exact.wav", sine(550, 2.0, RATE), RATE)           # exactly at the limit
    write(src / "pop" / "short.wav", sine(660, 1.5, RATE), RATE)
    out = tmp_path / "out"
    p = subprocess.run([sys.executable, SCRIPT, str(src), str(out), "--max-seconds", "2", "--val", "0", "--test", "0",
                        "--workers", "1", "--min-shards", "1"], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert p.returncode == 0, p.stderr
    m = json.loads((out / "manifest.json").read_text())
    smp = {s["source"]: s for s in m["samples"]}
    assert {k: (v["clipped"], v["duration"]) for k, v in smp.items()} == {
        "pop/long.wav": (True, 2.0), "pop/exact.wav": (False, 2.0), "pop/short.wav": (False, 1.5)}
    (tar,) = m["splits"]["train"]["shards"]
    stored = {s["key"]: sf.read(io.BytesIO(s["wav"]), dtype="int16")[0] for s in _tar_samples(out / tar)}
    long_pcm = stored[smp["pop/long.wav"]["key"]]
    assert len(long_pcm) == 2 * RATE
    whole = to_pcm16(decode(str(src / "pop" / "long.wav"), RATE).samples)  # the first 2 s of the track
    assert np.abs(long_pcm[: int(1.9 * RATE)].astype(int) - whole[: int(1.9 * RATE)]).max() <= 1
    # no limit: the whole track, not clipped
    m0 = make_shards(str(src), str(tmp_path / "nolimit"), val=0, test=0, workers=1, min_shards=1, max_seconds=None,
                     progress=False)
    assert {s["source"]: (s["clipped"], s["duration"]) for s in m0["samples"]}["pop/long.wav"] == (False, 5.0)


@pytest.fixture(scope="module")
def uneven_src(tmp_path_factory):
    """blues: 3 tracks, pop and rock: 10 each (1.2 s)."""
    src = tmp_path_factory.mktemp("layout") / "src"
    generate(str(src), per_class=3, seconds=1.2, genres=["blues"], progress=False)
    generate(str(src), per_class=10, seconds=1.2, genres=["pop", "rock"], seed=1, progress=False)
    return src


def _layout(out, m) -> dict[str, list[list[str]]]:
    """Labels of each tar's samples, per split, read from the tars themselves."""
    classes = m["classes"]
    return {s: [[classes[int(x["cls"])] for x in _tar_samples(out / name)] for name in m["splits"][s]["shards"]]
            for s in SPLITS}


@pytest.mark.parametrize("max_per_shard,min_shards,expect", [
    (5, 2, {"train": 4, "val": 2, "test": 2}),     # train: 17 samples, at most 5 per tar -> 4 tars
    (256, 4, {"train": 4, "val": 3, "test": 3}),   # at least 4 tars, but never an empty one (val: 3 samples)
])
def test_shards_respect_max_per_shard_and_min_shards_and_mix_classes(uneven_src, tmp_path, max_per_shard,
                                                                      min_shards, expect):
    out = tmp_path / "out"
    m = make_shards(str(uneven_src), str(out), val=0.1, test=0.1, workers=1, max_per_shard=max_per_shard,
                    min_shards=min_shards, progress=False)
    layout = _layout(out, m)
    assert {s: len(t) for s, t in layout.items()} == expect
    for s, tars in layout.items():
        assert all(1 <= len(t) <= max_per_shard for t in tars), (s, [len(t) for t in tars])
        assert sum(len(t) for t in tars) == m["splits"][s]["count"]
        assert max(len(t) for t in tars) - min(len(t) for t in tars) <= 1  # evenly filled
    # every class of >= 3 tracks (blues has exactly 3) has a val and a test track
    for s in ("val", "test"):
        assert m["splits"][s]["per_class"] == {"blues": 1, "pop": 1, "rock": 1}
    # classes interleaved: the training order is not grouped by class (it would be, sorted by key)
    train = [label for t in layout["train"] for label in t]
    changes = sum(a != b for a, b in zip(train, train[1:]))
    assert len(train) == 17 and changes >= 7, train
    assert all(len(set(t)) >= 2 for t in layout["train"]), layout["train"]  # no single-class tar


def test_every_class_of_three_or_more_tracks_gets_a_val_and_a_test_track():
    sizes = {"a": 1, "b": 2, "c": 3, "d": 4, "e": 7, "f": 25}
    records = [{"label": c, "source": f"{c}/{i}.wav", "key": f"{c}_{i}"} for c, n in sizes.items() for i in range(n)]
    for seed in range(5):
        for val, test in ((0.1, 0.1), (0.05, 0.2), (0.01, 0.01)):
            out = split_tracks(records, sorted(sizes), val, test, seed)
            got = {s: [r["label"] for r in out[s]] for s in SPLITS}
            assert sorted(sum(got.values(), [])) == sorted(r["label"] for r in records)  # each track once
            for c, n in sizes.items():
                per = {s: got[s].count(c) for s in SPLITS}
                if n >= 3:
                    assert per["val"] >= 1 and per["test"] >= 1 and per["train"] >= 1, (c, per, val, test)
                else:
                    assert per["train"] == n, (c, per)
    out = split_tracks(records, sorted(sizes), 0.0, 0.1, 0)  # no val asked for: none
    assert out["val"] == []


# The shards of this input as b62ec8d wrote them (before the shard writer moved into core/shards.py
# and make_shards became stages): sha256 prefixes. The same input must give the same bytes.
GOLDEN = {
    "labeled": {
        "test-000000.idx": "6ea4573116b59c9a",
        "test-000000.tar": "4e772f2be64d0030",
        "test-000001.idx": "1ee77a943d6f4786",
        "test-000001.tar": "e1d0b5a698f778b8",
        "train-000000.idx": "9022b8592b6ffacd",
        "train-000000.tar": "873b98177b796de6",
        "train-000001.idx": "fa2b62c3c62cf573",
        "train-000001.tar": "7a8a17d08a88e69e",
        "val-000000.idx": "bb698f858b116848",
        "val-000000.tar": "1bc940fc534c4dff",
        "val-000001.idx": "1538f84933d40dc9",
        "val-000001.tar": "ccb93627a42fb1f1"
    },
    "unlabeled": {
        "all-000000.idx": "e8273472633c1b81",
        "all-000000.tar": "5efe57ba90a863a6",
        "all-000001.idx": "2a39b5154d94731c",
        "all-000001.tar": "45531120b6d1a04a"
    }
}


def test_shards_are_byte_identical_to_those_of_b62ec8d(tmp_path):
    """Integer PCM (no float math that could differ between machines) in, the old commit's tar and
    index bytes out, labeled and unlabeled. The manifest changed on purpose since (version 3: sizes)."""
    import hashlib

    import numpy as np
    import soundfile as sf

    rng = np.random.default_rng(11)
    for c in ("blues", "jazz", "rock"):
        os.makedirs(tmp_path / "src" / c)
        for i in range(3):
            x = rng.integers(-8000, 8000, size=22050 * 2 + 37 * i, dtype=np.int16)
            sf.write(str(tmp_path / "src" / c / f"{c}.{i:05d}.wav"), x, 22050, subtype="PCM_16")
    for mode, want in GOLDEN.items():
        out = tmp_path / mode
        make_shards(str(tmp_path / "src"), str(out), workers=1, min_shards=2, progress=False,
                    unlabeled=mode == "unlabeled")
        got = {n: hashlib.sha256((out / n).read_bytes()).hexdigest()[:16]
               for n in sorted(os.listdir(out)) if n.endswith((".tar", ".idx"))}
        assert got == want, mode
