"""Ensembles (model/ensemble.py): several checkpoints predicting as one model, or one run training
several members (`train.py --model a+b`).

The rule (members' log-probabilities averaged) is checked against its definition, against how a
track is scored (windows' logits averaged), and through predict.py as a user runs it; members that
cannot be combined are refused in one line. Training: each member's update is the one it would get
alone, and a run's checkpoint predicts as its members joined. The collection mode's ensemble is in
test_collection.py.
"""
import json
import math

import pytest
import torch

from audio_files import sine, write
from helpers import run_main
from core import checkpoint
from core.spec import FeatureSpec
from inference.ensemble import combine_probabilities
from model import Ensemble, build_model

SPEC = FeatureSpec(clip_seconds=2.0)
CLASSES = ["a", "b", "c"]


def _ckpt(path, seed: int, model: str = "tiny", classes=CLASSES, spec=SPEC) -> str:
    torch.manual_seed(seed)
    checkpoint.save(str(path), {"model_name": model, "model": build_model(model, len(classes)).state_dict(),
                                "classes": classes, "feature_spec": spec.to_dict()})
    return str(path)


def test_ensemble_model_names_build_members_and_refuse_unknown_ones():
    m = build_model("tiny+baseline", 3)
    assert isinstance(m, Ensemble) and [type(x).__name__ for x in m.members] == ["TinyCNN", "BaselineCNN"]
    assert not isinstance(build_model("tiny", 3), Ensemble)
    with pytest.raises(ValueError, match=r"^unknown model 'nope' in 'tiny\+nope' \(choose from baseline, .*joined by '\+'\)$"):
        build_model("tiny+nope", 3)
    with pytest.raises(ValueError, match=r"^unknown model '' in 'tiny\+'"):
        build_model("tiny+", 3)


def test_training_mode_gives_each_member_its_own_loss_and_update():
    """One train_step of tiny+baseline moves member 0 exactly as a step of member 0 alone would (SGD;
    the ensemble's loss is the members' mean, so at half the learning rate); the step's logits for
    train accuracy are the ensemble's (its members' mean log-probabilities)."""
    from training.amp import Amp
    from training.step import train_step
    torch.manual_seed(0)
    ens = build_model("tiny+baseline", 3).train()
    solo = build_model("tiny", 3).train()
    solo.load_state_dict(ens.members[0].state_dict())
    x, y, w = torch.randn(4, 1, SPEC.n_mels, 40), torch.tensor([0, 1, 2, 1]), torch.ones(4)
    amp = Amp.create(torch.device("cpu"), False)
    torch.manual_seed(1)  # the same dropout mask for member 0 in both: it runs first
    r = train_step(ens, x, y, w, torch.optim.SGD(ens.parameters(), lr=1.0), amp, n_classes=3, label_smoothing=0.1)
    torch.manual_seed(1)
    r0 = train_step(solo, x, y, w, torch.optim.SGD(solo.parameters(), lr=0.5), amp, n_classes=3, label_smoothing=0.1)
    for (name, a), b in zip(ens.members[0].state_dict().items(), solo.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6), name
    assert r.logits.shape == (4, 3) and bool((r.logits < 0).all())  # the members' mean log-probabilities
    assert float(r.loss.detach()) != pytest.approx(float(r0.loss.detach()), abs=1e-4)  # member 1's loss counts too


def test_one_run_members_follow_their_solo_runs_under_adamw():
    """train.py's optimizer (AdamW, decoupled weight decay, no clipping) is blind to the 1/M scale that
    the members' mean loss puts on each member's gradient: over several steps member 1 of a one-run
    ensemble moves as the same model trained alone at the same learning rate. So a one-run ensemble is
    its members' separate runs on one batch order (up to Adam's eps and the dropout masks' order)."""
    from training.amp import Amp
    from training.step import train_step
    torch.manual_seed(0)
    ens = build_model("tiny+tiny", 3).train()
    solo = build_model("tiny", 3).train()
    solo.load_state_dict(ens.members[1].state_dict())
    before = {k: v.clone() for k, v in solo.state_dict().items()}
    for m in (*ens.modules(), *solo.modules()):
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0  # dropout masks come from one generator in a different order; the rest is compared
    opt_e = torch.optim.AdamW(ens.parameters(), lr=1e-3, weight_decay=1e-2)
    opt_s = torch.optim.AdamW(solo.parameters(), lr=1e-3, weight_decay=1e-2)
    amp = Amp.create(torch.device("cpu"), False)
    g = torch.Generator().manual_seed(2)
    for _ in range(4):
        x, y = torch.randn(4, 1, SPEC.n_mels, 40, generator=g), torch.randint(0, 3, (4,), generator=g)
        train_step(ens, x, y, torch.ones(4), opt_e, amp, n_classes=3, label_smoothing=0.1)
        train_step(solo, x, y, torch.ones(4), opt_s, amp, n_classes=3, label_smoothing=0.1)
    for (name, a), b in zip(ens.members[1].state_dict().items(), solo.state_dict().values()):
        if a.is_floating_point():
            assert torch.allclose(a, b, atol=2e-5), name  # measured <= 4e-6 (eps, float32 sums)
    moved = max(float((solo.state_dict()[k] - v).abs().max()) for k, v in before.items() if v.is_floating_point())
    assert moved > 1e-3  # four steps of lr 1e-3 moved weights by ~4e-3, 200x the tolerance: half the lr would fail


def test_combine_is_the_normalised_geometric_mean():
    p, q = [0.7, 0.2, 0.1], [0.1, 0.6, 0.3]
    g = [math.sqrt(a * b) for a, b in zip(p, q)]
    assert combine_probabilities([p, q]) == pytest.approx([v / sum(g) for v in g], abs=1e-12)
    assert combine_probabilities([p]) == pytest.approx(p, abs=1e-12)
    assert combine_probabilities([[1.0, 0.0], [0.5, 0.5]])[1] < 1e-100  # a member's certainty is a veto


def test_ensemble_scores_a_track_as_its_members_track_probabilities_combined():
    """softmax(mean over windows of Ensemble) == combine(each member's softmax(mean window logits)):
    the single-model track rule applied to the ensemble gives the bench's rule, for any windows."""
    torch.manual_seed(0)
    members = [build_model(name, 3).eval() for name in ("tiny", "tiny", "baseline")]
    ens = Ensemble(members).eval()
    x = torch.randn(5, 1, SPEC.n_mels, SPEC.clip_frames)  # 5 windows of one track
    with torch.no_grad():
        track = torch.softmax(ens(x).double().mean(0), 0).tolist()
        each = [torch.softmax(m(x).double().mean(0), 0).tolist() for m in members]
    assert max(abs(a - b) for a, b in zip(track, combine_probabilities(each))) < 1e-6
    assert max(abs(a - b) for e in each for a, b in zip(track, e)) > 1e-3  # not just one member's answer


def test_predict_with_two_checkpoints_prints_the_ensembles_verdict(tmp_path):
    import predict
    a, b = _ckpt(tmp_path / "a.pt", 0), _ckpt(tmp_path / "b.pt", 1, model="baseline")
    song = write(str(tmp_path / "song.wav"), sine(440, 5, SPEC.sample_rate), SPEC.sample_rate)
    each = [predict.Predictor(c).predict_file(song)["probabilities"] for c in (a, b)]
    want = dict(zip(CLASSES, combine_probabilities([[e[c] for c in CLASSES] for e in each])))
    p = run_main(predict.main, [song, "--checkpoint", a, "--checkpoint", b, "--json"])
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    assert doc["checkpoint"] == [a, b]
    got = doc["results"][0]["probabilities"]
    assert len(got) == 3 and max(abs(got[c] - want[c]) for c in got) <= 1e-4 + 1e-6  # 4 decimals shown
    assert doc["results"][0]["genre"] == max(want, key=want.get)
    p = run_main(predict.main, [song, "--checkpoint", a, "--json"])
    assert json.loads(p.stdout)["checkpoint"] == a  # one checkpoint: the field as before


def test_members_that_cannot_be_combined_are_refused_in_one_line(tmp_path):
    import predict
    a = _ckpt(tmp_path / "a.pt", 0)
    song = write(str(tmp_path / "song.wav"), sine(440, 3, SPEC.sample_rate), SPEC.sample_rate)
    other_classes = _ckpt(tmp_path / "c.pt", 1, classes=["a", "c", "b"])
    other_clip = _ckpt(tmp_path / "d.pt", 1, spec=FeatureSpec(clip_seconds=3.0))
    cases = {other_classes: f"{other_classes}: classes ['a', 'c', 'b'] differ from {a}'s ['a', 'b', 'c']; an "
                            "ensemble's members must be trained on the same classes",
             other_clip: f"{other_clip}: feature parameter clip_seconds is 3.0, {a}'s is 2.0; an ensemble's "
                         "members must share the features"}
    for bad, want in cases.items():
        p = run_main(predict.main, [song, "--checkpoint", a, "--checkpoint", bad])
        assert p.returncode == 2 and p.stderr.strip().splitlines() == [f"predict: error: {want}"], p.stderr
        assert p.stdout == ""


def test_a_member_given_twice_is_refused_in_one_line(tmp_path):
    """The same checkpoint twice (by name or as a copy) would double its vote at twice the cost."""
    import shutil

    import predict
    a = _ckpt(tmp_path / "a.pt", 0)
    copy = str(tmp_path / "copy.pt")
    shutil.copyfile(a, copy)
    song = write(str(tmp_path / "song.wav"), sine(440, 3, SPEC.sample_rate), SPEC.sample_rate)
    for second, why in ((a, "given twice"), (copy, f"the same bytes as {a}")):
        p = run_main(predict.main, [song, "--checkpoint", a, "--checkpoint", second])
        assert p.returncode == 2 and p.stderr.strip().splitlines() == [
            f"predict: error: {second}: {why}; an ensemble's members must be different checkpoints"], p.stderr
        assert p.stdout == ""


def test_a_run_trains_an_ensemble_whose_checkpoint_predicts_as_its_members_joined(train_shards, tmp_path):
    """train.py --model tiny+tiny: one run, one checkpoint; predict.py on it gives what its two members,
    saved as checkpoints of their own and given as two --checkpoint, give."""
    import subprocess
    import sys

    import predict
    from helpers import ROOT
    run = tmp_path / "run"
    p = subprocess.run([sys.executable, "train.py", "--shards", train_shards[0], "--run-dir", str(run), "--epochs", "1",
                        "--batch-size", "4", "--crops-per-track", "1", "--clip-seconds", "2", "--model", "tiny+tiny"],
                       capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "model tiny+tiny:" in p.stdout
    state = torch.load(run / "best.pt", weights_only=True)
    assert state["model_name"] == "tiny+tiny"
    weights = state["ema"]["module"]  # train.py's default keeps an average: what predict.py and the tests use
    members = []
    for i in range(2):
        w = {k.split(".", 2)[2]: v for k, v in weights.items() if k.startswith(f"members.{i}.")}
        members.append(str(tmp_path / f"m{i}.pt"))
        checkpoint.save(members[-1], {"model_name": "tiny", "model": w, "classes": state["classes"],
                                      "feature_spec": state["feature_spec"]})
    assert any(not torch.equal(a, b) for a, b in zip(*(torch.load(m, weights_only=True)["model"].values()
                                                       for m in members)))  # two inits, not one model twice
    song = write(str(tmp_path / "song.wav"), sine(330, 5, SPEC.sample_rate), SPEC.sample_rate)
    one = predict.Predictor(str(run / "best.pt")).predict_file(song)["probabilities"]
    joined = predict.Predictor(members).predict_file(song)["probabilities"]
    assert max(abs(one[c] - joined[c]) for c in one) < 1e-5
    metrics = json.loads((run / "metrics.json").read_text())
    alone = metrics["test_members"]  # each member judged alone in the ensemble's test pass
    assert [m["model"] for m in alone] == ["tiny", "tiny"]
    assert "each member alone: tiny %.3f, tiny %.3f" % (alone[0]["track_acc"], alone[1]["track_acc"]) in p.stdout
    val_alone = metrics["history"][-1]["val_track_acc_members"]
    assert len(val_alone) == 2
    from helpers import read_board
    board = read_board(run)
    assert [board[f"accuracy/val_tracks_member{i}"] for i in (1, 2)] == [[(1, pytest.approx(v, abs=1e-6))] for v in val_alone]
    # ... and as its own checkpoint judges the test split (a separate pass over the same shards)
    from bench.realmusic_recipes import split_predictions
    from storage.folder import read_manifest
    manifest = read_manifest(train_shards[0])
    for m, path in zip(alone, members):
        assert split_predictions(path, train_shards[0], manifest, bf16=False)[1] == pytest.approx(m["track_acc"], abs=1e-9)
