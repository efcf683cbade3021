import torch

from pipeline.dali_graph import Augment
from pipeline.loader import DaliLoader
from pipeline.spec import FeatureSpec
from training.evaluate import track_logits
from training.mixup import mixup

SPEC = FeatureSpec(clip_seconds=2.0)
AUG = Augment(gain_db=6.0, freq_masks=2, time_masks=2)


def test_augmentations_change_training_crops_and_are_off_in_evaluation(train_shards):
    shards = train_shards[0]
    plain = next(iter(DaliLoader(shards, "train", SPEC, 4, train=True, seed=1)))
    aug = next(iter(DaliLoader(shards, "train", SPEC, 4, train=True, seed=1, augment=AUG)))
    assert plain.uid.tolist() == aug.uid.tolist()  # same samples and crops...
    assert not torch.equal(plain.x, aug.x)         # ...augmented
    masked_rows = (aug.x[:, 0] == 0).all(dim=2).sum(dim=1)  # SpecAugment zeroes whole mel bands
    assert (masked_rows > 0).any() and not (plain.x[:, 0] == 0).all(dim=2).any()
    e_plain = next(iter(DaliLoader(shards, "val", SPEC, 4, train=False)))
    e_aug = next(iter(DaliLoader(shards, "val", SPEC, 4, train=False, augment=AUG)))
    assert torch.equal(e_plain.x, e_aug.x)


def test_mixup_targets_are_distributions():
    torch.manual_seed(0)
    x = torch.randn(8, 1, 16, 20)
    y = torch.randint(0, 5, (8,))
    xm, t = mixup(x, y, 5, alpha=0.4)
    assert xm.shape == x.shape and t.shape == (8, 5)
    assert torch.allclose(t.sum(1), torch.ones(8))
    assert (t.argmax(1) == y).all() or (t.max(1).values == 0.5).any()  # own label dominates (lam >= 0.5)
    assert not torch.equal(xm, x)


def test_track_prediction_is_the_mean_of_window_logits():
    """Evaluation and predict.py judge a track by the mean of its windows' logits."""
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.LazyLinear(3))
    spec = FeatureSpec(clip_seconds=1.0)
    frames = spec.clip_frames * 3 + 7
    feats = torch.randn(2, 1, spec.n_mels, frames)
    n = torch.tensor([(frames - 1) * spec.hop_length, (spec.clip_frames - 1) * spec.hop_length])
    model(feats[:1, :, :, : spec.clip_frames])  # materialise the lazy layer
    mean, per_track = track_logits(model, feats, n, spec)
    assert [len(t) for t in per_track] == [4, 1]
    last = frames - spec.clip_frames  # 4 windows spread evenly from frame 0 to the end
    windows = [feats[0, :, :, s:s + spec.clip_frames] for s in (0, round(last / 3), round(2 * last / 3), last)]
    expected = model(torch.stack(windows)).mean(0)
    assert torch.allclose(mean[0], expected, atol=1e-5)
    assert torch.allclose(mean[1], per_track[1][0])
