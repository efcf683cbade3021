"""One validation for make_shards and predict.py (issue #11 item 6): features.audio.validate.

The same crafted files go through both tools as a user runs them (the CLIs, default options):
what make_shards rejects predict.py refuses (one stderr line naming the file and the reason, the
other files still predicted, exit 2) unless --allow-short; what make_shards keeps with a warning
predict.py predicts with the same warning (text and --json).

The checkpoint here is an untrained tiny model: the verdicts are the validation's, not the
model's, so these tests need no training run (the trained model's case is in
test_train_predict.py, with the shared `trained_run`).
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from audio_files import sine, truncate, write
from helpers import run_main
from model import build_model
from features.audio import MIN_SECONDS, AudioError, decode, validate
from core.spec import FeatureSpec
from core import checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PREDICT = os.path.join(ROOT, "predict.py")
MAKE_SHARDS = os.path.join(ROOT, "preprocess", "make_shards.py")
SPEC = FeatureSpec(clip_seconds=2.0)
RATE = SPEC.sample_rate
HINT = "; --allow-short predicts it anyway"


def _run(args: list[str]) -> subprocess.CompletedProcess:
    """make_shards as a process; predict.py's main in this process (helpers.run_main: a process would
    add only torch's import; predict.py runs as a process in test_train_predict.py and
    test_odd_inputs.py)."""
    if args[0] != PREDICT:
        return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=ROOT, timeout=300)
    import predict
    return run_main(predict.main, args[1:])


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> str:
    torch.manual_seed(0)
    path = str(tmp_path_factory.mktemp("ckpt") / "tiny.pt")
    checkpoint.save(path, {"model_name": "tiny", "model": build_model("tiny", 3).state_dict(),
                           "classes": ["a", "b", "c"], "feature_spec": SPEC.to_dict()})
    return path


def _held(path: str) -> int:
    return (os.path.getsize(path) - 44) // 2  # 16-bit mono after a 44-byte header


# file -> (verdict: "ok" or make_shards' reject reason, warnings when ok / words in the message when not)
def _craft(folder) -> dict[str, tuple[str, list[str]]]:
    os.makedirs(folder, exist_ok=True)
    j = lambda name: os.path.join(folder, name)  # noqa: E731
    write(j("song.wav"), sine(440, 3, RATE), RATE)
    write(j("exactly_min.wav"), sine(330, MIN_SECONDS, RATE), RATE)              # the boundary is kept
    write(j("just_under.wav"), sine(330, MIN_SECONDS - 0.01, RATE), RATE)
    write(j("clip_0.2s.wav"), sine(550, 0.2, RATE), RATE)                         # the 0.2 s clip
    write(j("clip_0.5s_44k.flac"), sine(660, 0.5, 44_100), 44_100, fmt="FLAC")    # resampled first
    cut = truncate(write(j("cut.wav"), sine(440, 3, RATE), RATE), 0.6)            # 1.8 s of a promised 3
    stub = truncate(write(j("stub.wav"), sine(770, 3, RATE), RATE), 0.2)          # 0.6 s of a promised 3
    write(j("silent.wav"), np.zeros(2 * RATE), RATE)
    with open(j("notes.wav"), "w") as f:
        f.write("not audio at all\n" * 20)
    truncated = lambda p: f"truncated: header says {3 * RATE} frames, file holds {_held(p)}"  # noqa: E731
    return {
        "song.wav": ("ok", []),
        "exactly_min.wav": ("ok", []),
        "just_under.wav": ("too_short", ["0.99 s is shorter than --min-seconds 1"]),
        "clip_0.2s.wav": ("too_short", ["0.20 s is shorter than --min-seconds 1"]),
        "clip_0.5s_44k.flac": ("too_short", ["0.50 s is shorter than --min-seconds 1"]),
        "cut.wav": ("ok", [truncated(cut)]),
        "stub.wav": ("too_short", ["0.60 s is shorter than --min-seconds 1", truncated(stub)]),
        "silent.wav": ("silent", ["digital silence"]),
        "notes.wav": ("not_audio", ["not a readable audio file"]),
    }


def _predict_verdicts(p: subprocess.CompletedProcess, files: list[str]) -> tuple[dict, dict]:
    """({file: warnings} of the predicted files, {file: message} of the refused ones) from --json."""
    results = {r["file"]: r for r in json.loads(p.stdout)["results"]}
    refused = {}
    for line in p.stderr.strip().splitlines():
        prefix = "predict: error: "
        assert line.startswith(prefix), p.stderr
        path, msg = line[len(prefix):].split(": ", 1)
        assert path not in refused, f"two lines for {path}"
        refused[path] = msg
    assert set(results) | set(refused) == set(files) and not set(results) & set(refused), p.stderr
    for r in results.values():
        assert r["genre"] in "abc" and r["probabilities"]
    return {f: r["warnings"] for f, r in results.items()}, refused


def test_make_shards_and_predict_give_the_same_verdicts(tmp_path, ckpt):
    """One table of crafted files; make_shards (CLI, default --min-seconds) and predict.py (CLI,
    default --min-seconds) each judge them; both must match the table and each other."""
    table = _craft(tmp_path / "src" / "pop")
    ms = _run([MAKE_SHARDS, str(tmp_path / "src"), str(tmp_path / "out"), "--val", "0", "--test", "0",
               "--workers", "1", "--min-shards", "1"])
    assert ms.returncode == 0, ms.stderr[-2000:]
    m = json.load(open(tmp_path / "out" / "manifest.json"))
    assert m["options"]["min_seconds"] == MIN_SECONDS
    kept = {os.path.basename(s["source"]): s.get("warnings", []) for s in m["samples"]}
    rejected = {os.path.basename(r["path"]): r for r in m["rejects"]}

    files = [str(tmp_path / "src" / "pop" / name) for name in table]
    p = _run([PREDICT, "--checkpoint", ckpt, "--json", *files])
    assert p.returncode == 2, p.stderr
    predicted, refused = _predict_verdicts(p, files)
    predicted = {os.path.basename(f): w for f, w in predicted.items()}
    refused = {os.path.basename(f): msg for f, msg in refused.items()}

    for name, (verdict, words) in table.items():
        if verdict == "ok":
            assert kept[name] == predicted[name] == words, name
        else:
            r = rejected[name]
            assert r["reason"] == verdict and all(w in r["message"] for w in words), (name, r)
            # predict's line carries make_shards' message, word for word (the one validate's)
            want = f"too short: {r['message']}{HINT}" if verdict == "too_short" else r["message"]
            assert refused[name] == want, name
    assert len(kept) + len(rejected) == len(table)

    # --allow-short: every too_short file is predicted, with its warnings and one "too short" more
    allow = _run([PREDICT, "--checkpoint", ckpt, "--json", "--allow-short", *files])
    assert allow.returncode == 2, allow.stderr  # silent.wav and notes.wav are still refused
    predicted, refused = _predict_verdicts(allow, files)
    predicted = {os.path.basename(f): w for f, w in predicted.items()}
    assert set(refused) == {str(tmp_path / "src" / "pop" / n) for n in ("silent.wav", "notes.wav")}
    for name, (verdict, words) in table.items():
        if verdict == "too_short":
            secs = words[0].split(" s ")[0]
            assert predicted[name] == [*words[1:], f"too short: {secs} s is shorter than --min-seconds 1"], name
        elif verdict == "ok":
            assert predicted[name] == words, name


def test_short_clip_is_refused_the_others_predicted_and_allow_short_predicts_it(tmp_path, ckpt):
    song = write(tmp_path / "song.wav", sine(440, 3, RATE), RATE)
    clip = write(tmp_path / "clip.wav", sine(550, 0.2, RATE), RATE)
    p = _run([PREDICT, "--checkpoint", ckpt, clip, song])
    assert p.returncode == 2
    assert p.stderr.strip().splitlines() == [
        f"predict: error: {clip}: too short: 0.20 s is shorter than --min-seconds 1{HINT}"]
    assert p.stdout.splitlines()[0].startswith(f"{song}: ") and len(p.stdout.splitlines()) == 1

    ok = _run([PREDICT, "--checkpoint", ckpt, "--allow-short", clip, song])
    assert ok.returncode == 0, ok.stderr
    lines = ok.stdout.splitlines()
    assert lines[0].startswith(f"{clip}: ") and lines[2].startswith(f"{song}: ") and len(lines) == 3
    assert lines[1] == "  warning: too short: 0.20 s is shorter than --min-seconds 1"

    # predict's own --min-seconds moves the line, as make_shards' does
    low = _run([PREDICT, "--checkpoint", ckpt, "--min-seconds", "0.1", clip])
    assert low.returncode == 0 and low.stderr == "" and len(low.stdout.splitlines()) == 1, low.stderr
    high = _run([PREDICT, "--checkpoint", ckpt, "--min-seconds", "5", song])
    assert high.returncode == 2 and "3.00 s is shorter than --min-seconds 5" in high.stderr


def test_a_clip_too_short_for_one_feature_frame_is_refused_even_with_allow_short(tmp_path, ckpt):
    crumb = write(tmp_path / "crumb.wav", sine(440, 0.005, RATE), RATE)  # 110 samples < n_fft / 2
    song = write(tmp_path / "song.wav", sine(440, 3, RATE), RATE)
    p = _run([PREDICT, "--checkpoint", ckpt, "--allow-short", crumb, song])
    assert p.returncode == 2
    assert p.stderr.strip().splitlines() == [
        f"predict: error: {crumb}: too short: 110 samples, fewer than the {SPEC.n_fft // 2 + 1} one feature frame needs"]
    assert p.stdout.startswith(f"{song}: ")


def test_truncated_wav_is_predicted_with_the_warning_in_text_and_json(tmp_path, ckpt):
    cut = truncate(write(tmp_path / "cut.wav", sine(440, 3, RATE), RATE), 0.6)
    song = write(tmp_path / "song.wav", sine(440, 3, RATE), RATE)
    warning = f"truncated: header says {3 * RATE} frames, file holds {_held(cut)}"
    text = _run([PREDICT, "--checkpoint", ckpt, cut, song])
    assert text.returncode == 0, text.stderr
    lines = text.stdout.splitlines()
    assert lines[0].startswith(f"{cut}: ") and lines[1] == f"  warning: {warning}"
    assert lines[2].startswith(f"{song}: ") and len(lines) == 3  # no warning line for a whole file

    js = _run([PREDICT, "--checkpoint", ckpt, "--json", cut, song])
    assert js.returncode == 0, js.stderr
    r = json.loads(js.stdout)["results"]
    assert [x["warnings"] for x in r] == [[warning], []]
    assert r[0]["seconds"] == round(_held(cut) / RATE, 2)


def test_validate_is_the_one_check(tmp_path):
    """validate() itself: the boundary, the truncation named in the refusal, allow_short's warning."""
    cut = truncate(write(tmp_path / "cut.wav", sine(440, 3, RATE), RATE), 0.2)
    d = decode(cut, RATE)
    assert d.sample_rate == RATE and d.seconds == pytest.approx(_held(cut) / RATE)
    with pytest.raises(AudioError) as e:
        validate(d)
    assert e.value.reason == "too_short"
    assert e.value.message == f"{d.seconds:.2f} s is shorter than --min-seconds 1 ({d.warnings[0]})"
    assert validate(d, allow_short=True) == [d.warnings[0], f"too short: {d.seconds:.2f} s is shorter than --min-seconds 1"]
    assert validate(d, min_seconds=0.5) == d.warnings
    one = decode(write(tmp_path / "one.wav", sine(440, MIN_SECONDS, RATE), RATE), RATE)
    assert validate(one) == [] and validate(one, min_seconds=MIN_SECONDS + 1e-3, allow_short=True) != []


def test_help_documents_the_flags():
    p = _run([PREDICT, "--help"])
    assert p.returncode == 0
    text = " ".join(p.stdout.split())
    assert "--allow-short" in text and f"(default: make_shards' default, {MIN_SECONDS:g};" in text


def test_default_checkpoint_is_the_newest_runs_best_pt(tmp_path, monkeypatch):
    import predict
    monkeypatch.chdir(tmp_path)
    assert predict.default_checkpoint() is None
    for i, run in enumerate(["old", "new", "mid"]):
        os.makedirs(tmp_path / "runs" / run)
        (tmp_path / "runs" / run / "best.pt").write_bytes(b"x")
        os.utime(tmp_path / "runs" / run / "best.pt", (1000 + [0, 2, 1][i],) * 2)
    os.makedirs(tmp_path / "runs" / "newer_but_no_best")
    (tmp_path / "runs" / "newer_but_no_best" / "last.pt").write_bytes(b"x")
    assert predict.default_checkpoint() == os.path.join("runs", "new", "best.pt")


def test_argument_errors_are_one_line_before_anything_loads(tmp_path, capsys):
    """A malformed --manifest-sha256 or a negative --max-seconds is refused by the argument parser
    (as train.py does), not later as "not the pinned manifest"."""
    import predict
    for argv, want in ((["--shards", "s", "--out", "o.jsonl", "--manifest-sha256", "abc"], "64 hex digits"),
                       (["x.wav", "--max-seconds", "-1"], "must not be negative")):
        with pytest.raises(SystemExit) as e:
            predict.parse_args(argv)
        err = capsys.readouterr().err.strip().splitlines()
        assert e.value.code == 2 and want in err[-1], err
