"""training/evaluate.py: per-class precision, recall and F1 from the confusion matrix."""
import numpy as np
import pytest

from training.evaluate import EvalResult


def _result(conf) -> EvalResult:
    conf = np.asarray(conf)
    return EvalResult(loss=0.0, track_acc=float(np.trace(conf)) / conf.sum(), segment_acc=0.0,
                      tracks=int(conf.sum()), confusion=conf)


def test_per_class_scores_from_a_confusion_matrix():
    """Rows are true classes, columns predictions. Unequal row and column sums, so swapping
    precision and recall (or rows and columns) changes every number checked here."""
    conf = [[5, 1, 0, 0],   # a: 6 tracks, 5 right; 2 tracks of b predicted as a
            [2, 3, 1, 0],   # b: 6 tracks, 3 right
            [0, 0, 4, 0],   # c: 4 tracks, all right; 1 track of b predicted as c
            [0, 0, 0, 0]]   # d: no tracks, never predicted
    pc = _result(conf).per_class(["a", "b", "c", "d"])
    want = {"a": (5 / 7, 5 / 6, 10 / 13, 6), "b": (3 / 4, 3 / 6, 6 / 10, 6), "c": (4 / 5, 1.0, 8 / 9, 4),
            "d": (0.0, 0.0, 0.0, 0)}
    for c, (p, r, f1, support) in want.items():
        assert pc[c]["precision"] == pytest.approx(p) and pc[c]["recall"] == pytest.approx(r), c
        assert pc[c]["f1"] == pytest.approx(f1) and pc[c]["support"] == support, c


def test_per_class_scores_of_a_class_predicted_but_absent():
    pc = _result([[2, 1], [0, 0]]).per_class(["x", "y"])
    assert pc["y"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}  # 1 false positive, no tracks
    assert pc["x"]["precision"] == 1.0 and pc["x"]["recall"] == pytest.approx(2 / 3)
