"""Ensembles (inference.ensemble): several checkpoints predicting as one model.

The rule (members' log-probabilities averaged) is checked against its definition, against how a
track is scored (windows' logits averaged), and through predict.py as a user runs it; members that
cannot be combined are refused in one line. The collection mode's ensemble is in test_collection.py.
"""
import json
import math

import pytest
import torch

from audio_files import sine, write
from helpers import run_main
from core import checkpoint
from core.spec import FeatureSpec
from inference.ensemble import Ensemble, combine_probabilities
from model import build_model

SPEC = FeatureSpec(clip_seconds=2.0)
CLASSES = ["a", "b", "c"]


def _ckpt(path, seed: int, model: str = "tiny", classes=CLASSES, spec=SPEC) -> str:
    torch.manual_seed(seed)
    checkpoint.save(str(path), {"model_name": model, "model": build_model(model, len(classes)).state_dict(),
                                "classes": classes, "feature_spec": spec.to_dict()})
    return str(path)


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
