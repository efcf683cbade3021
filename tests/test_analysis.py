"""analysis/: PCA, the linear baseline and the per-track evaluation log against direct computations,
and the HTML writer's escaping. No DALI here (tests/test_reports.py runs the real pipeline)."""
import numpy as np
import pytest
import torch

from analysis.baseline import C, linear_baseline
from analysis.html import Page, esc, href
from analysis.logmel_stats import TrackStats
from analysis.pca import PCA, Standardiser
from core.spec import FeatureSpec


def _stats(seed=0, n_per=(30, 8, 8), classes=3, mels=6) -> TrackStats:
    """Gaussian classes in 2*mels dimensions, overlapping enough that accuracy is not 1."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 1.0, (classes, 2 * mels))
    rows = []
    for split, n in zip(("train", "val", "test"), n_per):
        for c in range(classes):
            for _ in range(n):
                rows.append((split, c, centres[c] + rng.normal(0, 1.2, 2 * mels) * rng.uniform(0.5, 3, 2 * mels)))
    x = np.stack([r[2] for r in rows]) * 5 - 40  # dB-like scale and offset: standardising matters
    return TrackStats(np.arange(len(rows)), np.array([r[1] for r in rows]), np.array([r[0] for r in rows], dtype=object),
                      x[:, :mels], x[:, mels:])


def test_standardiser_uses_only_the_rows_it_was_fitted_on():
    x = np.array([[1.0, 5.0], [3.0, 5.0], [100.0, -7.0]])
    s = Standardiser.fit(x[:2])
    assert s.mean.tolist() == [2.0, 5.0] and s.std.tolist() == [1.0, 1.0]  # the constant column keeps scale 1
    assert s(x).tolist() == [[-1.0, 0.0], [1.0, 0.0], [98.0, -12.0]]


def test_pca_matches_the_eigendecomposition_of_the_covariance():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(200, 5)) @ rng.normal(size=(5, 5)) + rng.normal(size=5)
    pca = PCA.fit(x, 3)
    evals, evecs = np.linalg.eigh(np.cov(x, rowvar=False, bias=True))
    evals, evecs = evals[::-1], evecs[:, ::-1]
    assert pca.explained_ratio == pytest.approx(evals[:3] / evals.sum(), rel=1e-9)
    for k in range(3):  # the same axes, up to sign
        assert abs(pca.components[k] @ evecs[:, k]) == pytest.approx(1.0, abs=1e-9)
    scores = pca(x)
    assert scores.var(0) == pytest.approx(evals[:3], rel=1e-9)
    assert scores.mean(0) == pytest.approx(np.zeros(3), abs=1e-9)
    # signs are fixed: the largest loading of each component is positive
    assert all(c[np.abs(c).argmax()] > 0 for c in pca.components)


def test_linear_baseline_is_the_regularised_logistic_optimum_and_scores_it():
    """Direct computation: with the train split's standardisation, the baseline's weights make the
    gradient of the L2-regularised multinomial log-loss vanish (the optimum scikit-learn is asked
    for), and its accuracies and recalls are those of argmax(x W^T + b) on each split."""
    stats = _stats()
    classes = ["a", "b", "c"]
    r = linear_baseline(stats, classes)
    train = stats.split == "train"
    feats = stats.features
    x = (feats - feats[train].mean(0)) / feats[train].std(0)
    w, b = r.weights, r.intercept
    logits = x[train] @ w.T + b
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    y = np.eye(3)[stats.label[train]]
    grad_w = C * (p - y).T @ x[train] + w          # d/dW [C * sum log-loss + |W|^2 / 2]
    grad_b = C * (p - y).sum(0)
    assert np.abs(grad_w).max() < 1e-3 * np.abs(w).max() and np.abs(grad_b).max() < 1e-3
    pred = (x @ w.T + b).argmax(1)
    for split in ("train", "val", "test"):
        sel = stats.split == split
        assert r.accuracy[split] == pytest.approx(float((pred[sel] == stats.label[sel]).mean()))
        for i, c in enumerate(classes):
            m = sel & (stats.label == i)
            assert r.recall[split][c] == pytest.approx(float((pred[m] == i).mean()))
        assert sum(map(sum, r.confusion[split])) == sel.sum() == r.tracks[split]
    assert 0.4 < r.accuracy["test"] < 1.0  # a real task: neither chance nor trivial
    assert linear_baseline(stats, classes).to_dict() == r.to_dict()  # deterministic


def test_linear_baseline_maps_classes_missing_from_train():
    """A class with no training track gets no score column of its own: never predicted, recall 0."""
    stats = _stats(classes=3)
    keep = ~((stats.split == "train") & (stats.label == 2))
    r = linear_baseline(stats.take(keep), ["a", "b", "c"])
    assert r.recall["test"]["c"] == 0.0 and r.recall["train"]["c"] is None
    assert not any(row[2] for row in r.confusion["test"])


def test_html_escapes_every_value_and_links_only_beside_the_page():
    """Data that looks like markup stays text: a parser of the page sees only the writer's own tags,
    and the data come back as text, unchanged."""
    from html.parser import HTMLParser

    page = Page("<script>alert(1)</script> $x$")
    page.p("a & b <i>")
    page.table(["<th>", "n"], [["<script>x</script>", 1.5], ["$x$", None], ['"quoted" \'name\'', 3]])
    page.image("odd name <1>.png", 'alt "<b>"')
    page.card("<script>", "e.png", "a b#c?.wav", "$x$")
    html = page.render()

    class Reader(HTMLParser):
        tags, text, attrs = set(), [], []

        def handle_starttag(self, tag, attrs):
            self.tags.add(tag)
            self.attrs += attrs

        def handle_data(self, data):
            self.text.append(data)

    r = Reader()
    r.feed(html)
    assert r.tags == {"html", "head", "meta", "title", "style", "body", "h1", "p", "table", "tr", "th", "td", "img",
                      "div", "b", "audio"}
    text = "".join(r.text)
    for value in ("<script>alert(1)</script> $x$", "a & b <i>", "<th>", "<script>x</script>", "\"quoted\" 'name'"):
        assert value in text
    attrs = dict((k, v) for k, v in r.attrs if k in ("alt",) and v.startswith("alt"))
    assert attrs["alt"] == 'alt "<b>"'
    assert 'src="odd%20name%20%3C1%3E.png"' in html and 'src="a%20b%23c%3F.wav"' in html
    assert esc("caf\udce9") == "caf\\xe9"  # an undecodable file-name byte, shown, never an encoding error
    for bad in ("/etc/passwd", "../x.png"):
        with pytest.raises(ValueError):
            href(bad)


def test_track_log_keeps_logits_embeddings_and_statistics_of_an_evaluation():
    """evaluate()'s per-track log equals a direct computation: the mean of the window logits, the
    mean of the head's inputs (the pooled features) over the windows, the band statistics in dB."""
    from features.windows import track_logits
    from model import build_model
    from training.amp import Amp
    from training.distributed import DistEnv
    from training.evaluate import TrackLog, evaluate

    torch.manual_seed(0)
    spec = FeatureSpec(clip_seconds=1.0)
    model = build_model("tiny", 3).eval()
    x = torch.randn(2, 1, spec.n_mels, 200)
    n = torch.tensor([200 * spec.hop_length, 90 * spec.hop_length])  # the second track: 91 valid frames, 2 windows

    class Batch:
        def __init__(self):
            self.x, self.y, self.uid, self.n_samples = x, torch.tensor([2, 0]), torch.tensor([7, 3]), n
            self.counted = torch.tensor([True, True])

    env = DistEnv(rank=0, world_size=1, local_rank=0, local_world_size=1, device=torch.device("cpu"))
    log = TrackLog()
    evaluate(model, [Batch()], spec, env, Amp.create(torch.device("cpu"), False), 3, tracks=log)
    assert [r["uid"] for r in log.rows] == [3, 7]  # uid order
    with torch.no_grad():
        mean_logits, per_track = track_logits(model, x, n, spec)
        for row, i in zip(log.rows, (1, 0)):
            assert row["logits"] == pytest.approx(mean_logits[i].numpy(), abs=1e-5)
            valid = spec.valid_frames(int(n[i]))
            from features.windows import cut_windows
            w = cut_windows(x[i], min(valid, 200), spec.clip_frames, spec.floor_value)
            h = model.features(w)
            pooled = torch.cat([h.mean(dim=(2, 3)), h.amax(dim=(2, 3))], dim=1)
            assert row["embedding"] == pytest.approx(pooled.mean(0).numpy(), abs=1e-5)
            db = spec.denormalise(x[i, 0, :, :valid].double())
            assert row["mean"] == pytest.approx(db.mean(1).numpy()) and row["std"] == pytest.approx(db.std(1, unbiased=False).numpy())
            assert row["label"] == [2, 0][i]
