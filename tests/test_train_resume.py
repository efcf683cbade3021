"""train.py's resume, refusals, best checkpoint, seeds and augmentation flags, on real runs.

The tiny model (15 k parameters) keeps each run to seconds and each checkpoint to kilobytes.
"""
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

import train as train_py

from helpers import ROOT, assert_board_matches, built_once, read_board
from preprocess.make_shards import make_shards
from preprocess.synth import generate
from core.faults import fault_env

TRAIN = os.path.join(ROOT, "train.py")
KEYS = ("train_loss", "train_acc", "val_loss", "val_track_acc")


def train(shards: str, run_dir: str, *extra: str, env: dict | None = None, epochs: int = 4) -> subprocess.CompletedProcess:
    cmd = [sys.executable, TRAIN, "--shards", shards, "--run-dir", run_dir, "--epochs", str(epochs), "--batch-size", "4",
           "--crops-per-track", "1", "--clip-seconds", "2", "--ckpt-every", "3", "--seed", "5", "--model", "tiny",
           "--lr", "3e-3", "--ema", "0", *extra]  # plain runs (no average) unless extra names --ema
    return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300, env={**os.environ, **(env or {})})


def history(run_dir) -> list[dict]:
    return json.load(open(os.path.join(run_dir, "metrics.json")))["history"]


def rounded(h: list[dict]) -> list[list[float]]:
    return [[round(e[k], 6) for k in KEYS] for e in h]


@pytest.fixture(scope="module")
def reference(train_shards, tmp_path_factory):
    """An uninterrupted 4-epoch run (built once per session: helpers.built_once)."""
    with built_once(tmp_path_factory, "resume-reference") as (base, done):
        run_dir = str(base / "r")
        if not done:
            p = train(train_shards[0], run_dir)
            assert p.returncode == 0, p.stderr[-2000:]
            (base / "done.json").write_text("{}")
    return run_dir


@pytest.fixture(scope="module")
def killed(train_shards, tmp_path_factory):
    """The same run SIGKILLed after step 5 of epoch 3 (its last checkpoint: step 3)."""
    with built_once(tmp_path_factory, "resume-killed") as (base, done):
        run_dir = str(base / "r")
        if not done:
            p = train(train_shards[0], run_dir, env=fault_env("step", "3.5"))
            assert p.returncode == -9, (p.returncode, p.stderr[-2000:])
            (base / "done.json").write_text("{}")
    st = torch.load(os.path.join(run_dir, "last.pt"), weights_only=True)
    assert (st["epoch"], st["step"]) == (3, 3)
    return run_dir


def test_resume_continues_the_loss_curve_exactly(train_shards, reference, killed, tmp_path):
    """--resume after a kill: weights, optimizer, schedule, data position, RNG and the epoch's running
    sums all come back, so every epoch's figures equal the uninterrupted run's."""
    run_dir = str(tmp_path / "r")
    shutil.copytree(killed, run_dir)
    p = train(train_shards[0], run_dir, "--resume")
    assert p.returncode == 0, p.stderr[-2000:]
    assert f"resumed from {os.path.join(run_dir, 'last.pt')} at epoch 3 step 3" in p.stdout
    a, b = history(reference), history(run_dir)
    assert [e["epoch"] for e in b] == [1, 2, 3, 4]
    assert rounded(a) == rounded(b)
    assert a[0]["train_loss"] != a[3]["train_loss"]  # it did learn: equal curves are not flat ones
    assert read_board(killed)["loss/train"][-1][0] == 2  # the killed attempt logged epochs 1-2
    assert_board_matches(run_dir, b)  # TensorBoard continues the same curves


def test_best_checkpoint_holds_the_best_validation_epoch(reference):
    h = history(reference)
    accs = [e["val_track_acc"] for e in h]
    best_epoch = 1 + accs.index(max(accs))  # the first epoch that reached the best accuracy
    m = json.load(open(os.path.join(reference, "metrics.json")))
    st = torch.load(os.path.join(reference, "best.pt"), weights_only=True)
    assert st["epoch"] == m["best_epoch"] == best_epoch
    assert st["best_metric"] == max(accs)


def test_resume_refuses_other_classes_feature_spec_or_model(train_shards, killed, tmp_path, capsys):
    base = tmp_path / "other"
    generate(str(base / "src"), per_class=3, seconds=2.0, genres=["blues", "jazz"], progress=False)
    make_shards(str(base / "src"), str(base / "shards"), val=0, test=0, workers=1, min_shards=1, progress=False)
    for shards, extra, says in (
            (str(base / "shards"), [], "classes ['classical', 'disco', 'metal', 'reggae'] differ from the shards' "
                                       "['blues', 'jazz']"),
            (train_shards[0], ["--clip-seconds", "3"], "FeatureSpec differs from this run's in clip_seconds"),
            (train_shards[0], ["--model", "resnet"], "holds model 'tiny', this run asks for 'resnet'"),
            (train_shards[0], ["--batch-size", "8"], "was trained with --batch-size 4; resume with the same value"),
            (train_shards[0], ["--ema", "0.999"], "was trained without --ema; resume with --ema 0, or start afresh")):
        # in-process: the refusal comes before any data is read, a subprocess would only add start-up time
        argv = ["--shards", shards, "--run-dir", killed, "--resume", "--batch-size", "4", "--crops-per-track", "1",
                "--clip-seconds", "2", "--model", "tiny", *extra]
        assert train_py.main(argv) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and says in lines[0], (extra, lines)


def test_resume_on_another_world_size_restarts_the_epoch(train_shards, killed, tmp_path):
    """A mid-epoch checkpoint of 1 rank resumed on 2: the data positions do not carry over, so the
    epoch restarts from its first step, with a warning, and the run finishes."""
    run_dir = str(tmp_path / "r")
    shutil.copytree(killed, run_dir)
    p = train(train_shards[0], run_dir, "--resume", "--nproc", "2", "--cpu")
    assert p.returncode == 0, p.stderr[-2000:]
    assert "was written by 1 ranks, this run has 2: epoch 3 restarts from its first step" in p.stdout + p.stderr
    assert "at epoch 3 step 0" in p.stdout
    assert [e["epoch"] for e in history(run_dir)] == [1, 2, 3, 4]


def test_damaged_last_checkpoint_falls_back_to_previous(reference, train_shards, tmp_path):
    """last.pt cut short: --resume names it, skips it and continues from prev.pt (the step-9 checkpoint
    of epoch 4: --ckpt-every 3, 10 steps an epoch), finishing epoch 4 and a fifth."""
    run_dir = str(tmp_path / "r")
    shutil.copytree(reference, run_dir)
    last = os.path.join(run_dir, "last.pt")
    with open(last, "r+b") as f:
        f.truncate(1000)
    p = train(train_shards[0], run_dir, "--resume", epochs=5)
    assert p.returncode == 0, p.stderr[-2000:]
    assert f"warning: skipping {last}: unreadable or truncated checkpoint" in p.stderr
    assert f"resumed from {os.path.join(run_dir, 'prev.pt')} at epoch 4 step 9" in p.stdout
    assert [h["epoch"] for h in history(run_dir)] == [1, 2, 3, 4, 5]
    # epoch 4, logged by the first run, is logged again: TensorBoard keeps the second one only
    assert read_board(reference)["loss/train"][-1][0] == 4
    assert_board_matches(run_dir, history(run_dir))


def test_seed_decides_the_run(train_shards, reference, tmp_path):
    """Another --seed gives other figures from epoch 1 on (so --seed is used; epoch 1 is warm-up, whose
    schedule does not depend on --epochs). The same seed giving the same figures is shown by every
    resume test here and in test_remote_training.py (2 ranks, one node and two)."""
    p = train(train_shards[0], str(tmp_path / "c"), "--seed", "8", epochs=1)
    assert p.returncode == 0, p.stderr[-2000:]
    assert rounded(history(tmp_path / "c")) != rounded(history(reference)[:1])


def test_augmentation_flags_train_through_train_py(train_shards, reference, tmp_path):
    """--gain-db, --specaugment, --speed, --eq-db and --mixup (the soft-target loss) run end to end together, are recorded
    and change the training figures of epoch 1 (whose warm-up schedule equals the reference's), with
    finite metrics. What each does to the features or the loss: test_augment.py."""
    run_dir = str(tmp_path / "aug")
    p = train(train_shards[0], run_dir, "--gain-db", "6", "--specaugment", "--speed", "0.1", "--eq-db", "6", "--mixup", "0.4",
              epochs=1)
    assert p.returncode == 0, p.stderr[-2000:]
    m = json.load(open(os.path.join(run_dir, "metrics.json")))
    assert (m["args"]["gain_db"], m["args"]["specaugment"], m["args"]["speed"], m["args"]["eq_db"], m["args"]["mixup"]) == \
        (6.0, True, 0.1, 6.0, 0.4)
    h, ref = m["history"][0], history(reference)[0]
    assert all(torch.isfinite(torch.tensor([h[k] for k in KEYS])))
    assert abs(h["train_loss"] - ref["train_loss"]) > 1e-5, (h["train_loss"], ref["train_loss"])


def test_val_every_validates_every_nth_and_the_last_epoch(train_shards, reference, tmp_path):
    """--val-every 3 over the reference's 4 epochs: epochs 3 and 4 validated (both weights with
    --compare-raw), epochs 1-2 logged as not validated and without val figures; training is untouched
    (the raw weights' train figures and validation equal the reference run's, which validated every
    epoch); best.pt and best-raw.pt chosen among validated epochs; report, curves and summary made."""
    run_dir = str(tmp_path / "sparse")
    p = train(train_shards[0], run_dir, "--val-every", "3", "--ema", "0.9", "--compare-raw")
    assert p.returncode == 0, p.stderr[-2000:]
    m = json.load(open(os.path.join(run_dir, "metrics.json")))
    h, ref = m["history"], history(reference)
    assert [e["epoch"] for e in h] == [1, 2, 3, 4]
    val_keys = {"val_loss", "val_track_acc", "val_segment_acc", "val_loss_raw", "val_track_acc_raw", "val_segment_acc_raw"}
    assert not val_keys & (set(h[0]) | set(h[1])) and all(val_keys <= set(e) for e in h[2:])
    assert [[round(e[k], 6) for k in ("train_loss", "train_acc")] for e in h] == \
        [[round(e[k], 6) for k in ("train_loss", "train_acc")] for e in ref]
    assert [round(e["val_track_acc_raw"], 6) for e in h[2:]] == [round(e["val_track_acc"], 6) for e in ref[2:]]
    assert m["best_epoch"] in (3, 4) and m["best_epoch_raw"] in (3, 4)
    assert max(e["val_track_acc"] for e in h[2:]) == h[m["best_epoch"] - 1]["val_track_acc"]
    log = p.stdout + p.stderr
    assert "not validated" in log.split("epoch   1 | ")[1].splitlines()[0]
    assert "best val acc nan" not in log and "test acc" in log
    assert os.path.getsize(os.path.join(run_dir, "curves.png")) > 0 and "–" in open(os.path.join(run_dir, "report.html")).read()


def test_crops_must_divide_the_batch(capsys):
    p = subprocess.run([sys.executable, TRAIN, "--batch-size", "8", "--crops-per-track", "3"], capture_output=True,
                       text=True, cwd=ROOT, timeout=120)
    assert p.returncode == 2 and "must be >= 1 and divide --batch-size 8" in p.stderr
    p = subprocess.run([sys.executable, TRAIN, "--speed", "0.7"], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert p.returncode == 2 and p.stderr.strip().splitlines()[-1].endswith("--speed 0.7: give a value in [0, 0.5)")
    p = subprocess.run([sys.executable, TRAIN, "--eq-db", "-3"], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert p.returncode == 2 and p.stderr.strip().splitlines()[-1].endswith("--eq-db -3.0: give a value in [0, 40] dB")
    p = subprocess.run([sys.executable, TRAIN, "--val-every", "0"], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert p.returncode == 2 and p.stderr.strip().splitlines()[-1].endswith("--val-every 0: give a number of epochs >= 1")
    with pytest.raises(SystemExit) as e:  # in-process: argument checks only
        train_py.parse_args(["--ema", "1"])
    assert e.value.code == 2 and capsys.readouterr().err.strip().splitlines()[-1].endswith(
        "--ema 1.0: give a decay in [0, 1) (0: no average)")


def test_ema_runs_resume_exactly_and_predict_with_the_average(train_shards, reference, tmp_path):
    """--ema: a run killed mid-epoch and resumed ends with the uninterrupted run's averaged weights;
    best.pt's averaged weights are what predict.py's classifier loads; resuming without --ema is one line.
    --compare-raw: the raw weights' validation and best-raw.pt's test are exactly those of the same
    run without --ema (the reference), so one run measures what the average bought."""
    from core import checkpoint
    from inference.classifier import load_classifier
    straight, broken = str(tmp_path / "straight"), str(tmp_path / "broken")
    p = train(train_shards[0], straight, "--ema", "0.9", "--compare-raw")
    assert p.returncode == 0, p.stderr[-2000:]
    p = train(train_shards[0], broken, "--ema", "0.9", "--compare-raw", env=fault_env("step", "2.5"))
    assert p.returncode == -9, p.stderr[-2000:]
    p = train(train_shards[0], broken, "--ema", "0.9", "--compare-raw", "--resume")
    assert p.returncode == 0 and "resumed from" in p.stdout, p.stderr[-2000:]
    a, b = (checkpoint.load(os.path.join(d, "last.pt")) for d in (straight, broken))
    assert a["ema"]["updates"] == b["ema"]["updates"] > 0
    for k, v in a["ema"]["module"].items():
        torch.testing.assert_close(b["ema"]["module"][k], v, rtol=0, atol=1e-6)
    assert rounded(history(straight)) == rounded(history(broken))
    best = checkpoint.load(os.path.join(straight, "best.pt"))
    model, _, _ = load_classifier(os.path.join(straight, "best.pt"))
    for k, v in model.state_dict().items():
        assert torch.equal(v, best["ema"]["module"][k])
    assert any(not torch.equal(best["model"][k], best["ema"]["module"][k]) for k in best["model"])

    plain = json.load(open(os.path.join(reference, "metrics.json")))
    for d in (straight, broken):
        m = json.load(open(os.path.join(d, "metrics.json")))
        raw = [[round(e[k + "_raw"], 6) for k in ("val_loss", "val_track_acc", "val_segment_acc")] for e in m["history"]]
        assert raw == [[round(e[k], 6) for k in ("val_loss", "val_track_acc", "val_segment_acc")] for e in plain["history"]]
        assert m["best_epoch_raw"] == plain["best_epoch"]
        assert m["test_raw"]["track_acc"] == pytest.approx(plain["test"]["track_acc"], abs=1e-9)
        assert m["test_raw"]["loss"] == pytest.approx(plain["test"]["loss"], abs=1e-5)
        assert [round(e["val_loss"], 6) for e in m["history"]] != [r[0] for r in raw]  # the average is evaluated too
    raw_best = checkpoint.load(os.path.join(straight, "best-raw.pt"))
    assert raw_best["epoch"] == plain["best_epoch"] and "ema" not in raw_best  # predict.py uses its raw weights
    plain_best = checkpoint.load(os.path.join(reference, "best.pt"))
    for k, v in plain_best["model"].items():
        torch.testing.assert_close(raw_best["model"][k], v, rtol=0, atol=1e-6)
    assert f"raw weights (no EMA): best val acc" in p.stdout
    assert_board_matches(straight, history(straight))  # raw validation and both test figures in TensorBoard
    assert "accuracy/test_tracks_raw" in read_board(straight)
    assert "val_track_acc_raw" not in plain["history"][0]

    for other in ("0", "0.999"):  # without the average, or with another decay (train.py's default)
        p = train(train_shards[0], straight, "--resume", "--ema", other, epochs=5)
        assert p.returncode == 2 and p.stderr.strip().splitlines()[-1].endswith(
            "was trained with --ema 0.9; resume with it"), p.stderr[-2000:]
    p = train(train_shards[0], straight, "--compare-raw", epochs=5)
    assert p.returncode == 2 and "--compare-raw compares the raw weights with --ema's average" in p.stderr
