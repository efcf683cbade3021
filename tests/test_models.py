import pytest
import torch

from model import MODELS, build_model, count_parameters
from core.spec import FeatureSpec


@pytest.mark.parametrize("name", sorted(MODELS))
def test_models_take_crops_and_any_window_length(name):
    """Training crops and predict.py's windows differ in length: global pooling must take both."""
    torch.manual_seed(0)
    m = build_model(name, 7).eval()
    low = 1e4 if name == "tiny" else 1e5  # tiny: the baseline's shape at 8-32 channels, for tests
    assert low < count_parameters(m) < 1e7
    for frames in (FeatureSpec().clip_frames, 431, 40):
        with torch.no_grad():
            out = m(torch.randn(3, 1, 128, frames))
        assert out.shape == (3, 7) and torch.isfinite(out).all()
    m.train()
    loss = torch.nn.functional.cross_entropy(m(torch.randn(4, 1, 128, 130)), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in m.parameters())


def test_unknown_model_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown model 'vgg'"):
        build_model("vgg", 10)


def test_bandnorm_is_blind_to_a_fixed_gain_per_band():
    """A recording's fixed equalisation is an offset per mel band in log-mel: baseline-bandnorm's
    output must not move when one is added, the baseline's must."""
    torch.manual_seed(0)
    x = torch.randn(2, 1, 128, 130)
    offset = torch.linspace(-12, 12, 128).view(1, 1, 128, 1) + 3.0  # dB per band, tilted and shifted
    outs = {}
    for name in ("baseline-bandnorm", "baseline"):
        m = build_model(name, 5).eval()
        with torch.no_grad():
            outs[name] = (m(x), m(x + offset))
    a, b = outs["baseline-bandnorm"]
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    a, b = outs["baseline"]
    assert (a - b).abs().max() > 1e-2
