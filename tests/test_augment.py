"""Each augmentation on its own, checked quantitatively; all of them off in evaluation; mixup's
inputs and targets mixed with the same weight; a track judged by the mean of its windows' logits.

The DALI tests read 8 s crops of the 6 s training tracks: a crop then holds the whole track at its
start (floor-padded), so an augmented crop and a plain one with the same seed show the same audio
whatever random numbers the graph draws for crop positions. Both ways the graph cuts crops
("audio": the CPU default, "features": the GPU default) are checked.
"""
import pytest
import torch

from loading.loader import DaliLoader
from core.spec import Augment, FeatureSpec
from features.windows import track_logits
from training.mixup import mixup

SPEC = FeatureSpec(clip_seconds=8.0)  # longer than the 6 s tracks of the train_shards fixture
AUG = Augment(gain_db=6.0, freq_masks=2, time_masks=2)
BATCH = 16


CROP_FROM = ["audio", "features"]  # the graph's two ways of cutting training crops (CPU / GPU default)


def _first_batch(shards, augment=None, train=True, split="train", crop_from=None):
    kw = dict(crop_from=crop_from) if train else {}
    return next(iter(DaliLoader(shards, split, SPEC, BATCH if train else 4, train=train, seed=1, augment=augment,
                                **kw)))


@pytest.fixture(scope="module", params=CROP_FROM)
def plain(train_shards, request):
    b = _first_batch(train_shards[0], crop_from=request.param)
    assert b.x.shape == (BATCH, 1, SPEC.n_mels, SPEC.clip_frames)
    return request.param, b


def _db(x: torch.Tensor) -> torch.Tensor:
    return x * SPEC.norm_std + SPEC.norm_mean


def test_gain_is_one_uniform_db_shift_per_crop_within_the_range(train_shards, plain):
    """--gain-db G alone: every bin above the floor moves by the same dB, a draw in [-G, G]."""
    crop_from, plain = plain
    g = 6.0
    aug = _first_batch(train_shards[0], Augment(gain_db=g), crop_from=crop_from)
    assert aug.uid.tolist() == plain.uid.tolist()
    shifts = []
    for p, a in zip(_db(plain.x[:, 0]), _db(aug.x[:, 0])):
        live = (p > SPEC.db_floor + g + 0.5) & (a > SPEC.db_floor + 0.5)  # clear of the -100 dB floor either way
        assert live.float().mean() > 0.5  # most of the 6 s of audio (the last 2 s are padding)
        d = (a - p)[live]
        assert d.max() - d.min() < 0.01, f"not a uniform shift: {d.min():.3f} .. {d.max():.3f} dB"
        shifts.append(d.mean().item())
    assert all(abs(s) <= g + 0.01 for s in shifts), shifts  # in dB: an amplitude factor 10^(g/20)
    # 16 independent draws of U(-6, 6): both signs, spread over most of the range
    assert min(shifts) < -g / 3 and max(shifts) > g / 3 and max(shifts) - min(shifts) > g, shifts
    assert len({round(s, 3) for s in shifts}) == BATCH  # one draw per crop


def test_eq_is_one_curve_over_mel_bands_per_crop_piecewise_linear_within_the_range(train_shards, plain):
    """--eq-db E alone: every bin above the floor of a mel band moves by the same dB in all frames, and
    the bands' shifts lie on a curve piecewise linear through 4 gains in [-E, E] at evenly spaced
    bands (checked by fitting those hat functions, not the graph's own weights); one draw per crop."""
    import numpy as np
    crop_from, plain = plain
    e, points = 6.0, 4
    aug = _first_batch(train_shards[0], Augment(eq_db=e, eq_points=points), crop_from=crop_from)
    assert aug.uid.tolist() == plain.uid.tolist()
    at = np.linspace(0, SPEC.n_mels - 1, points)
    m = np.arange(SPEC.n_mels)
    hats = np.stack([np.interp(m, at, np.eye(points)[k]) for k in range(points)], 1)  # (mels, points)
    fitted = []
    for p, a in zip(_db(plain.x[:, 0]).double(), _db(aug.x[:, 0]).double()):
        live = (p > SPEC.db_floor + e + 0.5) & (a > SPEC.db_floor + 0.5)
        bands = live.float().mean(1) > 0.5  # bands with most frames clear of the floor either way
        assert bands.sum() > SPEC.n_mels // 2
        shift = np.full(SPEC.n_mels, np.nan)
        for b in bands.nonzero().view(-1).tolist():
            d = (a[b] - p[b])[live[b]]
            assert d.max() - d.min() < 0.01, f"band {b}: not one shift over time: {d.min():.3f} .. {d.max():.3f} dB"
            shift[b] = d.mean().item()
        ok = ~np.isnan(shift)
        gains, *_ = np.linalg.lstsq(hats[ok], shift[ok], rcond=None)
        assert np.abs(hats[ok] @ gains - shift[ok]).max() < 0.01  # on the piecewise-linear curve
        assert np.abs(gains).max() <= e + 0.01
        fitted.append(gains)
    fitted = np.array(fitted)
    assert fitted.min() < -e / 3 and fitted.max() > e / 3  # both signs over the batch
    assert len({tuple(np.round(g, 3)) for g in fitted}) == BATCH  # one draw per crop
    assert (fitted.max(1) - fitted.min(1) > 1.0).mean() > 0.5  # a curve, not a flat gain


def _runs(flags: torch.Tensor) -> list[int]:
    """Widths of the runs of True in a 1-D bool tensor."""
    widths, n = [], 0
    for f in flags.tolist() + [False]:
        if f:
            n += 1
        elif n:
            widths.append(n)
            n = 0
    return widths


@pytest.mark.parametrize("axis", ["freq", "time"])
def test_spec_augment_zeroes_whole_bands_of_the_configured_widths(train_shards, plain, axis):
    """freq: up to 2 bands of at most 16 mel bins, zeroed over all frames; time: up to 2 bands of <= 20
    frames, zeroed over all mel bins. Zero is the normalised mean. Nothing else changes."""
    crop_from, plain = plain
    n, width = 2, (16 if axis == "freq" else 20)
    aug = _first_batch(train_shards[0], Augment(freq_masks=n) if axis == "freq" else Augment(time_masks=n),
                       crop_from=crop_from)
    assert aug.uid.tolist() == plain.uid.tolist()
    across = 1 if axis == "freq" else 0  # (mels, frames): a freq band spans all frames
    all_widths, counts = [], []
    for p, a in zip(plain.x[:, 0], aug.x[:, 0]):
        changed = a != p
        assert (a[changed] == 0).all()  # masked bins hold the fill value 0, all others are untouched
        lines = changed.any(dim=across)
        assert (a[lines] == 0).all() if axis == "freq" else (a[:, lines] == 0).all()  # whole bands
        assert not changed.all(dim=1 - across).any()  # no band along the other axis
        widths = _runs(lines)
        assert len(widths) <= n and sum(widths) <= n * width
        if len(widths) == n:  # two separate bands: each is one mask
            assert max(widths) <= width, widths
        all_widths += widths
        counts.append(len(widths))
    assert n in counts  # the number of masks is honoured...
    assert max(all_widths) >= width // 2 and min(all_widths) < width // 2  # ...and widths spread over 1..width


def test_augmentation_is_off_in_evaluation(train_shards):
    e_plain = _first_batch(train_shards[0], train=False, split="val")
    e_aug = _first_batch(train_shards[0], AUG, train=False, split="val")
    assert torch.equal(e_plain.x, e_aug.x)


@pytest.mark.parametrize("alpha", [0.2, 1.0, 4.0])
def test_mixup_mixes_inputs_and_targets_with_the_same_weight(alpha):
    """x = lam*x_i + (1-lam)*x_j and target = lam*onehot(y_i) + (1-lam)*onehot(y_j), one lam, lam >= 0.5.

    Row 0 of each input holds a marker (1 at column i for sample i), so the mixed input tells
    which partner j it was mixed with and with what weight."""
    b, k = 12, 5
    oh = torch.nn.functional.one_hot
    mixed_pairs = 0
    for seed in range(5):
        torch.manual_seed(seed)
        x = torch.randn(b, 1, 16, 20)
        x[:, 0, 0, :] = 0
        x[torch.arange(b), 0, 0, torch.arange(b)] = 1.0
        y = torch.arange(b) % k
        xm, t = mixup(x, y, k, alpha=alpha)
        assert xm.shape == x.shape and t.shape == (b, k)
        for i in range(b):
            marker = xm[i, 0, 0, :b]
            lam = marker[i].item()
            others = [j for j in range(b) if j != i and marker[j] > 1e-6]
            assert len(others) <= 1
            j = others[0] if others else i
            if others:
                assert lam >= 0.5 and abs(marker[j].item() - (1 - lam)) < 1e-6  # weights sum to 1
            else:  # paired with itself
                assert abs(lam - 1) < 1e-6
            assert torch.allclose(xm[i], lam * x[i] + (1 - lam) * x[j], atol=1e-6)
            expect = lam * oh(y[i], k).float() + (1 - lam) * oh(y[j], k).float()
            assert torch.allclose(t[i], expect, atol=1e-6), (seed, i, j, lam, t[i])
            mixed_pairs += bool(others and y[i] != y[j] and lam < 0.99)
    assert mixed_pairs >= b  # the checks above had real mixing to look at


class _NonLinear(torch.nn.Module):
    """Logits that are not a linear function of the window: the mean of the logits of windows
    differs from the logits of the mean window (a linear model could not tell them apart)."""

    def __init__(self, mels: int, classes: int = 3):
        super().__init__()
        torch.manual_seed(0)
        self.a = torch.nn.Linear(mels, 16)
        self.b = torch.nn.Linear(16, classes)

    def forward(self, x):  # (B, 1, mels, frames)
        h = torch.relu(self.a(x[:, 0].transpose(1, 2)))  # (B, frames, 16)
        return self.b(h.amax(dim=1)) ** 2


def test_track_prediction_is_the_mean_of_window_logits():
    """Evaluation and predict.py judge a track by the mean of its windows' logits."""
    spec = FeatureSpec(clip_seconds=1.0)
    model = _NonLinear(spec.n_mels).eval()
    frames = spec.clip_frames * 3 + 7
    torch.manual_seed(1)
    feats = torch.randn(2, 1, spec.n_mels, frames) * 3
    n = torch.tensor([(frames - 1) * spec.hop_length, (spec.clip_frames - 1) * spec.hop_length])
    with torch.no_grad():
        mean, per_track = track_logits(model, feats, n, spec)
        assert [len(t) for t in per_track] == [4, 1]
        last = frames - spec.clip_frames  # 4 windows spread evenly from frame 0 to the end
        windows = torch.stack([feats[0, :, :, s:s + spec.clip_frames]
                               for s in (0, round(last / 3), round(2 * last / 3), last)])
        expected = model(windows).mean(0)
        assert torch.allclose(mean[0], expected, atol=1e-5)
        assert torch.allclose(per_track[0], model(windows), atol=1e-5)
        # the test can tell: the logits of the mean window are far from the mean of the logits
        assert (model(windows.mean(0, keepdim=True))[0] - expected).abs().max() > 0.5
        assert torch.allclose(mean[1], per_track[1][0])
        assert torch.allclose(mean[1], model(feats[1:, :, :, :spec.clip_frames])[0], atol=1e-5)
