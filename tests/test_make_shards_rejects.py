"""One test per reject reason code: a crafted input must land in `rejects` with exactly that code."""
import os
import shutil

import numpy as np
import pytest

from audio_files import broken_flac, no_frames_wav, sine, write
from preprocess.make_shards import make_shards
from preprocess.synth import generate

RATE = 22_050


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Three small runs (class folders, --list, --split gtzan-filtered); returns {path: reason} of all."""
    base = tmp_path_factory.mktemp("rejects")
    src = base / "src"
    generate(str(src), per_class=3, seconds=1.5, genres=["blues", "rock"], progress=False)
    (src / "rock" / "empty.wav").write_bytes(b"")
    (src / "rock" / "notes.txt").write_text("not audio")
    os.symlink(src / "rock" / "gone.wav", src / "rock" / "dangling.wav")  # unreadable, even for root
    broken_flac(src / "rock" / "broken.flac")
    no_frames_wav(src / "rock" / "noframes.wav")
    write(src / "blues" / "short.wav", sine(440, 0.3, RATE), RATE)
    nan = sine(440, 2, RATE)
    nan[100] = np.nan
    write(src / "rock" / "nan.wav", nan, RATE, subtype="FLOAT")
    write(src / "rock" / "silent.wav", np.zeros(RATE * 2), RATE)
    shutil.copy(src / "blues" / "blues.00000.wav", src / "blues" / "copy.wav")
    shutil.copy(src / "blues" / "blues.00001.wav", src / "rock" / "stolen.wav")
    write(src / "loose.wav", sine(440, 2, RATE), RATE)
    folder = make_shards(str(src), str(base / "out"), workers=1, min_shards=1, progress=False)

    (base / "list.csv").write_text("src/blues/blues.00002.wav,blues,train\n"
                                   "src/rock/rock.00000.wav,rock,val\n"
                                   "src/rock/rock.00001.wav,rock,test\n"
                                   "src/rock/nowhere.wav,rock,train\n"
                                   "src/rock/rock.00002.wav,rock,holdout\n")
    listed = make_shards(None, str(base / "out_list"), list_file=str(base / "list.csv"), workers=1,
                         min_shards=1, progress=False)

    gtzan = base / "gtzan" / "genres_original"
    os.makedirs(gtzan / "blues")
    for name, freq in (("blues.00012", 440), ("blues.00029", 550), ("blues.00000", 660), ("blues.00999", 770)):
        write(gtzan / "blues" / f"{name}.wav", sine(freq, 1.5, RATE), RATE)
    filtered = make_shards(str(base / "gtzan"), str(base / "out_gtzan"), split="gtzan-filtered", workers=1,
                           min_shards=1, progress=False)
    found = {}
    for m in (folder, listed, filtered):
        for r in m["rejects"]:
            assert r["message"], r
            found.setdefault(r["path"], set()).add(r["reason"])
    return found


@pytest.mark.parametrize("reason,path", [
    ("empty_file", "rock/empty.wav"),
    ("not_audio", "rock/notes.txt"),
    ("unreadable", "rock/dangling.wav"),
    ("decode_error", "rock/broken.flac"),
    ("zero_samples", "rock/noframes.wav"),
    ("too_short", "blues/short.wav"),
    ("non_finite", "rock/nan.wav"),
    ("silent", "rock/silent.wav"),
    ("duplicate", "blues/copy.wav"),
    ("label_conflict", "rock/stolen.wav"),
    ("label_conflict", "blues/blues.00001.wav"),
    ("no_class_folder", "loose.wav"),
    ("missing_file", "src/rock/nowhere.wav"),
    ("bad_split", "src/rock/rock.00002.wav"),
    ("not_in_split", "genres_original/blues/blues.00999.wav"),
])
def test_reject_reason(runs, reason, path):
    assert runs.get(path) == {reason}


def test_unreadable_permissions(tmp_path):
    """chmod 000 -> unreadable. Root reads such files anyway, so this one cannot run as root."""
    if os.geteuid() == 0:
        pytest.skip("running as root: chmod 000 does not stop root from reading (dangling symlink covers it)")
    src = tmp_path / "src"
    generate(str(src), per_class=2, seconds=1.5, genres=["pop"], progress=False)
    locked = write(src / "pop" / "locked.wav", sine(440, 2, RATE), RATE)
    os.chmod(locked, 0)
    try:
        m = make_shards(str(src), str(tmp_path / "out"), workers=1, min_shards=1, progress=False)
    finally:
        os.chmod(locked, 0o644)
    assert {r["path"]: r["reason"] for r in m["rejects"]} == {"pop/locked.wav": "unreadable"}
